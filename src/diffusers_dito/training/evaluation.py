# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""What the evaluation scripts (`evaluate_dito.py`, `evaluate_generation.py`) share: their common flags, image folders,
image grids, the metrics' value range, metrics.json, the model card and `--push_to_hub`, and the re-launch under
`accelerate launch` behind `--num_processes`.

Models are loaded by `diffusers_dito.pipelines.loading`, as the `diffusers-dito` command line loads them.
"""

import argparse
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import torch
from huggingface_hub.errors import HfHubHTTPError

from diffusers_dito.hub import push_folder_to_hub
from diffusers_dito.pipelines.loading import update_model_card

from .arguments import positive_int


# ------------------------------------------------------------------------------------------------------- flags
def add_shared_arguments(parser: argparse.ArgumentParser, fid: str) -> argparse._ArgumentGroup:
    """`--num_processes`, then the group of metric weights with `--inception_weights` (for `fid`, "rFID" or "gFID")
    and `--dinov2_path`; returns the group, for a script's further weights."""
    parser.add_argument(
        "--num_processes",
        type=positive_int,
        default=None,
        help="Shard over N processes: re-launches this script with `accelerate launch` (CPU processes without a GPU).",
    )
    weights = parser.add_argument_group("weights of the metrics that need them (else skipped, with the reason)")
    weights.add_argument("--inception_weights", default=None, help=f"{fid}: torch-fidelity's Inception .pth file.")
    weights.add_argument("--dinov2_path", default=None, help="FD-DINOv2: a local transformers Dinov2Model folder.")
    return weights


# ------------------------------------------------------------------------------------------------------- images
def list_image_files(folder: str | os.PathLike, max_images: int | None = None) -> list[Path]:
    r"""
    Files under `folder` (recursively, hidden ones excluded) whose extension PIL knows, sorted by path; the first
    `max_images` of them when given. Whether each can be decoded is only found out when it is loaded.

    Examples:
        ```py
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.png", "a.jpg", "notes.txt"):
        ...     _ = (folder / name).write_bytes(b"")
        >>> [path.name for path in list_image_files(folder)]
        ['a.jpg', 'b.png']

        ```
    """
    folder = Path(folder)
    extensions = {extension.lower() for extension in PIL.Image.registered_extensions()}
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in extensions
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    return files[:max_images] if max_images is not None else files


def load_image(path: str | os.PathLike, resolution: int | None = None) -> PIL.Image.Image | None:
    r"""
    An image file as RGB, or `None` when it cannot be decoded. With `resolution`, the largest centred square is
    cropped and resized to `resolution`² (bicubic); otherwise the size is kept.

    Examples:
        ```py
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> PIL.Image.new("L", (40, 30)).save(folder / "wide.png")
        >>> _ = (folder / "broken.png").write_bytes(b"not a png")
        >>> load_image(folder / "wide.png", resolution=16).size, load_image(folder / "broken.png")
        ((16, 16), None)

        ```
    """
    try:
        with PIL.Image.open(path) as image:
            image = image.convert("RGB")  # decodes the whole file: truncated images fail here, not later
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
        return None
    if resolution is not None:
        image = PIL.ImageOps.fit(image, (resolution, resolution), method=PIL.Image.Resampling.BICUBIC)
    return image


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, 3, H, W)` -> float in [-1, 1], the range of `diffusers_dito.metrics`."""
    return images.float() / 127.5 - 1


def load_images(files: list[str | os.PathLike]) -> torch.Tensor:
    """Image files of one size as one float batch `(N, 3, H, W)` in [-1, 1] (the benchmark scripts' held-out crops)."""
    return to_float(torch.stack([torch.from_numpy(np.array(load_image(f))).permute(2, 0, 1) for f in files]))


# ------------------------------------------------------------------------------------------------------- grids
def image_grid(rows: list[list[np.ndarray]]) -> PIL.Image.Image:
    r"""
    Rows of `(H, W, 3)` uint8 images on one black canvas. Every cell is as large as the largest image, and each
    image sits in the top-left corner of its cell.

    Examples:
        ```py
        >>> tile = np.zeros((8, 10, 3), dtype=np.uint8)
        >>> image_grid([[tile, tile, tile], [tile]]).size  # (width, height)
        (30, 16)

        ```
    """
    cell_h = max(image.shape[0] for row in rows for image in row)
    cell_w = max(image.shape[1] for row in rows for image in row)
    canvas = np.zeros((len(rows) * cell_h, max(len(row) for row in rows) * cell_w, 3), dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas[r * cell_h : r * cell_h + image.shape[0], c * cell_w : c * cell_w + image.shape[1]] = image
    return PIL.Image.fromarray(canvas)


def labelled_grid(rows: list[list[np.ndarray]], labels: list[str], label_height: int = 26) -> PIL.Image.Image:
    r"""
    `image_grid(rows)` under a header that names each column (PIL's built-in font, white on black; two lines fit in
    `label_height`). A line wider than its column is broken to fit, and the header grows to hold it, so a long
    folder name is shown whole rather than cut at the image's edge.

    Examples:
        ```py
        >>> tile = np.zeros((8, 10, 3), dtype=np.uint8)
        >>> labelled_grid([[tile, tile]], ["a", "b"]).size
        (20, 34)
        >>> labelled_grid([[tile, tile]], ["a", "a much longer name"]).height > 34
        True

        ```
    """
    grid = image_grid(rows)
    cell_w = grid.width // max(len(row) for row in rows)
    measure = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
    texts = ["\n".join(fit_line(line, cell_w - 4, measure) for line in label.split("\n")) for label in labels]
    pitch = measure.multiline_textbbox((0, 0), "A\nA")[3] - measure.textbbox((0, 0), "A")[3]  # one more line
    label_height += max(0, max(text.count("\n") + 1 for text in texts) - 2) * pitch  # beyond the two that fit
    canvas = PIL.Image.new("RGB", (grid.width, grid.height + label_height))
    canvas.paste(grid, (0, label_height))
    draw = PIL.ImageDraw.Draw(canvas)
    for c, text in enumerate(texts):
        draw.text((c * cell_w + 2, 1), text, fill=(255, 255, 255))
    return canvas


def fit_line(line: str, width: int, draw: PIL.ImageDraw.ImageDraw) -> str:
    """`line` broken (at any character) into lines no wider than `width` pixels in `draw`'s font."""
    pieces = [""]
    for char in line:
        if pieces[-1] and draw.textlength(pieces[-1] + char) > width:
            pieces.append("")
        pieces[-1] += char
    return "\n".join(pieces)


# ------------------------------------------------------------------------------------------------------- metrics.json
def finite_or_none(value: float | None) -> float | None:
    """JSON has no inf or NaN (PSNR of a perfect reconstruction is inf): they are written as null."""
    return value if value is not None and math.isfinite(value) else None


def mean(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (a metric skipped for some images); None when there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def write_json(path: Path, data: dict) -> None:
    r"""
    Write `data` as indented JSON, with every non-finite float (at any depth) as null.

    Examples:
        ```py
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "metrics.json"
        >>> write_json(path, {"psnr": float("inf"), "sweep": [{"swd": 0.5}]})
        >>> json.loads(path.read_text())
        {'psnr': None, 'sweep': [{'swd': 0.5}]}

        ```
    """

    def clean(value):
        if isinstance(value, float):
            return finite_or_none(value)
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    path.write_text(json.dumps(clean(data), indent=2) + "\n")


# ------------------------------------------------------------------------------------------------------- model card
def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """`--update_model_card`, then `--push_to_hub`, `--hub_model_id` and `--hub_token` as diffusers' example scripts
    name them."""
    group = parser.add_argument_group("model card and Hub")
    group.add_argument(
        "--update_model_card",
        action="store_true",
        help="Write the metrics into the model folder's README.md (done anyway when --output_dir is in that folder).",
    )
    group.add_argument(
        "--push_to_hub", action="store_true", help="Then upload the model folder, card included, to the Hub."
    )
    group.add_argument("--hub_model_id", default=None, help="The repository (default: the model folder's name).")
    group.add_argument("--hub_token", default=None, help="A Hub token (default: the one of `hf auth login`).")


def check_hub_arguments(args: argparse.Namespace) -> str | None:
    """Why `--push_to_hub` cannot work, or None: checked before a long evaluation, not after it. Offline mode, no
    token, a Hub that cannot be reached and a token the Hub refuses are each found by asking who the token is."""
    if not args.push_to_hub:
        return None
    if huggingface_hub.is_offline_mode():
        return "--push_to_hub needs the network, but HF_HUB_OFFLINE is set: unset it, or leave out --push_to_hub"
    token = args.hub_token or huggingface_hub.get_token()
    if token is None:
        return "--push_to_hub needs a Hub token: run `hf auth login`, or pass --hub_token"
    endpoint = huggingface_hub.constants.ENDPOINT
    try:
        huggingface_hub.HfApi(endpoint=endpoint).whoami(token=token)
    except HfHubHTTPError as err:  # the Hub answered
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            return f"--push_to_hub: the Hub at {endpoint} refused the token: run `hf auth login`, or pass --hub_token"
        return f"--push_to_hub: the Hub at {endpoint} answered HTTP {status}; try again later"
    except Exception as err:  # the HTTP client's own connection errors, which huggingface_hub does not wrap
        return (
            f"--push_to_hub: cannot reach the Hub at {endpoint} ({type(err).__name__}: {err}); check the network, "
            "or leave out --push_to_hub"
        )
    return None


def publish_metrics(args: argparse.Namespace, output_dir: Path, metrics: dict) -> None:
    """
    Writes `metrics` into the model card of the evaluated folder `args.model` when metrics.json lies in that folder
    (`output_dir` is the folder or inside it: the numbers then travel with it), or with `--update_model_card` or
    `--push_to_hub`; then uploads the folder with `--push_to_hub`. A failed upload stops with a one-line message (the
    metrics are already written).
    """
    folder, output_dir = Path(args.model).resolve(), Path(output_dir).resolve()
    if args.update_model_card or args.push_to_hub or output_dir == folder or folder in output_dir.parents:
        update_model_card(folder, metrics)
    if args.push_to_hub:
        try:
            push_folder_to_hub(folder, args.hub_model_id or folder.name, token=args.hub_token)
        except Exception as err:  # huggingface_hub's HTTP, offline and repo-name errors, and its client's own
            raise SystemExit(f"error: could not push {folder} to the Hub: {err}") from None


# ------------------------------------------------------------------------------------------------------- launch
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_num_processes(num_processes: int | None) -> str | None:
    """Why `--num_processes` conflicts with the launcher this process runs under, or None."""
    world_size = os.environ.get("WORLD_SIZE")  # set by accelerate launch (several processes) and torchrun
    if num_processes is not None and world_size is not None and int(world_size) != num_processes:
        return f"--num_processes {num_processes}, but this process was launched as one of {world_size}"
    return None


def relaunch_with_accelerate(num_processes: int | None, script: str, argv: list[str]) -> int | None:
    """
    Re-run `script argv` under `accelerate launch` with `num_processes` processes, unless this process already runs
    under a launcher or one process is asked for. Without a GPU the processes run on CPU (`ACCELERATE_USE_CPU=1`
    with `--multi_gpu`, a gloo process group: `--cpu --num_processes N` would silently start one process).

    Returns:
        The launched command's exit code, or `None` when this process should do the work itself.
    """
    if num_processes is None or num_processes == 1 or "WORLD_SIZE" in os.environ:
        return None
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        script, *argv,
    ]  # fmt: skip
    return subprocess.call(command, env=env)
