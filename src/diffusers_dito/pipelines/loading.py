"""How DiTo pipelines are saved so that every diffusers loading path finds them.

diffusers resolves a plain `_class_name` in `model_index.json` inside the `diffusers` package itself, so a folder
saved by a pipeline that lives outside diffusers cannot be opened with `DiffusionPipeline.from_pretrained` alone.
The mechanism diffusers supports for that is `_class_name: [module_file, class_name]` with `module_file.py` inside
the folder. We write such a file (`pipeline.py`): a one-line re-export of the installed class, never a copy of
code. Then:

- `DiToPipeline.from_pretrained(dir)` reads the folder as a normal pipeline (no remote code is run: the class is
  already known, so the list is read as its plain class name);
- `DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` imports `pipeline.py`, which imports the
  installed `diffusers_dito`, in a process that never imported it.

diffusers records each component by its defining module in the installed package, e.g.
`["diffusers_dito.models.autoencoder_dito", "AutoencoderDiTo"]` (it looks the loading base classes up in that
module, so the top-level package name alone would not load). Those module paths are therefore public API.

This module also owns "what is in this model folder": `model_kind` reads it without loading weights, and
`load_pipeline` / `load_reconstruction_pipeline` load any saved DiTo folder (a `DiToPipeline`, a `DiToDiTPipeline` or
a bare `AutoencoderDiTo`). The `diffusers-dito` command line and the evaluation scripts all load models through them.
"""

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from diffusers import FlowMatchEulerDiscreteScheduler

from ..safe_loading import SafetensorsOnlyMixin, read_json_object

if TYPE_CHECKING:  # the pipelines import this module: at run time they are imported where they are used
    from .pipeline_dito import DiToPipeline
    from .pipeline_dito_dit import DiToDiTPipeline

SHIM_MODULE = "pipeline"
PIPELINE_KINDS = ("DiToPipeline", "DiToDiTPipeline")  # what a model_index.json may name
MODEL_KIND = "AutoencoderDiTo"  # what a bare model's config.json may name
EXPECTED = "a saved DiTo pipeline or AutoencoderDiTo"


class DiToPipelineLoadingMixin(SafetensorsOnlyMixin):
    """Mixed into DiTo pipelines: safetensors-only loading; `save_pretrained` writes the shim and a model card."""

    @classmethod
    def load_config(cls, *args, **kwargs):
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        class_name = config.get("_class_name")
        # Our own shim names this very class: read it as the plain name, so no code from the folder is executed.
        if isinstance(class_name, (list, tuple)) and list(class_name) == [SHIM_MODULE, cls.__name__]:
            config["_class_name"] = cls.__name__
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        super().save_pretrained(save_directory, **kwargs)
        save_directory = Path(save_directory)
        index_path = save_directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [SHIM_MODULE, type(self).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (save_directory / f"{SHIM_MODULE}.py").write_text(
            "# Re-export of the installed diffusers-dito class, so that\n"
            "# DiffusionPipeline.from_pretrained(this_folder, trust_remote_code=True) finds it.\n"
            "# No code is copied here.\n"
            f"from diffusers_dito import {type(self).__name__}  # noqa: F401\n"
        )
        card = save_directory / "README.md"
        if not card.exists():
            card.write_text(self.model_card())

    def model_card(self) -> str:
        """A short model card: what the pipeline is, its configs, the training data when known, and usage."""
        name = type(self).__name__
        sections = [
            "---\nlibrary_name: diffusers\ntags:\n- diffusers-dito\n- dito\n- image-tokenizer\n---\n",
            f"# {name}\n",
            "A DiTo pipeline (Diffusion Autoencoders are Scalable Image Tokenizers, arXiv 2501.18593), saved by "
            "diffusers-dito.\n",
            f"Training data: {getattr(self, 'training_data', None) or 'not recorded'}.\n",
            *([f"Distilled from: {self.distilled_from}.\n"] if getattr(self, "distilled_from", None) else []),
            "## Usage\n",
            "```python\n"
            f"from diffusers_dito import {name}\n\n"
            f'pipe = {name}.from_pretrained("path/to/this/folder")\n'
            "# or, without importing diffusers_dito first:\n"
            "# from diffusers import DiffusionPipeline\n"
            '# pipe = DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)\n'
            "```\n",
            "## Components\n",
        ]
        for component_name, component in self.components.items():
            config = getattr(component, "config", None)
            if config is None:
                continue
            body = json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, indent=2, default=str)
            sections.append(f"### `{component_name}`: `{type(component).__name__}`\n\n```json\n{body}\n```\n")
        return "\n".join(sections)


def model_kind(path: str | os.PathLike) -> str:
    r"""
    What a saved DiTo folder holds, read from its `model_index.json` or `config.json` without loading any weights:
    `"DiToPipeline"`, `"DiToDiTPipeline"` or `"AutoencoderDiTo"`.

    Raises:
        `ValueError`: The folder is missing, unreadable or holds something else; the message names the folder and
            what was found.

    Examples:
        ```py
        >>> import tempfile
        >>> from pathlib import Path
        >>> from diffusers_dito.pipelines.loading import model_kind

        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text('{"_class_name": "AutoencoderDiTo"}')
        >>> model_kind(folder)
        'AutoencoderDiTo'

        ```
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such folder, or not a folder (expected {EXPECTED})")
    for name, kinds, expected in (
        ("model_index.json", PIPELINE_KINDS, "a DiTo pipeline"),
        ("config.json", (MODEL_KIND,), f"an {MODEL_KIND}"),
    ):
        if (path / name).is_file():
            class_name = read_json_object(path / name).get("_class_name")
            class_name = class_name[-1] if isinstance(class_name, list) else class_name  # [SHIM_MODULE, class name]
            if class_name not in kinds:
                raise ValueError(f"{path} holds a {class_name}, not {expected}")
            return class_name
    raise ValueError(f"{path} has no model_index.json or config.json (expected {EXPECTED})")


def load_pipeline(path: str | os.PathLike) -> "DiToPipeline | DiToDiTPipeline":
    """
    The pipeline of a saved DiTo folder: a `DiToPipeline` or `DiToDiTPipeline` folder as saved, a bare
    `AutoencoderDiTo` in a `DiToPipeline` with a default (Euler) scheduler. Raises `model_kind`'s `ValueError` for a
    folder that holds something else.
    """
    from ..models import AutoencoderDiTo
    from . import DiToDiTPipeline, DiToPipeline

    kind = model_kind(path)
    if kind == MODEL_KIND:
        return DiToPipeline(vae=AutoencoderDiTo.from_pretrained(path), scheduler=FlowMatchEulerDiscreteScheduler())
    return (DiToPipeline if kind == "DiToPipeline" else DiToDiTPipeline).from_pretrained(path)


def load_reconstruction_pipeline(path: str | os.PathLike) -> "DiToPipeline":
    """
    A `DiToPipeline` from any saved DiTo folder, as `load_pipeline` loads it; from a `DiToDiTPipeline` folder, its
    `vae` and the `decoder_scheduler` its generations are decoded with (the transformer is not loaded).
    """
    from . import DiToDiTPipeline, DiToPipeline

    if model_kind(path) != "DiToDiTPipeline":
        return load_pipeline(path)
    generation = DiToDiTPipeline.from_pretrained(path, transformer=None)  # the transformer is not needed
    return DiToPipeline(vae=generation.vae, scheduler=generation.decoder_scheduler)
