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

import huggingface_hub
from diffusers import FlowMatchEulerDiscreteScheduler
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from ..atomic_files import atomic_write
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
    "dito_model_config",
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


def dito_model_config(path: str | os.PathLike, cache_dir: str | None = None) -> dict:
    r"""
    The `AutoencoderDiTo` config of what `path` names, read without loading weights: a local DiTo folder (a bare
    `AutoencoderDiTo`, or the `vae/` of a DiTo pipeline folder), else the `config.json` of a Hub model of that id
    (from the cache, or the Hub where it may be reached). What `load_component(AutoencoderDiTo, path, "vae")` loads.

    Raises:
        `ValueError`: One line that names `path` and says what it holds instead: another kind of model, no model, a
            missing folder that is not a Hub model either (and why: not in the cache offline, no such repository).

    Examples:
        ```py
        >>> import tempfile
        >>> from pathlib import Path
        >>> from diffusers_dito.pipelines.loading import dito_model_config

        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
        >>> try:
        ...     dito_model_config(folder)
        ... except ValueError as err:
        ...     print(str(err).replace(str(folder), "folder"))
        folder holds a AutoencoderKL, not an AutoencoderDiTo

        ```
    """
    if os.path.exists(path):
        kind = model_kind(path)  # a ValueError for a folder of anything else
        config_path = Path(path) / ("vae" if kind in PIPELINE_KINDS else "") / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{path}: a {kind} folder without {config_path.relative_to(path)}")
        config = read_json_object(config_path)
    else:
        config = read_json_object(_hub_config_file(str(path), cache_dir))
    if config.get("_class_name") != MODEL_KIND:
        raise ValueError(f"{path} holds a {config.get('_class_name')}, not an {MODEL_KIND}")
    return config


def _hub_config_file(repo_id: str, cache_dir: str | None) -> str:
    """The cached `config.json` of the Hub model `repo_id` (downloaded where the Hub may be reached)."""
    missing = f"{repo_id}: no such folder"
    try:
        huggingface_hub.utils.validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(f"{missing} (expected {EXPECTED})") from None
    try:
        return huggingface_hub.hf_hub_download(repo_id, "config.json", cache_dir=cache_dir)
    except (OSError, EntryNotFoundError) as err:  # huggingface_hub's HTTP and cache errors
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            why = "not in the cache, and HF_HUB_OFFLINE is set"
        elif isinstance(err, RepositoryNotFoundError):
            why = "no Hub model of that name (or it is private and no token was given)"
        elif isinstance(err, LocalEntryNotFoundError):
            why = "not in the cache, and the Hub could not be reached"
        elif isinstance(err, EntryNotFoundError):
            why = "the Hub model has no config.json"
        else:
            why = f"{type(err).__name__} asking the Hub"
        raise ValueError(f"{missing}, nor a Hub model it can read ({why}); expected {EXPECTED}") from None


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

    The rest of the card is kept byte for byte, its line endings (CRLF or LF) included. The card is written under a
    temporary name and moved into place: a failure leaves the old card whole.
    """
    path = Path(folder) / "README.md"
    if path.exists():
        with open(path, encoding="utf-8", newline="") as f:  # newline="": CRLF is read as it is, not turned into LF
            card = f.read()
    else:
        card = f"{CARD_METADATA}\n# {model_kind(folder)}\n\n"
    newline = "\r\n" if "\r\n" in card else "\n"
    updated = with_evaluation_row(card.replace("\r\n", "\n"), metrics).replace("\n", newline)
    with atomic_write(path, replace=True) as temporary:
        temporary.write_bytes(updated.encode("utf-8"))
    return path
