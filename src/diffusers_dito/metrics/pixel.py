"""Pixel-space metrics that need no pretrained network: PSNR, SSIM and the high-frequency energy ratio."""

import torch

from ._inputs import _check_pair


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
    # Imported here: importing torchmetrics costs seconds, which every `import diffusers_dito` would pay otherwise.
    from torchmetrics.functional.image import peak_signal_noise_ratio

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
    from torchmetrics.functional.image import structural_similarity_index_measure

    return float(structural_similarity_index_measure(reconstructions, originals, data_range=2.0))


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
