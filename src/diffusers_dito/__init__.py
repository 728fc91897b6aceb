"""diffusers-dito: DiTo diffusion autoencoders as native diffusers models."""

from .losses import (
    DiToLossOutput,
    LatentFlowMatchingLossOutput,
    dito_flow_matching_loss,
    laplacian_l2_loss,
    latent_flow_matching_loss,
    patch_sliced_wasserstein_loss,
)
from .models import (
    DIT_PRESETS,
    DITO_PRESETS,
    STUDENT_DECODER_PRESETS,
    AutoencoderDiTo,
    AutoencoderDiToEncoderOutput,
    DiToDiTTransformer2DModel,
    DiToLatentDistribution,
)
from .pipelines import DiToDiTPipeline, DiToPipeline

__version__ = "0.1.0"

__all__ = [
    "AutoencoderDiTo",
    "AutoencoderDiToEncoderOutput",
    "DiToDiTPipeline",
    "DiToDiTTransformer2DModel",
    "DiToLatentDistribution",
    "DiToLossOutput",
    "LatentFlowMatchingLossOutput",
    "DiToPipeline",
    "DIT_PRESETS",
    "DITO_PRESETS",
    "STUDENT_DECODER_PRESETS",
    "dito_flow_matching_loss",
    "laplacian_l2_loss",
    "latent_flow_matching_loss",
    "patch_sliced_wasserstein_loss",
]
