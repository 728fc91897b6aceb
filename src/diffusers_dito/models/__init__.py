from .autoencoder_dito import AutoencoderDiTo, AutoencoderDiToEncoderOutput
from .latent_distribution import DiToLatentDistribution
from .presets import DITO_PRESETS

__all__ = ["AutoencoderDiTo", "AutoencoderDiToEncoderOutput", "DiToLatentDistribution", "DITO_PRESETS"]
