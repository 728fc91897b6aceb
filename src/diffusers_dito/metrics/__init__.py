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
`compute_metrics` (reconstructions) and `compute_generation_metrics` (samples against real images) run everything
they can and record what they skipped, and why.

The code is split by responsibility: `pixel` (PSNR, SSIM, high-frequency energy ratio), `swd`, `frechet` (the
Fréchet distance, FID, FD-DINOv2), `perceptual` (LPIPS), `weights` (where weights are looked up) and `report`
(`compute_metrics`, `compute_generation_metrics`). Import from `diffusers_dito.metrics`; the submodules are an
implementation detail.
"""

from .frechet import frechet_dinov2_distance, frechet_distance, frechet_inception_distance
from .perceptual import load_lpips, lpips, lpips_backbone_file, read_lpips_backbone
from .pixel import high_frequency_energy_ratio, psnr, ssim
from .report import MetricsReport, compute_generation_metrics, compute_metrics
from .swd import SlicedWassersteinOutput, sliced_wasserstein_distance
from .weights import DINOV2_PATH_ENV, INCEPTION_WEIGHTS_ENV, LPIPS_BACKBONE_ENV, MissingWeightsError

__all__ = [
    "DINOV2_PATH_ENV",
    "INCEPTION_WEIGHTS_ENV",
    "LPIPS_BACKBONE_ENV",
    "MetricsReport",
    "MissingWeightsError",
    "SlicedWassersteinOutput",
    "compute_generation_metrics",
    "compute_metrics",
    "frechet_dinov2_distance",
    "frechet_distance",
    "frechet_inception_distance",
    "high_frequency_energy_ratio",
    "load_lpips",
    "lpips",
    "lpips_backbone_file",
    "psnr",
    "read_lpips_backbone",
    "sliced_wasserstein_distance",
    "ssim",
]
