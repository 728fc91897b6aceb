"""diffusers-dito: DiTo diffusion autoencoders as native diffusers models."""

from .losses import DiToLossOutput, dito_flow_matching_loss
from .models import DITO_PRESETS, AutoencoderDiTo, AutoencoderDiToEncoderOutput, DiToLatentDistribution

__version__ = "0.1.0"

__all__ = [
    "AutoencoderDiTo",
    "AutoencoderDiToEncoderOutput",
    "DiToLatentDistribution",
    "DITO_PRESETS",
    "DiToLossOutput",
    "dito_flow_matching_loss",
]
