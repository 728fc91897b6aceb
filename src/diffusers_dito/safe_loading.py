"""Safetensors-only loading: pickle weight files can run arbitrary code, so they are refused unless asked for."""

import json
import os
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")


def _pickle_only_files(folder: Path) -> list[Path]:
    """Pickle weight files that `from_pretrained` would load from `folder` because no safetensors file is there.

    A pipeline folder is scanned in the component subfolders its `model_index.json` names, so training state that
    lives beside them (`checkpoint-N/optimizer.bin`, ...) is not mistaken for weights.
    """
    if not folder.is_dir():
        return []
    directories = [folder]
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
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
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
