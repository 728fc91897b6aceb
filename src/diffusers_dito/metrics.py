"""Reconstruction and generation metrics for DiTo, offline.

Every image argument is a float tensor of shape `(B, C, H, W)` in **[-1, 1]**: the range `AutoencoderDiTo.encode`
takes and `decode` returns, so decoder outputs go in as they are. Values up to 0.5 outside the range (a decoder's
overshoot) are clamped to [-1, 1], as saving to PNG would; anything further out raises `ValueError`, because it
is almost surely an image in [0, 255]. Images in [0, 1] cannot be told apart from [-1, 1] ones: convert them with
`x * 2 - 1`.

Metrics that need no pretrained network: `psnr`, `ssim`, `sliced_wasserstein_distance`,
`high_frequency_energy_ratio` and `frechet_distance` (on features you already have). Metrics that need weights,
read from a local path the user supplies (nothing is ever downloaded): `frechet_inception_distance` (rFID/gFID),
`frechet_dinov2_distance` (FD-DINOv2) and `lpips`; without weights they raise `MissingWeightsError`, whose
one-line message says which argument or environment variable to set and which file it expects.
`compute_metrics` runs everything it can and records what it skipped, and why.
"""

import importlib.resources
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import NoTrainInceptionV3
from transformers import Dinov2Model

INCEPTION_WEIGHTS_ENV = "DITO_INCEPTION_WEIGHTS"
DINOV2_PATH_ENV = "DITO_DINOV2_PATH"
LPIPS_BACKBONE_ENV = "DITO_LPIPS_BACKBONE"

# Decoders overshoot [-1, 1] a little; [0, 255] images overshoot it by a lot. This margin tells the two apart.
_RANGE_TOLERANCE = 0.5
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torch-fidelity's conversion of the TF Inception graph used by every published FID.
_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torchvision's ImageNet checkpoints, the backbones the LPIPS heads were trained on.
_LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


class MissingWeightsError(RuntimeError):
    """A metric needs pretrained weights that were not supplied; the message says, in one line, how to supply them."""


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


@dataclass
class MetricsReport:
    r"""
    Output of [`compute_metrics`].

    Args:
        values (`dict[str, float]`): Every metric that ran, by name.
        skipped (`dict[str, str]`): Every metric that could not run, by name, with the one-line reason.
    """

    values: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------


def _check_images(name: str, images: torch.Tensor, min_size: int = 1, channels: int | None = None) -> torch.Tensor:
    """Validate a `(B, C, H, W)` float batch in [-1, 1] and return it clamped, in float32."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(images).__name__}.")
    if images.ndim != 4 or images.numel() == 0:
        raise ValueError(f"`{name}` must be a non-empty (B, C, H, W) tensor, got shape {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"`{name}` must be a float tensor in [-1, 1], got {images.dtype} (use x / 127.5 - 1).")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"`{name}` must have {channels} channels, got shape {tuple(images.shape)}.")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"`{name}` must be at least {min_size} px on each side, got shape {tuple(images.shape)}.")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    lo, hi = images.aminmax()
    if lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"`{name}` must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] (for [0, 255] images use x / 127.5 - 1)."
        )
    return images.clamp(-1.0, 1.0)


def _check_pair(
    a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor, min_size: int = 1, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    a = _check_images(a_name, a, min_size, channels)
    b = _check_images(b_name, b, min_size, channels)
    if a.shape != b.shape:
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    return a, b.to(a.device)


def _check_sets(images: torch.Tensor, reference_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two RGB image sets of any sizes, at least 2 images each (a covariance needs two samples)."""
    images = _check_images("images", images, channels=3)
    reference_images = _check_images("reference_images", reference_images, channels=3)
    if min(images.shape[0], reference_images.shape[0]) < 2:
        raise ValueError(
            f"Fréchet distances need >= 2 images per set, got {images.shape[0]} and {reference_images.shape[0]}."
        )
    return images, reference_images.to(images.device)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    # Published FIDs score 8-bit images (PNGs on disk), so the feature metrics see the same quantisation.
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _batches(images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    return images.split(batch_size)


def _resolve_path(value: str | os.PathLike | None, env: str) -> Path | None:
    value = value if value is not None else os.environ.get(env) or None
    return None if value is None else Path(value).expanduser()


# ---------------------------------------------------------------------------------------------------------------------
# Metrics without pretrained weights
# ---------------------------------------------------------------------------------------------------------------------


def psnr(reconstructions: torch.Tensor, originals: torch.Tensor) -> float:
    r"""
    Peak signal-to-noise ratio in dB, 10·log10(2² / MSE) for images in [-1, 1], computed per image and averaged.

    Identical images give `inf`. Uses torchmetrics' `peak_signal_noise_ratio`.

    Args:
        reconstructions (`torch.Tensor` of shape `(B, C, H, W)`): Images in [-1, 1].
        originals (`torch.Tensor` of the same shape): Images in [-1, 1].

    Returns:
        `float`: Mean PSNR over the batch.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import psnr

        >>> x = torch.zeros(2, 3, 8, 8)
        >>> round(psnr(x + 0.02, x), 2)  # 10 * log10(4 / 0.02²)
        40.0

        ```
    """
    reconstructions, originals = _check_pair("reconstructions", reconstructions, "originals", originals)
    value = peak_signal_noise_ratio(reconstructions, originals, data_range=2.0, dim=(1, 2, 3))
    return float(value)


def ssim(reconstructions: torch.Tensor, originals: torch.Tensor) -> float:
    r"""
    Structural similarity (Wang et al. 2004; 11×11 Gaussian window, σ = 1.5) per image, averaged; 1 for identical.

    Uses torchmetrics' `structural_similarity_index_measure` with a data range of 2.

    Args:
        reconstructions (`torch.Tensor` of shape `(B, C, H, W)`): Images in [-1, 1], at least 11 px a side.
        originals (`torch.Tensor` of the same shape): Images in [-1, 1].

    Returns:
        `float`: Mean SSIM over the batch.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import ssim

        >>> x = torch.rand(2, 3, 16, 16) * 2 - 1
        >>> round(ssim(x, x), 4)
        1.0

        ```
    """
    reconstructions, originals = _check_pair("reconstructions", reconstructions, "originals", originals, min_size=11)
    return float(structural_similarity_index_measure(reconstructions, originals, data_range=2.0))


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


def _laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Band-pass levels, finest first; the last level is the low-pass residual."""
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


def _sort_columns(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":  # numpy's vectorised sort is ~4x faster than torch.sort on CPU, and sorting dominates
        return torch.from_numpy(np.sort(x.numpy(), axis=0))
    return x.sort(dim=0).values


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
    pyramid (Karras et al. 2018, "Progressive Growing of GANs", Sec. 5).

    Per pyramid level (full resolution down to `min_resolution`, halving): sample `nhoods_per_image` 7×7
    neighbourhoods per image, normalise each channel by its mean and standard deviation over the set, project the
    descriptors on `dir_repeats × dirs_per_repeat` random unit directions, sort each projection and average the
    absolute differences between the two sorted lists (the 1-D Wasserstein-1 distance, averaged over directions).
    Low is better; Karras et al. report the values ×10³.

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
    if nhood_size < 1 or nhood_size % 2 == 0:
        raise ValueError(f"`nhood_size` must be a positive odd number, got {nhood_size}.")
    if min(nhoods_per_image, dir_repeats, dirs_per_repeat) < 1:
        raise ValueError("`nhoods_per_image`, `dir_repeats` and `dirs_per_repeat` must be >= 1.")
    if min_resolution < nhood_size:
        raise ValueError(f"`min_resolution` ({min_resolution}) must be at least `nhood_size` ({nhood_size}).")
    images, reference_images = _check_pair(
        "images", images, "reference_images", reference_images, min_size=min_resolution
    )
    resolutions = []
    size = min(images.shape[-2:])
    while size >= min_resolution:
        resolutions.append(size)
        size //= 2

    generator = torch.Generator().manual_seed(seed)  # CPU draws: the same numbers on every device
    pyramids = _laplacian_pyramid(images, len(resolutions)), _laplacian_pyramid(reference_images, len(resolutions))
    per_level = {}
    for resolution, level, reference_level in zip(resolutions, *pyramids):
        index = _patch_index(level.shape, nhood_size, nhoods_per_image, generator)  # shared by both sets
        desc = _descriptors(level, index)  # (P, D)
        reference_desc = _descriptors(reference_level, index)  # (P, D)
        distances = []
        for _ in range(dir_repeats):
            directions = torch.randn(desc.shape[1], dirs_per_repeat, generator=generator)  # (D, K)
            directions = (directions / directions.norm(dim=0, keepdim=True)).to(desc)
            projected = _sort_columns(desc @ directions)  # (P, K)
            reference_projected = _sort_columns(reference_desc @ directions)  # (P, K)
            distances.append((projected - reference_projected).abs().mean())
        per_level[resolution] = float(torch.stack(distances).mean())
    return SlicedWassersteinOutput(per_level=per_level, mean=sum(per_level.values()) / len(per_level))


def high_frequency_energy_ratio(reconstructions: torch.Tensor, originals: torch.Tensor, cutoff: float = 0.5) -> float:
    r"""
    Spectral power of the reconstructions above a radial frequency, divided by that of the originals.

    Each image channel has its mean removed and a 2-D Hann window applied (so that the jump at the border, which the
    FFT treats as periodic, is not counted as detail), then the power |FFT|² is summed over frequencies whose radius
    exceeds `cutoff` × Nyquist, over the whole batch, for each set. 1.0 means as sharp as the originals; below 1,
    blurred; above 1, extra high-frequency content (noise, ringing, hallucinated texture). Torchmetrics has no such
    metric, so it is written here.

    Args:
        reconstructions (`torch.Tensor` of shape `(B, C, H, W)`): Images in [-1, 1].
        originals (`torch.Tensor` of the same shape): Images in [-1, 1], with some energy above the cutoff.
        cutoff (`float`, *optional*, defaults to 0.5): Lower edge of the band as a fraction of the Nyquist frequency,
            in (0, 1).

    Returns:
        `float`: The ratio of the two band energies.

    Examples:
        ```py
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from diffusers_dito.metrics import high_frequency_energy_ratio

        >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
        >>> blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
        >>> high_frequency_energy_ratio(x, x), high_frequency_energy_ratio(blurred, x) < 0.5
        (1.0, True)

        ```
    """
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"`cutoff` must be in (0, 1) (a fraction of the Nyquist frequency), got {cutoff}.")
    reconstructions, originals = _check_pair("reconstructions", reconstructions, "originals", originals, min_size=2)
    height, width = originals.shape[-2:]
    window = torch.outer(torch.hann_window(height, periodic=False), torch.hann_window(width, periodic=False))
    radius = torch.hypot(torch.fft.fftfreq(height)[:, None], torch.fft.fftfreq(width)[None, :]) / 0.5  # 1 = Nyquist
    band = (radius > cutoff).to(originals.device)  # (H, W)

    def band_energy(x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) * window.to(x)
        return torch.fft.fft2(x).abs().square()[..., band].double().sum()

    reference = band_energy(originals)
    if reference <= 0:
        raise ValueError(
            f"`originals` have no energy above {cutoff} × Nyquist (constant images?); the ratio is undefined."
        )
    return float(band_energy(reconstructions) / reference)


def frechet_distance(features: torch.Tensor, reference_features: torch.Tensor) -> float:
    r"""
    Fréchet distance between Gaussians fitted to two feature sets (Dowson & Landau 1982; FID, Heusel et al. 2017):

        d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2·Tr((Σ₁Σ₂)^½).

    Tr((Σ₁Σ₂)^½) is computed as the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    Σ₁^½ Σ₂ Σ₁^½ (same spectrum as Σ₁Σ₂), in float64, with round-off negatives clamped to 0. torchmetrics only
    has this inside its FID class (private `_compute_fid`), so the shared helper is written here.

    Args:
        features (`torch.Tensor` of shape `(N, D)`): One feature vector per image; N >= 2.
        reference_features (`torch.Tensor` of shape `(M, D)`): M >= 2.

    Returns:
        `float`: d², >= 0 (this is what FID reports).

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import frechet_distance

        >>> a = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        >>> round(frechet_distance(a, a), 6), round(frechet_distance(a + 1.0, a), 6)  # a shift of 1 in 8 dims
        (0.0, 8.0)

        ```
    """
    for name, value in (("features", features), ("reference_features", reference_features)):
        if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[0] < 2:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be an (N, D) tensor with N >= 2, got {shape}.")
        if not torch.isfinite(value).all():
            raise ValueError(f"`{name}` contains NaN or infinite values.")
    if features.shape[1] != reference_features.shape[1]:
        raise ValueError(f"Feature dimensions differ: {features.shape[1]} and {reference_features.shape[1]}.")
    a, b = features.double(), reference_features.to(features.device).double()
    mu_a, mu_b = a.mean(dim=0), b.mean(dim=0)  # (D,)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (D, D)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    sqrt_cov_a = (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T  # Σ₁^½
    middle = sqrt_cov_a @ cov_b @ sqrt_cov_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics with pretrained weights from a local path
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _features(extract: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([extract(batch).flatten(1).double().cpu() for batch in _batches(images, batch_size)])


def _load_inception(inception: str | os.PathLike | None) -> nn.Module:
    path = _resolve_path(inception, INCEPTION_WEIGHTS_ENV)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / _INCEPTION_FILE  # where torch-fidelity would have put it
    path = path if path is not None else cached if cached.is_file() else None
    if path is None or not path.is_file():
        where = "is not set" if path is None else f"points to '{path}', which is not a file"
        raise MissingWeightsError(
            f"FID needs Inception-v3 weights: `inception=` / ${INCEPTION_WEIGHTS_ENV} {where}; give the path to "
            f"torch-fidelity's {_INCEPTION_FILE} (or put it in {cached.parent}, or pass an nn.Module taking uint8)."
        )
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ModuleNotFoundError(
            "FID from an Inception weights file needs the torch-fidelity package: pip install torch-fidelity "
            "(or pass inception=<nn.Module> taking uint8 images)."
        )
    # torchmetrics' wrapper of torch-fidelity's TF-compatible Inception, the network behind published FIDs
    return NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))


def frechet_inception_distance(
    images: torch.Tensor,
    reference_images: torch.Tensor,
    inception: str | os.PathLike | nn.Module | None = None,
    batch_size: int = 64,
) -> float:
    r"""
    Fréchet Inception distance (Heusel et al. 2017) on 2048-d pool features: rFID for reconstructions against their
    originals, gFID for samples against a reference set.

    Both sets are quantised to uint8 (like the PNGs that published FIDs score) and fed to an Inception-v3. FIDs from
    a few hundred images are biased upwards; compare numbers only at equal set sizes.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): Images in [-1, 1]; N >= 2.
        reference_images (`torch.Tensor` of shape `(M, 3, H', W')`): Images in [-1, 1]; M >= 2.
        inception (`str`, `os.PathLike` or `nn.Module`, *optional*): Path to torch-fidelity's
            `weights-inception-2015-12-05-6726825d.pth` (needs the `torch-fidelity` package; defaults to
            `$DITO_INCEPTION_WEIGHTS`, then to that file in `$TORCH_HOME/hub/checkpoints/`), or any module mapping
            uint8 `(B, 3, H, W)` images to `(B, D)` features.
        batch_size (`int`, *optional*, defaults to 64): Images per forward pass.

    Returns:
        `float`: The FID.

    Raises:
        `MissingWeightsError`: No module was given and no weights file was found.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import frechet_inception_distance

        >>> class MeanColour(torch.nn.Module):  # a stand-in for Inception: (B, 3, H, W) uint8 -> (B, 3)
        ...     def forward(self, x):
        ...         return x.float().mean(dim=(2, 3))

        >>> x = torch.rand(8, 3, 16, 16) * 2 - 1
        >>> round(frechet_inception_distance(x, x, inception=MeanColour()), 6)
        0.0

        ```
    """
    images, reference_images = _check_sets(images, reference_images)
    model = inception if isinstance(inception, nn.Module) else _load_inception(inception)
    was_training = model.training
    model.eval().to(images.device)
    try:
        features = _features(lambda batch: model(_to_uint8(batch)), images, batch_size)
        reference_features = _features(lambda batch: model(_to_uint8(batch)), reference_images, batch_size)
    finally:
        model.train(was_training)
    return frechet_distance(features, reference_features)


def _load_dinov2(dinov2: str | os.PathLike | None) -> Dinov2Model:
    path = _resolve_path(dinov2, DINOV2_PATH_ENV)
    has_files = path is not None and (path / "config.json").is_file()
    if not has_files or not (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        where = "is not set" if path is None else f"points to '{path}', which lacks config.json or weights"
        raise MissingWeightsError(
            f"FD-DINOv2 needs DINOv2 weights: `dinov2=` / ${DINOV2_PATH_ENV} {where}; give a local folder with "
            "config.json and model.safetensors of a transformers Dinov2Model (e.g. a copy of facebook/dinov2-large)."
        )
    return Dinov2Model.from_pretrained(path, local_files_only=True)


def frechet_dinov2_distance(
    images: torch.Tensor,
    reference_images: torch.Tensor,
    dinov2: str | os.PathLike | Dinov2Model | None = None,
    resolution: int = 224,
    batch_size: int = 64,
) -> float:
    r"""
    FD-DINOv2 (Stein et al. 2023): the Fréchet distance between DINOv2 CLS features of two image sets.

    Preprocessing follows dgm-eval and EDM2: quantise to uint8, resize to `resolution`² (bicubic, antialiased),
    normalise with the ImageNet mean and std, and take the final-layer-normed CLS token (`pooler_output`).
    The published numbers use ViT-L/14 (`facebook/dinov2-large`).

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): Images in [-1, 1]; N >= 2.
        reference_images (`torch.Tensor` of shape `(M, 3, H', W')`): Images in [-1, 1]; M >= 2.
        dinov2 (`str`, `os.PathLike` or `Dinov2Model`, *optional*): A local folder holding a `Dinov2Model`
            (`config.json` and `model.safetensors`, as written by `save_pretrained`), or a loaded model. Defaults to
            `$DITO_DINOV2_PATH`.
        resolution (`int`, *optional*, defaults to 224): Side the images are resized to.
        batch_size (`int`, *optional*, defaults to 64): Images per forward pass.

    Returns:
        `float`: The FD-DINOv2.

    Raises:
        `MissingWeightsError`: No model was given and no model folder was found.

    Examples:
        ```py
        >>> import torch
        >>> from transformers import Dinov2Config, Dinov2Model
        >>> from diffusers_dito.metrics import frechet_dinov2_distance

        >>> config = Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
        >>> tiny = Dinov2Model(config)  # random weights: only to show the call
        >>> x = torch.rand(4, 3, 16, 16) * 2 - 1
        >>> round(frechet_dinov2_distance(x, x, dinov2=tiny, resolution=28), 6)
        0.0

        ```
    """
    if resolution < 1:
        raise ValueError(f"`resolution` must be >= 1, got {resolution}.")
    images, reference_images = _check_sets(images, reference_images)
    model = dinov2 if isinstance(dinov2, nn.Module) else _load_dinov2(dinov2)
    was_training = model.training
    model.eval().to(images.device)
    mean = torch.tensor(_IMAGENET_MEAN, device=images.device)[None, :, None, None]
    std = torch.tensor(_IMAGENET_STD, device=images.device)[None, :, None, None]
    dtype = next(model.parameters()).dtype

    def extract(batch: torch.Tensor) -> torch.Tensor:
        x = _to_uint8(batch).float() / 255  # (B, 3, H, W) in [0, 1]
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
        return model(pixel_values=((x - mean) / std).to(dtype)).pooler_output  # (B, hidden)

    try:
        features = _features(extract, images, batch_size)
        reference_features = _features(extract, reference_images, batch_size)
    finally:
        model.train(was_training)
    return frechet_distance(features, reference_features)


# Adapted from richzhang/PerceptualSimilarity lpips/pretrained_networks.py and lpips/lpips.py. torchmetrics' LPIPS
# builds its backbone through torchvision (not a dependency here) and downloads the ImageNet weights, so the two
# backbones are written out below, with torchvision's layer indices so its checkpoints load as they are. The linear
# heads are the official v0.1 ones that torchmetrics ships inside its package.
_LPIPS_TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}  # ReLU outputs compared (torchvision indices)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


def _lpips_backbone(net_type: str) -> nn.Sequential:
    """`torchvision.models.{alexnet,vgg16}().features`, layer for layer."""
    if net_type == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )  # fmt: skip
    layers, in_channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
            in_channels = width
    return nn.Sequential(*layers)


class _LPIPS(nn.Module):
    """LPIPS v0.1 (Zhang et al. 2018): Σ_l mean_hw ‖w_l ⊙ (ŷ_l(x) − ŷ_l(x₀))‖², ŷ = unit-normalised channels."""

    def __init__(self, net_type: str) -> None:
        super().__init__()
        self.features = _lpips_backbone(net_type)
        self.taps = _LPIPS_TAPS[net_type]
        channels = [self.features[tap - 1].out_channels for tap in self.taps]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE)[None, :, None, None], persistent=False)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, out = (x - self.shift) / self.scale, []
        for index, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if index in self.taps:
                out.append(x / torch.sqrt(x.square().sum(dim=1, keepdim=True) + 1e-8))  # (B, C_l, h_l, w_l)
        return out

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        pairs = zip(self.lins, self._activations(x), self._activations(reference))
        return sum(lin((a - b).square()).mean(dim=(1, 2, 3)) for lin, a, b in pairs)  # (B,)


def _load_lpips(backbone: str | os.PathLike | None, net_type: str) -> _LPIPS:
    filename = _LPIPS_BACKBONE_FILES[net_type]
    path = _resolve_path(backbone, LPIPS_BACKBONE_ENV)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename  # where torchvision would have put it
    path = path if path is not None else cached if cached.is_file() else None
    if path is None or not path.is_file():
        where = "is not set" if path is None else f"points to '{path}', which is not a file"
        raise MissingWeightsError(
            f"LPIPS-{net_type} needs torchvision's ImageNet backbone: `backbone=` (`lpips_backbone=` in "
            f"compute_metrics) / ${LPIPS_BACKBONE_ENV} {where}; give the path to {filename} (or put it in "
            f"{cached.parent})."
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if any(key.startswith("features.") for key in state_dict):  # a whole torchvision model: keep the conv stack
        state_dict = {key.removeprefix("features."): v for key, v in state_dict.items() if key.startswith("features.")}
    model = _LPIPS(net_type)
    model.features.load_state_dict(state_dict)
    heads = importlib.resources.files("torchmetrics.functional.image") / "lpips_models" / f"{net_type}.pth"
    with importlib.resources.as_file(heads) as heads_path:
        heads_state = torch.load(heads_path, map_location="cpu", weights_only=True)
    model.lins.load_state_dict({f"{k}.weight": heads_state[f"lin{k}.model.1.weight"] for k in range(len(model.lins))})
    return model.eval().requires_grad_(False)


@torch.no_grad()
def lpips(
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    backbone: str | os.PathLike | None = None,
    net_type: Literal["alex", "vgg"] = "alex",
    batch_size: int = 64,
) -> float:
    r"""
    LPIPS v0.1 (Zhang et al. 2018), averaged over the batch: lower is more similar, 0 for identical images.

    The linear heads are the official ones, shipped inside torchmetrics; the ImageNet backbone is read from a local
    torchvision checkpoint, so results match `lpips` and torchmetrics' LPIPS. SqueezeNet is not supported.

    Args:
        reconstructions (`torch.Tensor` of shape `(B, 3, H, W)`): Images in [-1, 1] (LPIPS' own range), >= 32 px.
        originals (`torch.Tensor` of the same shape): Images in [-1, 1].
        backbone (`str` or `os.PathLike`, *optional*): torchvision's `alexnet-owt-7be5be79.pth` (or
            `vgg16-397923af.pth` for `net_type="vgg"`). Defaults to `$DITO_LPIPS_BACKBONE`, then to that file in
            torch's hub cache (`$TORCH_HOME/hub/checkpoints/`), where torchvision keeps what it once downloaded.
        net_type (`str`, *optional*, defaults to `"alex"`): `"alex"` (the LPIPS authors' choice as a metric) or
            `"vgg"`.
        batch_size (`int`, *optional*, defaults to 64): Image pairs per forward pass.

    Returns:
        `float`: Mean LPIPS.

    Raises:
        `MissingWeightsError`: No backbone checkpoint was found.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import MissingWeightsError, lpips

        >>> x = torch.rand(1, 3, 64, 64) * 2 - 1
        >>> try:
        ...     lpips(x, x, backbone="no/such/alexnet-owt-7be5be79.pth")
        ... except MissingWeightsError as err:
        ...     print(str(err).splitlines()[0][:48])
        LPIPS-alex needs torchvision's ImageNet backbone

        ```
    """
    if net_type not in _LPIPS_BACKBONE_FILES:
        raise ValueError(f"`net_type` must be one of {sorted(_LPIPS_BACKBONE_FILES)}, got {net_type!r}.")
    reconstructions, originals = _check_pair(
        "reconstructions", reconstructions, "originals", originals, min_size=32, channels=3
    )
    model = _load_lpips(backbone, net_type).to(reconstructions.device)
    scores = [model(a, b) for a, b in zip(_batches(reconstructions, batch_size), _batches(originals, batch_size))]
    return float(torch.cat(scores).mean())


def compute_metrics(
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    inception: str | os.PathLike | nn.Module | None = None,
    dinov2: str | os.PathLike | Dinov2Model | None = None,
    lpips_backbone: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> MetricsReport:
    r"""
    Every reconstruction metric that can run: the weight-free ones always, the others where weights are found
    (arguments first, then `$DITO_INCEPTION_WEIGHTS`, `$DITO_DINOV2_PATH`, `$DITO_LPIPS_BACKBONE`). A metric whose
    weights or package are missing is recorded in `skipped` with its one-line reason; bad inputs still raise.

    Names in `values`: `psnr`, `ssim`, `swd` (mean over levels) and `swd_<resolution>`, `hf_energy_ratio`, and, when
    they run, `lpips`, `rfid`, `fd_dinov2`.

    Args:
        reconstructions (`torch.Tensor` of shape `(B, 3, H, W)`): Decoded images in [-1, 1]; H, W >= 32.
        originals (`torch.Tensor` of the same shape): The images that were encoded, in [-1, 1].
        inception (`str`, `os.PathLike` or `nn.Module`, *optional*): See [`frechet_inception_distance`].
        dinov2 (`str`, `os.PathLike` or `Dinov2Model`, *optional*): See [`frechet_dinov2_distance`].
        lpips_backbone (`str` or `os.PathLike`, *optional*): See [`lpips`].
        seed (`int`, *optional*, defaults to 0): Seed of the SWD.
        batch_size (`int`, *optional*, defaults to 64): Images per forward pass of the networks.

    Returns:
        [`MetricsReport`].

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import compute_metrics

        >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
        >>> report = compute_metrics(x, x, inception="no/such/file.pth", dinov2="no/such/folder", lpips_backbone="no")
        >>> sorted(report.values), sorted(report.skipped)
        (['hf_energy_ratio', 'psnr', 'ssim', 'swd', 'swd_16', 'swd_32'], ['fd_dinov2', 'lpips', 'rfid'])

        ```
    """
    reconstructions, originals = _check_pair(
        "reconstructions", reconstructions, "originals", originals, min_size=32, channels=3
    )
    report = MetricsReport()
    report.values["psnr"] = psnr(reconstructions, originals)
    report.values["ssim"] = ssim(reconstructions, originals)
    swd = sliced_wasserstein_distance(reconstructions, originals, seed=seed)
    report.values["swd"] = swd.mean
    report.values.update({f"swd_{resolution}": value for resolution, value in swd.per_level.items()})
    report.values["hf_energy_ratio"] = high_frequency_energy_ratio(reconstructions, originals)
    needs_weights = {
        "lpips": lambda: lpips(reconstructions, originals, backbone=lpips_backbone, batch_size=batch_size),
        "rfid": lambda: frechet_inception_distance(reconstructions, originals, inception, batch_size=batch_size),
        "fd_dinov2": lambda: frechet_dinov2_distance(reconstructions, originals, dinov2, batch_size=batch_size),
    }
    for name, metric in needs_weights.items():
        try:
            report.values[name] = metric()
        except (MissingWeightsError, ModuleNotFoundError) as err:
            report.skipped[name] = str(err)
    return report


__all__ = [
    "DINOV2_PATH_ENV",
    "INCEPTION_WEIGHTS_ENV",
    "LPIPS_BACKBONE_ENV",
    "MetricsReport",
    "MissingWeightsError",
    "SlicedWassersteinOutput",
    "compute_metrics",
    "frechet_dinov2_distance",
    "frechet_distance",
    "frechet_inception_distance",
    "high_frequency_energy_ratio",
    "lpips",
    "psnr",
    "sliced_wasserstein_distance",
    "ssim",
]
