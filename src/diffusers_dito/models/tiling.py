"""Overlapping-tile evaluation with smooth blending, for bounded-memory encoding and decoding of large images.

Adapted in spirit from MultiDiffusion (Bar-Tal et al., 2023): a function is applied to overlapping tiles and the
tile outputs are averaged where they overlap. We weight each tile with a raised-cosine ramp across its overlaps
(weights sum to 1 across two neighbours), so that no tile border leaves a step in the output.
"""

import math
from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length`, neighbours overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool, like: torch.Tensor) -> torch.Tensor:
    weight = torch.ones(length, device=like.device, dtype=torch.float32)
    overlap = min(overlap, length)
    if overlap > 0:
        # Raised cosine in (0, 1): r(i) + r(overlap - 1 - i) = 1, so two neighbours' weights sum to one.
        rise = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap, device=like.device) + 0.5) / overlap)
        if ramp_start:
            weight[:overlap] = rise
        if ramp_end:
            weight[-overlap:] = torch.minimum(weight[-overlap:], rise.flip(0))
    return weight


def tiled_map(
    fn: Callable[..., torch.Tensor],
    inputs: list[torch.Tensor],
    tile: int,
    overlap: int,
    out_channels: int,
    downscale: int = 1,
) -> torch.Tensor:
    r"""
    Apply `fn` to overlapping tiles of `inputs` and blend the results.

    Args:
        fn: maps tiles `(B, C_i, th, tw)` of the inputs to `(B, out_channels, th / downscale, tw / downscale)`.
        inputs: tensors with the same spatial size `(H, W)`, multiples of `downscale`.
        tile, overlap: tile side and minimum overlap in input pixels, multiples of `downscale`.
        out_channels: channels of `fn`'s output.
        downscale: spatial factor between input and output (the encoder's f; 1 for the decoder).

    Returns:
        `(B, out_channels, H / downscale, W / downscale)`, in float32 accumulation cast back to `fn`'s dtype.
    """
    batch, _, height, width = inputs[0].shape
    s = downscale
    out = None
    weight_sum = torch.zeros(1, 1, height // s, width // s, device=inputs[0].device)
    for y in tile_starts(height, tile, overlap):
        for x in tile_starts(width, tile, overlap):
            th, tw = min(tile, height), min(tile, width)
            result = fn(*[t[..., y : y + th, x : x + tw] for t in inputs])  # (B, out_channels, th/s, tw/s)
            if out is None:
                out = torch.zeros(batch, out_channels, height // s, width // s, device=result.device)
                out_dtype = result.dtype
            wy = _ramp(th // s, overlap // s, y > 0, y + th < height, result)
            wx = _ramp(tw // s, overlap // s, x > 0, x + tw < width, result)
            w = wy[:, None] * wx[None, :]  # (th/s, tw/s)
            out[..., y // s : (y + th) // s, x // s : (x + tw) // s] += result.float() * w
            weight_sum[..., y // s : (y + th) // s, x // s : (x + tw) // s] += w
    return (out / weight_sum).to(out_dtype)
