# Community-pipeline entry point: a re-export of the installed class, no logic of its own.
#   DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipelines/dito_dit", trust_remote_code=True)
from diffusers_dito import DiToDiTPipeline  # noqa: F401
