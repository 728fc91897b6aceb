# Community-pipeline entry point: a re-export of the installed class, no logic of its own.
#   DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipelines/dito", trust_remote_code=True)
from diffusers_dito import DiToPipeline  # noqa: F401
