"""Fréchet distances: the shared formula, FID on Inception-v3 features and FD-DINOv2 on DINOv2 features."""

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ._inputs import _batches, _check_sets, _to_uint8
from .weights import DINOV2_PATH_ENV, INCEPTION_WEIGHTS_ENV, MissingWeightsError, _resolve_path

# torchmetrics and transformers are imported where a network is built: importing them costs seconds, which every
# `import diffusers_dito` (and every training process) would otherwise pay for metrics it may never compute.
if TYPE_CHECKING:
    from transformers import Dinov2Model

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torch-fidelity's conversion of the TF Inception graph used by every published FID.
_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


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


@torch.no_grad()
def _features(extract: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([extract(batch).flatten(1).double().cpu() for batch in _batches(images, batch_size)])


def _feature_distance(
    model: nn.Module, extract: Callable, images: torch.Tensor, reference_images: torch.Tensor, batch_size: int
) -> float:
    """The Fréchet distance between `extract`'s features of the two sets, computed with `model` in eval mode on the
    images' device; `model` is put back in its training mode afterwards."""
    was_training = model.training
    model.eval().to(images.device)
    try:
        features = _features(extract, images, batch_size)
        reference_features = _features(extract, reference_images, batch_size)
    finally:
        model.train(was_training)
    return frechet_distance(features, reference_features)


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
    from torchmetrics.image.fid import NoTrainInceptionV3

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
    return _feature_distance(model, lambda batch: model(_to_uint8(batch)), images, reference_images, batch_size)


def _load_dinov2(dinov2: str | os.PathLike | None) -> "Dinov2Model":
    from transformers import Dinov2Model

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
    dinov2: "str | os.PathLike | Dinov2Model | None" = None,
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
    mean = torch.tensor(_IMAGENET_MEAN, device=images.device)[None, :, None, None]
    std = torch.tensor(_IMAGENET_STD, device=images.device)[None, :, None, None]
    dtype = next(model.parameters()).dtype

    def extract(batch: torch.Tensor) -> torch.Tensor:
        x = _to_uint8(batch).float() / 255  # (B, 3, H, W) in [0, 1]
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
        return model(pixel_values=((x - mean) / std).to(dtype)).pooler_output  # (B, hidden)

    return _feature_distance(model, extract, images, reference_images, batch_size)
