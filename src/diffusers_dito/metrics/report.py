"""Every metric that can run, and why the others did not: for reconstructions, and for samples against real images."""

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._inputs import _check_images, _check_pair
from .frechet import frechet_dinov2_distance, frechet_inception_distance
from .perceptual import lpips
from .pixel import high_frequency_energy_ratio, psnr, ssim
from .swd import SlicedWassersteinOutput, sliced_wasserstein_distance
from .weights import MissingWeightsError

if TYPE_CHECKING:  # importing transformers costs seconds; only the annotations name it
    from transformers import Dinov2Model


@dataclass
class MetricsReport:
    r"""
    Output of [`compute_metrics`] and [`compute_generation_metrics`].

    Args:
        values (`dict[str, float]`): Every metric that ran, by name.
        skipped (`dict[str, str]`): Every metric that could not run, by name, with the one-line reason.
    """

    values: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _run_if_weights(report: MetricsReport, needs_weights: dict) -> None:
    """Run each metric, recording the ones whose weights (or package) are missing as skipped, with the reason."""
    for name, metric in needs_weights.items():
        try:
            report.values[name] = metric()
        except (MissingWeightsError, ModuleNotFoundError) as err:
            report.skipped[name] = str(err)


def _swd_values(swd: SlicedWassersteinOutput) -> dict[str, float]:
    """A report's SWD values: `swd`, the mean over the levels, and `swd_<resolution>` per level."""
    return {"swd": swd.mean, **{f"swd_{resolution}": value for resolution, value in swd.per_level.items()}}


def _equal_size_swd(samples: torch.Tensor, reference_images: torch.Tensor, seed: int) -> SlicedWassersteinOutput:
    """The SWD of two sets of one image size and any numbers of images: the larger set is represented by a random
    subset as large as the smaller, drawn with `seed` (SWD compares its sets image by image)."""
    count = min(samples.shape[0], reference_images.shape[0])
    generator = torch.Generator().manual_seed(seed)

    def subset(images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == count:
            return images
        keep = torch.randperm(images.shape[0], generator=generator)[:count].sort().values
        return images[keep.to(images.device)]  # (count, 3, H, W)

    return sliced_wasserstein_distance(subset(samples), subset(reference_images), seed=seed)


def compute_metrics(
    reconstructions: torch.Tensor,
    originals: torch.Tensor,
    inception: str | os.PathLike | nn.Module | None = None,
    dinov2: "str | os.PathLike | Dinov2Model | None" = None,
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
    report.values.update(_swd_values(sliced_wasserstein_distance(reconstructions, originals, seed=seed)))
    report.values["hf_energy_ratio"] = high_frequency_energy_ratio(reconstructions, originals)
    needs_weights = {
        "lpips": lambda: lpips(reconstructions, originals, backbone=lpips_backbone, batch_size=batch_size),
        "rfid": lambda: frechet_inception_distance(reconstructions, originals, inception, batch_size=batch_size),
        "fd_dinov2": lambda: frechet_dinov2_distance(reconstructions, originals, dinov2, batch_size=batch_size),
    }
    _run_if_weights(report, needs_weights)
    return report


def compute_generation_metrics(
    samples: torch.Tensor,
    reference_images: torch.Tensor,
    inception: str | os.PathLike | nn.Module | None = None,
    dinov2: "str | os.PathLike | Dinov2Model | None" = None,
    seed: int = 0,
    batch_size: int = 64,
) -> MetricsReport:
    r"""
    Every distribution metric of generated samples against real images that can run: SWD always, gFID and
    FD-DINOv2 where weights are found (as in [`compute_metrics`]); missing weights are recorded in `skipped`.

    Names in `values`: `swd` (mean over levels) and `swd_<resolution>`, and, when they run, `gfid` and `fd_dinov2`.

    SWD compares sets of one size, as Karras et al. do: of sets that differ, the larger is represented by a random
    subset as large as the smaller, drawn with `seed`. The Fréchet distances use both sets whole.

    Args:
        samples (`torch.Tensor` of shape `(N, 3, H, W)`): Generated images in [-1, 1]; N >= 2, H, W >= 16.
        reference_images (`torch.Tensor` of shape `(M, 3, H, W)`): Real images of the same size, in [-1, 1]; M >= 2.
        inception (`str`, `os.PathLike` or `nn.Module`, *optional*): See [`frechet_inception_distance`].
        dinov2 (`str`, `os.PathLike` or `Dinov2Model`, *optional*): See [`frechet_dinov2_distance`].
        seed (`int`, *optional*, defaults to 0): Seed of the SWD and of the subset it uses.
        batch_size (`int`, *optional*, defaults to 64): Images per forward pass of the networks.

    Returns:
        [`MetricsReport`].

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.metrics import compute_generation_metrics

        >>> samples, real = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(5, 3, 32, 32) * 2 - 1
        >>> report = compute_generation_metrics(samples, real, inception="no/such/file.pth", dinov2="no/such/dir")
        >>> sorted(report.values), sorted(report.skipped)
        (['swd', 'swd_16', 'swd_32'], ['fd_dinov2', 'gfid'])

        ```
    """
    samples = _check_images("samples", samples, min_size=16, channels=3)
    reference_images = _check_images("reference_images", reference_images, min_size=16, channels=3)
    if samples.shape[-2:] != reference_images.shape[-2:]:
        raise ValueError(
            f"`samples` and `reference_images` must have the same image size, got {tuple(samples.shape)} and "
            f"{tuple(reference_images.shape)} (resize the reference images to the samples' size)."
        )
    if min(samples.shape[0], reference_images.shape[0]) < 2:
        raise ValueError(f"Need >= 2 images per set, got {samples.shape[0]} and {reference_images.shape[0]}.")
    report = MetricsReport()
    report.values.update(_swd_values(_equal_size_swd(samples, reference_images, seed)))
    _run_if_weights(
        report,
        {
            "gfid": lambda: frechet_inception_distance(samples, reference_images, inception, batch_size=batch_size),
            "fd_dinov2": lambda: frechet_dinov2_distance(samples, reference_images, dinov2, batch_size=batch_size),
        },
    )
    return report
