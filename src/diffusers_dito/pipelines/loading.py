"""What is in a saved DiTo folder, and loading it: the one place that knows the folder layouts.

A folder holds a `DiToPipeline` or a `DiToDiTPipeline` (a `model_index.json` and one subfolder per component, as
`save_pretrained` writes them) or a bare model (a `config.json` and its weights). `model_kind` and
`local_model_config` read a folder without loading weights; `load_component` loads one model from a bare folder or
from its subfolder of a pipeline folder; `load_pipeline` and `load_reconstruction_pipeline` load any saved DiTo folder.
The `diffusers-dito` command line, its web app, the training and the evaluation scripts all load models through
them. How the pipelines save themselves, and their model card, is `diffusers_dito.pipelines.serialization`.
"""

import os
from pathlib import Path

from diffusers import FlowMatchEulerDiscreteScheduler

from ..models.autoencoder_dito import AutoencoderDiTo
from ..safe_loading import read_json_object
from .pipeline_dito import DiToPipeline
from .pipeline_dito_dit import DiToDiTPipeline
from .serialization import (
    CARD_METADATA,
    DiToPipelineLoadingMixin,
    evaluation_row,
    evaluation_section,
    with_evaluation_row,
)

__all__ = [
    "MODEL_KIND",
    "PIPELINE_KINDS",
    "DiToPipelineLoadingMixin",
    "evaluation_row",
    "evaluation_section",
    "load_component",
    "load_pipeline",
    "load_reconstruction_pipeline",
    "local_model_config",
    "model_kind",
    "update_model_card",
]

PIPELINE_KINDS = ("DiToPipeline", "DiToDiTPipeline")  # what a model_index.json may name
MODEL_KIND = "AutoencoderDiTo"  # what a bare model's config.json may name
EXPECTED = "a saved DiTo pipeline or AutoencoderDiTo"


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


def local_model_config(path: str | os.PathLike, subfolder: str | None = None) -> dict | None:
    r"""
    The `config.json` of a local model folder, or of the `subfolder` component of a local pipeline folder, read
    without loading weights; `None` where there is none (a Hub id, or a path that does not exist).

    Raises:
        `ValueError`: The `config.json` is not a readable JSON object; the message names the file.

    Examples:
        ```py
        >>> import tempfile
        >>> from pathlib import Path
        >>> from diffusers_dito.pipelines.loading import local_model_config

        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "vae").mkdir()
        >>> _ = (folder / "vae" / "config.json").write_text('{"latent_channels": 4}')
        >>> local_model_config(folder, "vae"), local_model_config(folder / "vae", "vae"), local_model_config(folder)
        ({'latent_channels': 4}, {'latent_channels': 4}, None)

        ```
    """
    for candidate in (Path(path) / (subfolder or "") / "config.json", Path(path) / "config.json"):
        if candidate.is_file():
            return read_json_object(candidate)
    return None


def load_component(model_cls: type, path: str | os.PathLike, component: str, cache_dir: str | None = None):
    """
    `model_cls.from_pretrained` of a model saved alone (`save_pretrained`), or of the `component` subfolder of a
    pipeline folder (e.g. `"vae"`) where `path` has one. `path` may also be a Hub id, of a bare model.
    """
    subfolder = component if os.path.isdir(os.path.join(path, component)) else None
    return model_cls.from_pretrained(path, subfolder=subfolder, cache_dir=cache_dir)


def load_pipeline(path: str | os.PathLike) -> DiToPipeline | DiToDiTPipeline:
    """
    The pipeline of a saved DiTo folder: a `DiToPipeline` or `DiToDiTPipeline` folder as saved, a bare
    `AutoencoderDiTo` in a `DiToPipeline` with a default (Euler) scheduler. Raises `model_kind`'s `ValueError` for a
    folder that holds something else.
    """
    kind = model_kind(path)
    if kind == MODEL_KIND:
        return DiToPipeline(vae=AutoencoderDiTo.from_pretrained(path), scheduler=FlowMatchEulerDiscreteScheduler())
    return (DiToPipeline if kind == "DiToPipeline" else DiToDiTPipeline).from_pretrained(path)


def load_reconstruction_pipeline(path: str | os.PathLike) -> DiToPipeline:
    """
    A `DiToPipeline` from any saved DiTo folder, as `load_pipeline` loads it; from a `DiToDiTPipeline` folder, its
    `vae` and the `decoder_scheduler` its generations are decoded with (the transformer is not loaded).
    """
    if model_kind(path) != "DiToDiTPipeline":
        return load_pipeline(path)
    generation = DiToDiTPipeline.from_pretrained(path, transformer=None)  # the transformer is not needed
    return DiToPipeline(vae=generation.vae, scheduler=generation.decoder_scheduler)


def update_model_card(folder: str | os.PathLike, metrics: dict) -> Path:
    r"""
    Writes `metrics` (the `metrics.json` of `training/evaluate_dito.py`) into the evaluation table of the folder's
    `README.md` ([`~serialization.with_evaluation_row`]): updating twice with the same metrics changes nothing. A
    folder without a card (a bare `AutoencoderDiTo`) gets a short one. Returns the card's path.
    """
    path = Path(folder) / "README.md"
    card = path.read_text(encoding="utf-8") if path.exists() else f"{CARD_METADATA}\n# {model_kind(folder)}\n\n"
    path.write_text(with_evaluation_row(card, metrics), encoding="utf-8")
    return path
