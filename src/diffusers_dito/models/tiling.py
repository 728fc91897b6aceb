"""Overlapping-tile evaluation with smooth blending, for bounded-memory encoding and decoding of large images.

Adapted in spirit from MultiDiffusion (Bar-Tal et al., 2023): a function is applied to overlapping tiles and the
tile outputs are averaged where they overlap. We weight each tile with a raised-cosine ramp across its overlaps, so
that no tile border leaves a step in the output. diffusers' `AutoencoderKL` blends only its decoder's output once;
DiTo's decoder is applied at every ODE step, so the blend is written here once for the encoder and every step.

Memory: the weights are separable (`w = w_y ⊗ w_x` on a product grid of tiles), so they are normalised with two
1-D sums instead of a full-resolution weight map, and each input is sliced at its own resolution (the decoder passes
the latent, not its up-sampled copy), so the only full-size buffers are the inputs and one output accumulator.
"""

import math
from collections.abc import Callable, Iterator

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size `tile` covering `length`, neighbours overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool, device: torch.device) -> torch.Tensor:
    weight = torch.ones(length, device=device, dtype=torch.float32)
    overlap = min(overlap, length)
    if overlap > 0:
        # Raised cosine in (0, 1): r(i) + r(overlap - 1 - i) = 1, so two neighbours' weights sum to one.
        rise = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap, device=device) + 0.5) / overlap)
        if ramp_start:
            weight[:overlap] = rise
        if ramp_end:
            weight[-overlap:] = torch.minimum(weight[-overlap:], rise.flip(0))
    return weight


def tile_weights(
    length: int, tile: int, overlap: int, downscale: int = 1, device: torch.device | str = "cpu"
) -> list[tuple[int, torch.Tensor]]:
    r"""
    The tiles along one axis: `(start, weight)` pairs, with weights at `1 / downscale` resolution that sum to one
    at every position (a partition of unity, so blending a tile-wise constant gives it back).

    Examples:
        ```py
        >>> [(start, len(w)) for start, w in tile_weights(96, 32, 16)]
        [(0, 32), (16, 32), (32, 32), (48, 32), (64, 32)]
        >>> total = torch.zeros(96)
        >>> for start, w in tile_weights(96, 32, 16):
        ...     total[start : start + len(w)] += w
        >>> bool(torch.allclose(total, torch.ones(96)))
        True

        ```
    """
    s = downscale
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length) // s
    ramps = [_ramp(size, overlap // s, y > 0, y + tile < length, device) for y in starts]
    total = torch.zeros(length // s, device=device)
    for y, w in zip(starts, ramps):
        total[y // s : y // s + size] += w
    return [(y, w / total[y // s : y // s + size]) for y, w in zip(starts, ramps)]


def iter_tiles(
    inputs: list[torch.Tensor], tile: int, overlap: int, downscale: int = 1
) -> Iterator[tuple[int, int, torch.Tensor, list[torch.Tensor]]]:
    r"""
    The overlapping tiles of `inputs`, each cut at its own resolution (see `tiled_map`).

    Yields:
        `(y, x, weight, tiles)`: the tile's top-left corner in pixels of `inputs[0]`, its blend weights of shape
        `(th / downscale, tw / downscale)` (they sum to one over the tiles at every position), and the input tiles.
    """
    height, width = inputs[0].shape[-2:]
    factors = [height // t.shape[-2] for t in inputs]  # each input's resolution relative to the first
    device = inputs[0].device
    columns = tile_weights(width, tile, overlap, downscale, device)
    for y, wy in tile_weights(height, tile, overlap, downscale, device):
        for x, wx in columns:
            th, tw = len(wy) * downscale, len(wx) * downscale
            tiles = [t[..., y // k : (y + th) // k, x // k : (x + tw) // k] for t, k in zip(inputs, factors)]
            yield y, x, wy[:, None] * wx[None, :], tiles


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
        fn: maps tiles of the inputs to `(B, out_channels, th / downscale, tw / downscale)`, where `(th, tw)` is the
            tile of `inputs[0]`.
        inputs: tensors whose spatial sizes are `(H, W)` for the first and `(H / k, W / k)` for an integer k for the
            others (the decoder's latent at k = f); each is cut at its own resolution.
        tile, overlap: tile side and minimum overlap in pixels of `inputs[0]`, multiples of `downscale` and of
            every input's k.
        out_channels: channels of `fn`'s output.
        downscale: spatial factor between `inputs[0]` and the output (the encoder's f; 1 for the decoder).

    Returns:
        `(B, out_channels, H / downscale, W / downscale)`, accumulated in float32 and cast back to `fn`'s dtype.
    """
    batch, _, height, width = inputs[0].shape
    s = downscale
    out = None
    for y, x, weight, tiles in iter_tiles(inputs, tile, overlap, s):
        result = fn(*tiles)  # (B, out_channels, th/s, tw/s)
        if out is None:
            out = torch.zeros(batch, out_channels, height // s, width // s, device=result.device)
            out_dtype = result.dtype
        region = out[..., y // s : y // s + weight.shape[0], x // s : x // s + weight.shape[1]]
        region.addcmul_(result.float(), weight)  # in place: no full-size temporary
    return out if out.dtype == out_dtype else out.to(out_dtype)


def tile_border_gradient_ratio(images: torch.Tensor, tile: int, overlap: int) -> float:
    r"""
    Seam detector: the mean absolute difference between neighbouring pixels across the tile borders of a
    `tile`/`overlap` grid, divided by that across all other pixel lines. About 1 when tiling leaves no seams; a
    visible seam (a step at the borders) makes it larger. DiTo's tile borders lie on the latent grid, where any
    decode changes a little faster, so compare with an untiled decode's ratio (as `tests/models/test_tiling.py` does).

    Args:
        images (`torch.Tensor` of shape `(B, C, H, W)`): Decoded images.
        tile, overlap: The grid the images were decoded with (`enable_tiling(tile, overlap)`).

    Examples:
        ```py
        >>> flat = torch.zeros(1, 3, 64, 64)
        >>> flat[..., 32:] = 1.0  # a step at the border x = 32 of 32-px tiles with overlap 16
        >>> tile_border_gradient_ratio(flat + 0.01 * torch.randn(1, 3, 64, 64), 32, 16) > 10
        True

        ```
    """

    def lines(length: int) -> tuple[list[int], list[int]]:
        starts = tile_starts(length, tile, overlap)
        borders = {s for s in starts if s > 0} | {s + tile for s in starts if s + tile < length}
        # Index i of a difference crosses the line between pixels i and i + 1, so line p is index p - 1.
        return [p - 1 for p in sorted(borders)], [p - 1 for p in range(1, length) if p not in borders]

    dy = (images[..., 1:, :] - images[..., :-1, :]).abs()  # (B, C, H - 1, W)
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs()  # (B, C, H, W - 1)
    rows_border, rows_other = lines(images.shape[-2])
    cols_border, cols_other = lines(images.shape[-1])
    border = torch.cat([dy[..., rows_border, :].flatten(), dx[..., cols_border].flatten()])
    other = torch.cat([dy[..., rows_other, :].flatten(), dx[..., cols_other].flatten()])
    return (border.mean() / other.mean()).item()
