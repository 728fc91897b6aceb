"""Safetensors-only loading: pickle weight files can run arbitrary code, so they are refused unless asked for."""

import json
import os
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")


def read_model_index(path: Path) -> dict:
    """A pipeline folder's `model_index.json` as a dict, or a `ValueError` that names the file and what is wrong."""
    try:
        index = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file ({err.__class__.__name__}: {err}).") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} must hold a JSON object naming the pipeline's components, got {index!r:.60}.")
    return index


def _pickle_only_files(folder: Path) -> list[Path]:
    """Pickle weight files that `from_pretrained` would load from `folder` because no safetensors file is there.

    A pipeline folder is scanned in the component subfolders its `model_index.json` names, so training state that
    lives beside them (`checkpoint-N/optimizer.bin`, ...) is not mistaken for weights.
    """
    if not folder.is_dir():
        return []
    directories = [folder]
    if (folder / "model_index.json").is_file():
        index = read_model_index(folder / "model_index.json")
        directories = [folder / name for name, entry in index.items() if isinstance(entry, list)]
        directories = [d for d in directories if d.is_dir()]
    found = []
    for directory in directories:
        files = [p for p in directory.iterdir() if p.is_file()]
        if any(p.suffix == ".safetensors" for p in files):
            continue
        found += [p for p in files if p.suffix in PICKLE_SUFFIXES]
    return found


class SafetensorsOnlyMixin:
    """
    Makes `from_pretrained` load safetensors only, by defaulting diffusers' `use_safetensors` to `True`.

    A folder that holds only pickle weights (`.bin`, `.pth`, `.ckpt`, ...) raises a `ValueError` naming the explicit
    opt-in, `use_safetensors=False`, which restores diffusers' own behaviour for files the user trusts.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        if kwargs.get("use_safetensors") is None:
            folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
            pickles = _pickle_only_files(folder)
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
