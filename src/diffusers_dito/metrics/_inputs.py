"""Checks of the image arguments that every metric shares: float `(B, C, H, W)` batches in [-1, 1]."""

import torch

# Decoders overshoot [-1, 1] a little; [0, 255] images overshoot it by a lot. This margin tells the two apart.
_RANGE_TOLERANCE = 0.5


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
