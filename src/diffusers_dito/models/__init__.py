from .autoencoder_dito import AutoencoderDiTo, AutoencoderDiToEncoderOutput
from .dit_presets import DIT_PRESETS
from .dit_transformer import DiToDiTTransformer2DModel
from .latent_distribution import DiToLatentDistribution
from .presets import DITO_PRESETS, STUDENT_DECODER_PRESETS

__all__ = [
    "AutoencoderDiTo",
    "AutoencoderDiToEncoderOutput",
    "DiToDiTTransformer2DModel",
    "DiToLatentDistribution",
    "DIT_PRESETS",
    "DITO_PRESETS",
    "STUDENT_DECODER_PRESETS",
]
