# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Saved model folders for sharing: the code that diffusers' `AutoModel` runs, and pushing a folder to the Hub.

diffusers loads a model class that lives outside diffusers as remote code: `config.json` carries an `auto_map`
(written once the class is registered with `register_for_auto_class("AutoModel")`) and
`AutoModel.from_pretrained(folder, trust_remote_code=True)` imports the module it names from the folder itself.
diffusers writes the `auto_map` but not the module, so `RemoteCodeMixin.save_pretrained` copies the model's module,
with the modules of this package it imports, into every saved model folder, as transformers' `custom_object_save`
does for its remote-code models.

Why a copy and not a one-line re-export of the installed class (which is what a saved pipeline's `pipeline.py` is):
a folder or Hub repository that carries its own code also loads where `diffusers_dito` is not installed, which is
what remote code is for. The copy is generated from the running source at every save and never edited by hand. It
gains a first comment line naming its source, and its package-relative imports become folder-relative
(`..safe_loading` becomes `.safe_loading`), because diffusers imports the code files of a folder as one flat package.
"""

import ast
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

from huggingface_hub import create_repo, upload_folder

AUTO_CLASS = "AutoModel"
# A pipeline folder's model_index.json holds one `auto_map` for all of its subfolders, and diffusers' AutoModel reads
# that one, not the subfolder's config.json. Each model subfolder of a pipeline therefore gets a module of this name
# that gives its own class this name (`auto_model_alias`).
ALIAS_MODULE = "dito_auto_model"
ALIAS_CLASS = "DiToAutoModel"
# What `save_pretrained(..., push_to_hub=True, **kwargs)` passes on to the Hub, as in diffusers.
HUB_KWARGS = ("repo_id", "token", "private", "create_pr", "commit_message")

COPY_HEADER = "# Folder-relative copy of "
_RELATIVE_FROM = re.compile(r"from\s+\.+[\w.]*\s+import")


def _flat_name(module) -> str:
    """A module's name in a saved folder, whose code files diffusers imports as one flat package."""
    return module.__name__.rsplit(".", 1)[-1]


def _relative_imports(module) -> list[ast.ImportFrom]:
    """The `from .x import ...` statements of a module, at any depth (imports inside functions too)."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    return [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]


def _imported_module(module, node: ast.ImportFrom):
    """The module a relative import of `module` names; it must be a module of its own, not a package."""
    name = importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__)
    target = importlib.import_module(name)
    if node.module is None or hasattr(target, "__path__"):
        raise ValueError(f"{module.__name__} imports from the package {name}: import from its module instead.")
    return target


def code_bundle(cls: type) -> dict[str, str]:
    r"""
    The code files that make `cls` importable from a folder of its own: its module and, recursively, the modules it
    imports relatively, as `{file name: source}`, with those imports made folder-relative.

    Raises:
        `ValueError`: Two of the modules share a file name, or one is imported only indirectly: for a local folder,
            diffusers copies only the files that the `auto_map` module imports itself.

    Examples:
        ```py
        >>> from diffusers_dito import DiToDiTTransformer2DModel
        >>> from diffusers_dito.hub import code_bundle

        >>> files = code_bundle(DiToDiTTransformer2DModel)
        >>> sorted(files)
        ['dit_transformer.py', 'hub.py', 'safe_loading.py']
        >>> "from .safe_loading import SafetensorsOnlyMixin" in files["dit_transformer.py"]
        True

        ```
    """
    entry = sys.modules[cls.__module__]
    files, origins, pending = {}, {}, [entry]
    while pending:
        module = pending.pop()
        flat = _flat_name(module)
        if origins.setdefault(flat, module.__name__) != module.__name__:
            raise ValueError(f"{module.__name__} and {origins[flat]} would both be {flat}.py in a saved folder.")
        if f"{flat}.py" in files:
            continue
        lines = Path(module.__file__).read_text(encoding="utf-8").splitlines(keepends=True)
        for node in _relative_imports(module):
            target = _imported_module(module, node)
            lines[node.lineno - 1] = _RELATIVE_FROM.sub(
                f"from .{_flat_name(target)} import", lines[node.lineno - 1], 1
            )
            pending.append(target)
        # A model loaded by AutoModel and saved again keeps the header of its first copy.
        if not lines or not lines[0].startswith(COPY_HEADER):
            lines.insert(0, f"{COPY_HEADER}{module.__name__} by diffusers-dito's save_pretrained.\n")
        files[f"{flat}.py"] = "".join(lines)
    direct = {f"{_flat_name(_imported_module(entry, node))}.py" for node in _relative_imports(entry)}
    indirect = sorted(set(files) - direct - {f"{_flat_name(entry)}.py"})
    if indirect:
        raise ValueError(f"{entry.__name__} must import {', '.join(indirect)} itself for AutoModel to load it.")
    return files


def auto_model_alias(cls: type) -> str:
    """The source of the `ALIAS_MODULE` file of a pipeline's model subfolder: `cls` under the name `ALIAS_CLASS`,
    after the imports of `cls`'s own module (diffusers copies only the files that this module imports itself)."""
    entry = sys.modules[cls.__module__]
    lines = [
        "# Written by diffusers-dito's save_pretrained. AutoModel.from_pretrained(pipeline_folder, subfolder=...,\n",
        "# trust_remote_code=True) reads model_index.json's `auto_map`, one module and class for every subfolder:\n",
        "# this is this subfolder's class.\n",
    ]
    for node in _relative_imports(entry):
        names = ", ".join(alias.name for alias in node.names)
        lines.append(f"from .{_flat_name(_imported_module(entry, node))} import {names}  # noqa: F401\n")
    lines.append(f"from .{_flat_name(entry)} import {cls.__name__} as {ALIAS_CLASS}  # noqa: F401\n")
    return "".join(lines)


def pop_hub_kwargs(kwargs: dict, save_directory: str | os.PathLike) -> dict:
    """Takes the Hub arguments of `save_pretrained(..., push_to_hub=True, **kwargs)` out of `kwargs`. As in
    diffusers, the repository defaults to the folder's name in the user's namespace."""
    hub_kwargs = {name: kwargs.pop(name) for name in HUB_KWARGS if name in kwargs}
    hub_kwargs.setdefault("repo_id", Path(save_directory).name)
    return hub_kwargs


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    path_in_repo: str | None = None,
):
    r"""
    Uploads a saved folder as it is to a Hub model repository, created if missing, with huggingface_hub's own
    `create_repo` and `upload_folder` (as diffusers' `PushToHubMixin` does, without replacing the model card).

    Args:
        folder (`str` or `os.PathLike`): The saved folder.
        repo_id (`str`): The repository, `"name"` (in the user's namespace) or `"organisation/name"`.
        token (`str`, *optional*): A Hub token; defaults to the one saved by `hf auth login`.
        private (`bool`, *optional*): Whether a newly created repository is private.
        create_pr (`bool`, *optional*, defaults to `False`): Open a pull request instead of committing.
        commit_message (`str`, *optional*): Defaults to `"Upload <folder name>"`.
        path_in_repo (`str`, *optional*): Where in the repository the files go (default: its root).

    Returns:
        `huggingface_hub.CommitInfo`: The commit, whose string is its URL.

    Raises:
        `huggingface_hub.errors.OfflineModeIsEnabled`: `HF_HUB_OFFLINE` is set; nothing is uploaded.
    """
    repo_id = create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
    return upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        path_in_repo=path_in_repo,
        token=token,
        commit_message=commit_message or f"Upload {Path(folder).resolve().name}",
        create_pr=create_pr,
    )


class AutoMapMixin:
    """Loads configs that carry an `auto_map` without diffusers' warning that it is an unexpected argument: only
    `AutoModel` reads it."""

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        config_dict = {key: value for key, value in config_dict.items() if key != "auto_map"}
        return super().extract_init_dict(config_dict, **kwargs)


class RemoteCodeMixin(AutoMapMixin):
    r"""
    Mixed into the DiTo models, before `ModelMixin`. `save_pretrained` writes an `auto_map` into `config.json` and
    the model's code (`code_bundle`) into the folder, so that
    `diffusers.AutoModel.from_pretrained(folder, trust_remote_code=True)` returns this class, also where
    `diffusers_dito` is not installed. With `push_to_hub=True` the folder is uploaded once it is complete (diffusers'
    own `save_pretrained` would upload it before the code is written).
    """

    # What `ConfigMixin.register_for_auto_class("AutoModel")` sets: diffusers' `to_json_string` then writes
    # `"auto_map": {"AutoModel": "<module>.<class>"}` into config.json.
    _auto_class = AUTO_CLASS

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function=None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        push_to_hub: bool = False,
        **kwargs,
    ):
        # `ModelMixin.save_pretrained`'s arguments, spelled out: a pipeline's `save_pretrained` passes
        # `safe_serialization`, `variant` and `max_shard_size` on only to a method whose signature names them.
        hub_kwargs = pop_hub_kwargs(kwargs, save_directory)
        super().save_pretrained(
            save_directory,
            is_main_process=is_main_process,
            save_function=save_function,
            safe_serialization=safe_serialization,
            variant=variant,
            max_shard_size=max_shard_size,
            **kwargs,
        )
        if not is_main_process:
            return
        for name, source in code_bundle(type(self)).items():
            (Path(save_directory) / name).write_text(source, encoding="utf-8")
        if push_to_hub:
            push_folder_to_hub(save_directory, **hub_kwargs)
