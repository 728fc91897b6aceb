"""Safetensors-only loading: pickle weight files can run arbitrary code, so they are refused unless asked for."""

import json
import os
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")


def read_json_object(path: Path) -> dict:
    """A saved folder's `model_index.json` or `config.json` as a dict, or a `ValueError` that names the file and what
    is wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file ({err.__class__.__name__}: {err}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {data!r:.60}.")
    return data


def _weights_variant(name: str) -> str | None:
    r"""
    The variant a diffusers weights file is saved as: the name's second dotted part, up to a shard number.

    Examples:
        ```py
        >>> names = ["diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.safetensors"]
        >>> names += ["diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "model-00001-of-00002.bin"]
        >>> [_weights_variant(name) for name in names]
        [None, 'fp16', 'fp16', None]

        ```
    """
    parts = name.split(".")
    return parts[1].split("-")[0] if len(parts) > 2 else None


def _weight_files(directory: Path, variant: str | None) -> list[Path]:
    """The weight files in `directory` that `from_pretrained(..., variant=variant)` chooses among."""
    suffixes = (".safetensors", *PICKLE_SUFFIXES)
    return [
        p for p in directory.iterdir() if p.is_file() and p.suffix in suffixes and _weights_variant(p.name) == variant
    ]


def _pickle_only_files(folder: Path, variant: str | None = None) -> list[Path]:
    """Pickle weight files that `from_pretrained(folder, variant=variant)` would load because no safetensors file of
    that variant is there.

    A pipeline folder is scanned in the component subfolders its `model_index.json` names, so training state that
    lives beside them (`checkpoint-N/optimizer.bin`, ...) is not mistaken for weights. As in diffusers, a component
    without files of the requested variant loads its plain weights, and a variant that no component has is left
    for diffusers to refuse; a model folder without it is left for diffusers' `OSError` naming the missing file.
    """
    if not folder.is_dir():
        return []
    if (folder / "model_index.json").is_file():
        index = read_json_object(folder / "model_index.json")
        directories = [folder / name for name, entry in index.items() if isinstance(entry, list)]
        directories = [d for d in directories if d.is_dir()]
        if variant is not None and not any(_weight_files(d, variant) for d in directories):
            return []
        candidates = [_weight_files(d, variant) or _weight_files(d, None) for d in directories]
    else:
        candidates = [_weight_files(folder, variant)]
    found = []
    for files in candidates:
        if not any(p.suffix == ".safetensors" for p in files):
            found += [p for p in files if p.suffix in PICKLE_SUFFIXES]
    return found


class SafetensorsOnlyMixin:
    """
    Makes `from_pretrained` load safetensors only, by defaulting diffusers' `use_safetensors` to `True`.

    A folder that holds only pickle weights (`.bin`, `.pth`, `.ckpt`, ...) of the requested `variant` raises a
    `ValueError` naming the explicit opt-in, `use_safetensors=False`, which restores diffusers' own behaviour for files
    the user trusts. Everything else is diffusers' own loading: a missing variant raises diffusers' `OSError` naming
    the missing file, or for a pipeline none of whose components has the variant, diffusers' `ValueError`.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        if kwargs.get("use_safetensors") is None:
            folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
            pickles = _pickle_only_files(folder, kwargs.get("variant"))
            if pickles:
                names = ", ".join(str(p.relative_to(folder)) for p in pickles[:3])
                raise ValueError(
                    f"{cls.__name__} loads safetensors weights only, but {folder} holds pickle weights ({names}), "
                    "which can run arbitrary code when loaded. If you trust them, opt in with "
                    f"`{cls.__name__}.from_pretrained(..., use_safetensors=False)`, or convert them to safetensors."
                )
            kwargs["use_safetensors"] = True
        from diffusers import ModelMixin

        if not issubclass(cls, ModelMixin):  # a pipeline: its components check their own weights
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        wants_info = kwargs.pop("output_loading_info", False)
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        except (NotImplementedError, RuntimeError, ValueError) as err:
            # diffusers builds the model from config.json on the meta device, then fills it from the weights file:
            # layers the file lacks stay on `meta` ("Cannot copy out of meta tensor"), and differently sized ones
            # give "expected shape ... but got". Both mean the weights were saved with another config.
            message = str(err)
            if not any(key in message for key in ("meta tensor", "expected shape", "size mismatch", "Missing key")):
                raise
            raise ValueError(
                f"The weights in {folder} do not match its config.json (they were saved from a model with another "
                f"config): {message.strip().splitlines()[0][:300]}"
            ) from err
        # diffusers only warns about weights the file lacks (they stay randomly initialised) or has in excess: a
        # model that decodes noise without an error. Refuse it.
        missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
        if missing or unexpected:
            listed = ", ".join((missing + unexpected)[:3])
            raise ValueError(
                f"The weights in {folder} do not match its config.json: {len(missing)} tensors of the model are not "
                f"in the weights file and {len(unexpected)} in the file are not in the model (e.g. {listed}). They "
                "were saved from a model with another config."
            )
        return (model, info) if wants_info else model
