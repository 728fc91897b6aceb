"""Sliced Wasserstein distance between multi-scale patch statistics (Karras et al. 2018, Sec. 5).

Per level of a Laplacian pyramid (full resolution down to `min_resolution`, halving), `sliced_wasserstein_distance`
samples `nhoods_per_image` 7×7 neighbourhoods per image, normalises each channel by its mean and standard deviation
over the set, projects the descriptors on `dir_repeats × dirs_per_repeat` random unit directions, sorts each
projection and averages the absolute differences between the two sorted lists (the 1-D Wasserstein-1 distance,
averaged over directions).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._inputs import _check_pair


@dataclass
class SlicedWassersteinOutput:
    r"""
    Output of [`sliced_wasserstein_distance`].

    Args:
        per_level (`dict[int, float]`): SWD of each Laplacian-pyramid level, keyed by that level's resolution (the
            smaller side in pixels), finest first. Karras et al. report these ×10³.
        mean (`float`): Average over the levels.
    """

    per_level: dict[int, float]
    mean: float


# Adapted from tkarras/progressive_growing_of_gans metrics/sliced_wasserstein.py (Karras et al. 2018, Sec. 5).
# torchmetrics has no SWD, so it is written here, in torch, vectorised over images and patches.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16  # the 5-tap filter of cv2.pyrDown / pyrUp


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    """cv2.pyrDown: binomial blur with mirrored borders, keeping every other pixel (stride 2: only those computed)."""
    kernel = torch.outer(_BINOMIAL, _BINOMIAL).to(x).expand(x.shape[1], 1, 5, 5)  # (C, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, stride=2, groups=x.shape[1])


def _pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """cv2.pyrUp cropped to `size`: zero-insertion then a 4× binomial blur with mirrored borders, computed per phase.

    Upsampled pixel 2i is (c[i-1] + 6c[i] + c[i+1]) / 8 along each axis and pixel 2i+1 is (4c[i] + 4c[i+1]) / 8, so
    the four output phases are 3×3 filters of the coarse image interleaved by `pixel_shuffle`, which skips the
    multiplications by inserted zeros. Mirroring the zero-inserted image is mirroring the coarse one on the leading
    border (c[-1] = c[1]) and repeating it on the trailing one (c[n] = c[n-1]).
    """
    even, odd = torch.tensor([1.0, 6.0, 1.0]) / 8, torch.tensor([0.0, 4.0, 4.0]) / 8
    phases = torch.stack([torch.outer(a, b) for a in (even, odd) for b in (even, odd)])  # (4, 3, 3): (y, x) parity
    channels = x.shape[1]
    kernel = phases.to(x).repeat(channels, 1, 1)[:, None]  # (4C, 1, 3, 3)
    padded = F.pad(F.pad(x, (1, 0, 1, 0), mode="reflect"), (0, 1, 0, 1), mode="replicate")
    upsampled = F.pixel_shuffle(F.conv2d(padded, kernel, groups=channels), 2)  # (B, C, 2h, 2w)
    return upsampled[:, :, : size[0], : size[1]]


def laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """cv2's Laplacian pyramid of `images` (B, C, H, W): `num_levels - 1` band-pass levels, finest first (each the
    image minus its blurred and re-up-sampled half-size copy), then the low-pass residual. Differentiable: the
    distillation's band-weighted loss (`diffusers_dito.losses.laplacian_l2_loss`) uses it as well as the SWD."""
    gaussians = [images]
    for _ in range(num_levels - 1):
        gaussians.append(_pyr_down(gaussians[-1]))
    levels = [fine - _pyr_up(coarse, fine.shape[-2:]) for fine, coarse in zip(gaussians[:-1], gaussians[1:])]
    return levels + [gaussians[-1]]


def _patch_index(
    shape: torch.Size, nhood_size: int, nhoods_per_image: int, generator: torch.Generator
) -> torch.Tensor:
    """Flat indices of `nhoods_per_image` random neighbourhoods per image, fully inside it: (P, C, 7, 7)."""
    num_images, channels, height, width = shape
    half, count = nhood_size // 2, num_images * nhoods_per_image
    y = torch.randint(half, height - half, (count, 1, 1, 1), generator=generator)  # (P, 1, 1, 1): centres
    x = torch.randint(half, width - half, (count, 1, 1, 1), generator=generator)  # (P, 1, 1, 1)
    offsets = torch.arange(-half, half + 1)  # (7,)
    image = torch.arange(num_images).repeat_interleave(nhoods_per_image)[:, None, None, None]  # (P, 1, 1, 1)
    channel = torch.arange(channels)[None, :, None, None]  # (1, C, 1, 1)
    return ((image * channels + channel) * height + y + offsets[:, None]) * width + x + offsets  # (P, C, 7, 7)


def _descriptors(level: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The neighbourhoods at `index`, each channel normalised over the whole set, flattened: (P, C·7·7)."""
    patches = level.reshape(-1)[index.to(level.device)]  # (P, C, 7, 7)
    mean = patches.mean(dim=(0, 2, 3), keepdim=True)
    # clamp: a constant level (e.g. a collapsed decoder's output) would otherwise divide by zero
    std = patches.std(dim=(0, 2, 3), keepdim=True, correction=0).clamp_min(1e-8)
    return ((patches - mean) / std).flatten(1)


def random_unit_directions(
    dim: int, count: int, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """`count` random unit vectors of `dim` components, drawn on the CPU (the same numbers on every device), as the
    columns of a (dim, count) matrix of `like`'s dtype and device: the slicing directions of the SWD and its loss."""
    directions = torch.randn(dim, count, generator=generator)  # (D, K)
    return (directions / directions.norm(dim=0, keepdim=True)).to(like)


def _sort_columns(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":  # numpy's vectorised sort is ~4x faster than torch.sort on CPU, and sorting dominates
        return torch.from_numpy(np.sort(x.numpy(), axis=0))
    return x.sort(dim=0).values


def _level_sides(side: int, min_resolution: int) -> list[int]:
    """The smaller side of each pyramid level: `side`, halved while it stays at least `min_resolution`."""
    sides = []
    while side >= min_resolution:
        sides.append(side)
        side //= 2
    return sides


def _sliced_distance(
    desc: torch.Tensor, reference_desc: torch.Tensor, dir_repeats: int, dirs_per_repeat: int, generator
) -> float:
    """The SWD of one level: the mean 1-D Wasserstein-1 distance of the descriptors' random projections."""
    distances = []
    for _ in range(dir_repeats):
        directions = random_unit_directions(desc.shape[1], dirs_per_repeat, generator, desc)  # (D, K)
        projected = _sort_columns(desc @ directions)  # (P, K)
        reference_projected = _sort_columns(reference_desc @ directions)  # (P, K)
        distances.append((projected - reference_projected).abs().mean())
    return float(torch.stack(distances).mean())


def _check_sampling(
    nhood_size: int, nhoods_per_image: int, dir_repeats: int, dirs_per_repeat: int, min_resolution: int
) -> None:
    if nhood_size < 1 or nhood_size % 2 == 0:
        raise ValueError(f"`nhood_size` must be a positive odd number, got {nhood_size}.")
    if min(nhoods_per_image, dir_repeats, dirs_per_repeat) < 1:
        raise ValueError("`nhoods_per_image`, `dir_repeats` and `dirs_per_repeat` must be >= 1.")
    if min_resolution < nhood_size:
        raise ValueError(f"`min_resolution` ({min_resolution}) must be at least `nhood_size` ({nhood_size}).")


@torch.no_grad()
def sliced_wasserstein_distance(
    images: torch.Tensor,
    reference_images: torch.Tensor,
    nhood_size: int = 7,
    nhoods_per_image: int = 128,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
    min_resolution: int = 16,
    seed: int = 0,
) -> SlicedWassersteinOutput:
    r"""
    Sliced Wasserstein distance between the local patch statistics of two image sets, at every scale of a Laplacian
    pyramid (Karras et al. 2018, "Progressive Growing of GANs", Sec. 5; the module's docstring gives the steps). Low
    is better; Karras et al. report the values ×10³.

    Deterministic for a given `seed`. Both sets are sampled at the same patch positions and projected on the same
    directions, so `sliced_wasserstein_distance(x, x)` is exactly 0 and paired comparisons (reconstructions against
    their originals) carry less sampling noise.

    Args:
        images (`torch.Tensor` of shape `(N, C, H, W)`): Images in [-1, 1].
        reference_images (`torch.Tensor` of the same shape): Images in [-1, 1]; the sets must be the same size, as in
            the reference implementation (the sorted projections are compared element by element).
        nhood_size (`int`, *optional*, defaults to 7): Side of the square neighbourhoods; odd.
        nhoods_per_image (`int`, *optional*, defaults to 128): Neighbourhoods sampled per image and level.
        dir_repeats (`int`, *optional*, defaults to 4): Batches of random directions (bounds memory).
        dirs_per_repeat (`int`, *optional*, defaults to 128): Random directions per batch.
        min_resolution (`int`, *optional*, defaults to 16): Coarsest level kept; needs `H, W >= min_resolution`.
        seed (`int`, *optional*, defaults to 0): Seed of the patch positions and projection directions.

    Returns:
        [`SlicedWassersteinOutput`]: SWD per level (keyed by resolution) and their mean.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import sliced_wasserstein_distance

        >>> x = torch.rand(4, 3, 32, 32) * 2 - 1
        >>> out = sliced_wasserstein_distance(x, x, nhoods_per_image=16, dirs_per_repeat=16)
        >>> sorted(out.per_level), out.mean
        ([16, 32], 0.0)

        ```
    """
    _check_sampling(nhood_size, nhoods_per_image, dir_repeats, dirs_per_repeat, min_resolution)
    images, reference_images = _check_pair(
        "images", images, "reference_images", reference_images, min_size=min_resolution
    )
    resolutions = _level_sides(min(images.shape[-2:]), min_resolution)
    generator = torch.Generator().manual_seed(seed)  # CPU draws: the same numbers on every device
    pyramids = laplacian_pyramid(images, len(resolutions)), laplacian_pyramid(reference_images, len(resolutions))
    per_level = {}
    for resolution, level, reference_level in zip(resolutions, *pyramids):
        index = _patch_index(level.shape, nhood_size, nhoods_per_image, generator)  # shared by both sets
        descriptors = _descriptors(level, index), _descriptors(reference_level, index)  # 2 × (P, D)
        per_level[resolution] = _sliced_distance(*descriptors, dir_repeats, dirs_per_repeat, generator)
    return SlicedWassersteinOutput(per_level=per_level, mean=sum(per_level.values()) / len(per_level))
