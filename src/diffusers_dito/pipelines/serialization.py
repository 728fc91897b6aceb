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

Each model subfolder also holds the model's own code and an `auto_map` (`diffusers_dito.hub`), for
`diffusers.AutoModel.from_pretrained(dir, subfolder="vae", trust_remote_code=True)`. diffusers' AutoModel reads the
`auto_map` of `model_index.json` when there is one, not the subfolder's `config.json`, and that `auto_map` names one
module and class for every subfolder: so each model subfolder also gets a module (`hub.ALIAS_MODULE`) that gives its
own class that one name. Without `trust_remote_code`, AutoModel then refuses the folder, as it does any folder with
code, and says to pass it.

The model card (`README.md`) has an evaluation section, which `with_evaluation_row` fills from the `metrics.json` of
`training/evaluate_dito.py` (`loading.update_model_card` does it in a saved folder); `push_to_hub` uploads the folder
as saved, card included. What a saved folder holds, and loading it, is `diffusers_dito.pipelines.loading`.
"""

import json
import os
import re
import tempfile
from pathlib import Path

from ..hub import (
    ALIAS_CLASS,
    ALIAS_MODULE,
    AUTO_CLASS,
    AutoMapMixin,
    RemoteCodeMixin,
    auto_model_alias,
    pop_hub_kwargs,
    push_folder_to_hub,
)
from ..safe_loading import SafetensorsOnlyMixin

SHIM_MODULE = "pipeline"
CARD_METADATA = "---\nlibrary_name: diffusers\ntags:\n- diffusers-dito\n- dito\n- image-tokenizer\n---\n"
# The evaluation section lies between these markers, so that `with_evaluation_row` can find its table.
EVALUATION_START, EVALUATION_END = "<!-- diffusers-dito evaluation -->", "<!-- /diffusers-dito evaluation -->"
EVALUATION_COLUMNS = ("data", "steps", "PSNR (dB)", "SSIM", "SWD", "high-frequency ratio")
EVALUATION_INTRO = (
    "Reconstructions of the DiTo autoencoder, from the `metrics.json` of `training/evaluate_dito.py`: PSNR and SSIM "
    "(higher is better), sliced Wasserstein distance (lower is better), and the high-frequency energy of the "
    "reconstructions over that of the originals (1 keeps their detail)."
)
NOT_EVALUATED = (
    "Not evaluated yet: `python training/evaluate_dito.py --model <this folder> --data_dir <images> "
    "--update_model_card` fills this in."
)
COMPONENTS_HEADING = re.compile(r"^## Components[ \t]*$", re.MULTILINE)  # a heading line, not the words in a sentence
# Loading with `trust_remote_code=True` imports the folder's Python files: say so where the card suggests it.
REMOTE_CODE_ADVICE = (
    "`trust_remote_code=True` imports and runs the Python files of this folder (`pipeline.py` and the model code "
    "in each model subfolder) with your rights, as any Python file you run would. Pass it only for a folder you "
    "saved yourself, or one from a publisher you trust pinned to a commit you have read "
    '(`revision="<commit hash>"`). Otherwise install diffusers-dito and load with the class\'s own '
    "`from_pretrained`, as on the first line above: it reads the weights (safetensors only) and the configs, and runs "
    "no code from the folder.\n"
)


class DiToPipelineLoadingMixin(SafetensorsOnlyMixin, AutoMapMixin):
    """Mixed into DiTo pipelines: safetensors-only loading; `save_pretrained` writes the shim, the `auto_map` of the
    model subfolders and a model card, then pushes the complete folder with `push_to_hub=True`."""

    @classmethod
    def load_config(cls, *args, **kwargs):
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        class_name = config.get("_class_name")
        # Our own shim names this very class: read it as the plain name, so no code from the folder is executed.
        if isinstance(class_name, (list, tuple)) and list(class_name) == [SHIM_MODULE, cls.__name__]:
            config["_class_name"] = cls.__name__
        return loaded

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **kwargs):
        hub_kwargs = pop_hub_kwargs(kwargs, save_directory)  # diffusers would push before the shim is written
        super().save_pretrained(save_directory, **kwargs)
        save_directory = Path(save_directory)
        index_path = save_directory / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [SHIM_MODULE, type(self).__name__]
        models = {name: type(c) for name, c in self.components.items() if isinstance(c, RemoteCodeMixin)}
        for name, cls in models.items():
            (save_directory / name / f"{ALIAS_MODULE}.py").write_text(auto_model_alias(cls), encoding="utf-8")
        if models:
            index["auto_map"] = {AUTO_CLASS: f"{ALIAS_MODULE}.{ALIAS_CLASS}"}
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
        if push_to_hub:
            push_folder_to_hub(save_directory, **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
    ):
        """diffusers' `PushToHubMixin.push_to_hub`, except that the folder is uploaded as `save_pretrained` writes it,
        with this pipeline's model card (diffusers replaces the card with a generic one)."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            message = commit_message or f"Upload {type(self).__name__}"
            return push_folder_to_hub(folder, repo_id, token, private, create_pr, message, path_in_repo=subfolder)

    def model_card(self) -> str:
        """A short model card: what the pipeline is, its configs, the training data when known, and usage."""
        name = type(self).__name__
        sections = [
            CARD_METADATA,
            f"# {name}\n",
            "A DiTo pipeline (Diffusion Autoencoders are Scalable Image Tokenizers, arXiv 2501.18593), saved by "
            "diffusers-dito.\n",
            f"Training data: {getattr(self, 'training_data', None) or 'not recorded'}.\n",
            *([f"Distilled from: {self.distilled_from}.\n"] if getattr(self, "distilled_from", None) else []),
            "## Usage\n",
            "```python\n"
            f"from diffusers_dito import {name}  # pip install diffusers-dito\n\n"
            f'pipe = {name}.from_pretrained("path/to/this/folder")  # runs no code from the folder\n'
            "# For a folder you trust only (see below): without importing diffusers_dito first,\n"
            "# from diffusers import DiffusionPipeline\n"
            '# pipe = DiffusionPipeline.from_pretrained("path/to/this/folder", trust_remote_code=True)\n'
            "# or one model, also where diffusers_dito is not installed:\n"
            "# from diffusers import AutoModel\n"
            '# vae = AutoModel.from_pretrained("path/to/this/folder", subfolder="vae", trust_remote_code=True)\n'
            "```\n",
            REMOTE_CODE_ADVICE,
            evaluation_section([]),
            "## Components\n",
        ]
        for component_name, component in self.components.items():
            config = getattr(component, "config", None)
            if config is None:
                continue
            body = json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, indent=2, default=str)
            sections.append(f"### `{component_name}`: `{type(component).__name__}`\n\n```json\n{body}\n```\n")
        return "\n".join(sections)


def evaluation_row(metrics: dict) -> list[str]:
    r"""
    The evaluation-table row of a `metrics.json` written by `training/evaluate_dito.py`: data, steps, PSNR, SSIM, SWD
    and high-frequency energy ratio, `n/a` for a metric that it skipped.

    Examples:
        ```py
        >>> from diffusers_dito.pipelines.serialization import evaluation_row

        >>> metrics = {"data_dir": "data/val", "num_images": 500, "resolution": 256, "steps": 50, "sampler": "euler"}
        >>> evaluation_row({**metrics, "psnr": 31.234, "ssim": 0.91, "swd": None, "hf_energy_ratio": 0.97})
        ['`val` (500 images, 256 px)', '50 euler', '31.23', '0.9100', 'n/a', '0.970']

        ```
    """
    size = f", {metrics['resolution']} px" if metrics.get("resolution") else ""
    data = f"`{Path(metrics['data_dir']).name}` ({metrics['num_images']} images{size})".replace("|", "\\|")
    values = [metrics.get(name) for name in ("psnr", "ssim", "swd", "hf_energy_ratio")]
    cells = [
        "n/a" if value is None else f"{value:{spec}}" for value, spec in zip(values, (".2f", ".4f", ".4f", ".3f"))
    ]
    return [data, f"{metrics['steps']} {metrics['sampler']}", *cells]


def _table_lines(rows: list[list[str]]) -> list[str]:
    table = ["| " + " | ".join(EVALUATION_COLUMNS) + " |", "|" + "---|" * len(EVALUATION_COLUMNS)]
    return table + ["| " + " | ".join(row) + " |" for row in rows]


def evaluation_section(rows: list[list[str]]) -> str:
    """The model card's evaluation section, between its markers: a table of `rows`, or how to fill it in."""
    body = "\n".join([EVALUATION_INTRO, "", *_table_lines(rows)]) if rows else NOT_EVALUATED
    return f"{EVALUATION_START}\n## Evaluation\n\n{body}\n{EVALUATION_END}\n"


def _table_rows(section: str) -> list[list[str]]:
    """The body rows of the evaluation table in `section`, split into cells at unescaped `|`."""
    rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]  # after the header and the `---` line


def _with_row(section: str, row: list[str]) -> str:
    """The evaluation section `section` (its markers included) with `row` in its table. Only the table, or the
    not-evaluated line, changes: anything else a user wrote between the markers is kept."""
    rows = _table_rows(section)
    keys = [old[:2] for old in rows]
    if row[:2] in keys:
        rows[keys.index(row[:2])] = row
    else:
        rows.append(row)
    lines = section.split("\n")
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    if table:
        lines[table[0] : table[-1] + 1] = _table_lines(rows)
    elif NOT_EVALUATED in lines:
        at = lines.index(NOT_EVALUATED)
        lines[at : at + 1] = [EVALUATION_INTRO, "", *_table_lines(rows)]
    else:
        end = next(i for i, line in enumerate(lines) if EVALUATION_END in line)
        lines[end:end] = [EVALUATION_INTRO, "", *_table_lines(rows), ""]
    return "\n".join(lines)


def with_evaluation_row(card: str, metrics: dict) -> str:
    """
    The model card `card` with the row of `metrics` (a `metrics.json` of `training/evaluate_dito.py`) in its
    evaluation table, in place of the row of the same data and steps: adding the same metrics twice changes nothing.
    A card without an evaluation section gets one before its `## Components` heading, or at its end. Text outside
    the table is kept as it is, also between the section's markers.
    """
    row = evaluation_row(metrics)
    start, end = card.find(EVALUATION_START), card.find(EVALUATION_END)
    if 0 <= start < end:
        end += len(EVALUATION_END)
        return card[:start] + _with_row(card[start:end], row) + card[end:]
    heading = COMPONENTS_HEADING.search(card)
    split = heading.start() if heading else len(card)
    before, after = card[:split], card[split:]
    if before and not before.endswith("\n\n"):
        before += "\n" if before.endswith("\n") else "\n\n"
    return before + evaluation_section([row]) + ("\n" + after if after else "")
