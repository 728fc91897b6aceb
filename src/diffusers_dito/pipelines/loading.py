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
"""

import json
import os
from pathlib import Path

from ..safe_loading import SafetensorsOnlyMixin

SHIM_MODULE = "pipeline"


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
