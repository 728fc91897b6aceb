from .pipeline_dito import DiToPipeline
from .pipeline_dito_dit import DiToDiTPipeline

__all__ = ["DiToPipeline", "DiToDiTPipeline"]
