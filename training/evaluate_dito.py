#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Evaluate a DiTo autoencoder on a folder of images: reconstruction metrics, per-image scores, a comparison grid,
and PSNR, SWD and the high-frequency energy ratio against the number of decoder evaluations (NFE), for the Euler and
Heun samplers on one or more σ grids (`--sweep_shifts`).

Laid out like diffusers' example scripts (`parse_args()` + `main(args)`). The images are sharded over processes
with accelerate; the main process gathers the results and writes every file.

    python training/evaluate_dito.py --model dito-b --data_dir ./val --resolution 256 --output_dir eval-dito-b
    python training/evaluate_dito.py ... --num_processes 4     # re-launches itself under `accelerate launch`
    python training/evaluate_dito.py ... --sweep_shifts 1 2 3  # the curves on three σ grids

`benchmarks/choose_decode_defaults.py` reads the sweep of metrics.json and picks the cheapest decoding setting.

docs/evaluation.md describes the outputs and how to reproduce the curves. `evaluate_generation.py` imports the
image-folder, grid and launch helpers below.
"""

import argparse
import csv
import importlib.util
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.schedulers import SchedulerMixin
from tqdm.auto import tqdm

from diffusers_dito import AutoencoderDiTo, DiToPipeline
from diffusers_dito.metrics import (
    compute_metrics,
    high_frequency_energy_ratio,
    psnr,
    sliced_wasserstein_distance,
    ssim,
)
from diffusers_dito.scheduling import retrieve_flow_match_timesteps

logger = get_logger(__name__, log_level="INFO")

SAMPLERS = ("euler", "heun")
DEFAULT_SWEEP_STEPS = (1, 2, 4, 8, 16, 25, 50)
SSIM_MIN_SIZE = 11  # SSIM's Gaussian window
SWD_MIN_SIZE = 16  # SWD's coarsest pyramid level
SET_METRICS_MIN_SIZE = 32  # compute_metrics (LPIPS' smallest input)
DIFFERENT_SIZES = "the images differ in size; pass --resolution to compare them at one size"


# ------------------------------------------------------------------------------------------------------- helpers
def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def positive_float(value: str) -> float:
    r"""
    argparse type: a finite number > 0.

    Examples:
        ```py
        >>> positive_float("2.5"), positive_float("1")
        (2.5, 1.0)

        ```
    """
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return number


def model_kind(path: str | os.PathLike) -> str:
    r"""
    What a saved DiTo folder holds: `"DiToPipeline"`, `"DiToDiTPipeline"` or `"AutoencoderDiTo"`.

    Raises:
        `ValueError`: The folder is missing or holds something else; the message says what was found.

    Examples:
        ```py
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text('{"_class_name": "AutoencoderDiTo"}')
        >>> model_kind(folder)
        'AutoencoderDiTo'

        ```
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder (expected a saved DiTo pipeline or AutoencoderDiTo)")
    for name in ("model_index.json", "config.json"):
        if (path / name).is_file():
            try:
                class_name = json.loads((path / name).read_text()).get("_class_name")
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{path / name} is not readable JSON ({err})") from None
            class_name = class_name[-1] if isinstance(class_name, list) else class_name  # ["pipeline", "DiTo..."]
            if class_name in ("DiToPipeline", "DiToDiTPipeline", "AutoencoderDiTo"):
                return class_name
            raise ValueError(f"{path} holds a {class_name}, not a DiToPipeline, DiToDiTPipeline or AutoencoderDiTo")
    raise ValueError(f"{path} has no model_index.json or config.json (expected a saved DiTo model)")


def load_reconstruction_pipeline(path: str | os.PathLike) -> DiToPipeline:
    """A `DiToPipeline` from a DiToPipeline folder, from the VAE of a DiToDiTPipeline folder, or from a bare
    AutoencoderDiTo folder."""
    kind = model_kind(path)
    if kind == "DiToPipeline":
        return DiToPipeline.from_pretrained(path)
    subfolder = "vae" if kind == "DiToDiTPipeline" else None  # the transformer is not needed to reconstruct
    vae = AutoencoderDiTo.from_pretrained(path, subfolder=subfolder)
    return DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())


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
    `image_grid(rows)` under a header that names each column (PIL's built-in font, white on black; up to two lines).

    Examples:
        ```py
        >>> tile = np.zeros((8, 10, 3), dtype=np.uint8)
        >>> labelled_grid([[tile, tile]], ["a", "b"]).size
        (20, 34)

        ```
    """
    grid = image_grid(rows)
    canvas = PIL.Image.new("RGB", (grid.width, grid.height + label_height))
    canvas.paste(grid, (0, label_height))
    draw = PIL.ImageDraw.Draw(canvas)
    cell_w = grid.width // max(len(row) for row in rows)
    for c, label in enumerate(labels):
        draw.text((c * cell_w + 2, 1), label, fill=(255, 255, 255))
    return canvas


def error_image(reconstruction: np.ndarray, original: np.ndarray, gain: float) -> np.ndarray:
    """|reconstruction − original| of two `(H, W, 3)` uint8 images, averaged over channels, × `gain`, as grey."""
    error = np.abs(reconstruction.astype(np.int16) - original.astype(np.int16)).mean(axis=2) * gain  # (H, W)
    return np.repeat(np.clip(error.round(), 0, 255).astype(np.uint8)[..., None], 3, axis=2)  # (H, W, 3)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 `(B, 3, H, W)` -> float in [-1, 1], the range of `diffusers_dito.metrics`."""
    return images.float() / 127.5 - 1


def finite_or_none(value: float | None) -> float | None:
    """JSON has no inf or NaN (PSNR of a perfect reconstruction is inf): they are written as null."""
    return value if value is not None and math.isfinite(value) else None


def write_json(path: Path, data: dict) -> None:
    def clean(value):
        if isinstance(value, float):
            return finite_or_none(value)
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    path.write_text(json.dumps(clean(data), indent=2) + "\n")


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


def make_scheduler(sampler: str, shift: float = 1.0) -> SchedulerMixin:
    """A fresh flow-matching scheduler: `"euler"` (1st order) or `"heun"` (2nd order), on the σ grid of `shift`.

    `AutoencoderDiTo.decode` puts both on DiTo's uniform grid σ = 1, 1 − 1/N, …, 1/N, 0
    (`retrieve_flow_match_timesteps`), and both then map each σ to shift·σ / (1 + (shift − 1)·σ): shift = 1 keeps
    the paper's uniform grid, shift > 1 spends more of the steps at high noise. At one shift the curves compare
    the integrators, not the grids.
    """
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    if sampler == "heun":
        return FlowMatchHeunDiscreteScheduler(shift=shift)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def sampler_nfe(sampler: str, num_inference_steps: int) -> int:
    r"""
    Decoder network evaluations of one decode: one per scheduler timestep. Euler makes N; Heun makes 2N − 1 (two per
    step, but its last step, to σ = 0, is a plain Euler step).

    Examples:
        ```py
        >>> [sampler_nfe("euler", 4), sampler_nfe("heun", 4), sampler_nfe("heun", 1)]
        [4, 7, 1]

        ```
    """
    scheduler = make_scheduler(sampler)
    retrieve_flow_match_timesteps(scheduler, num_inference_steps, device="cpu")  # the grid `decode` integrates on
    return len(scheduler.timesteps)


# ------------------------------------------------------------------------------------------------------- args
def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate the reconstructions of a DiTo autoencoder.")
    parser.add_argument(
        "--model",
        required=True,
        help="A DiToPipeline folder, a DiToDiTPipeline folder (its vae) or an AutoencoderDiTo.",
    )
    parser.add_argument("--data_dir", required=True, help="A folder of images (searched recursively).")
    parser.add_argument("--output_dir", default="dito-eval", help="Where the results are written.")
    parser.add_argument(
        "--resolution", type=positive_int, default=None, help="Centre-crop and resize to this square (default: keep)."
    )
    parser.add_argument("--max_images", type=positive_int, default=None, help="Use the first N image files only.")
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="Decoding steps of the main reconstruction (default: the model's own `num_inference_steps`).",
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="euler", help="Sampler of the main reconstruction.")
    parser.add_argument(
        "--sweep_steps",
        type=positive_int,
        nargs="+",
        default=list(DEFAULT_SWEEP_STEPS),
        help="Step counts of the quality-vs-steps curves.",
    )
    parser.add_argument(
        "--sweep_shifts",
        type=positive_float,
        nargs="+",
        default=None,
        help="Scheduler shifts (σ grids) of the curves: 1 is the paper's uniform grid, > 1 spends more steps at high "
        "noise (default: the pipeline's own shift). The main reconstruction keeps the pipeline's shift.",
    )
    parser.add_argument("--samplers", choices=SAMPLERS, nargs="+", default=list(SAMPLERS), help="Curves to draw.")
    parser.add_argument("--skip_sweep", action="store_true", help="Only the main reconstruction; no curves.")
    parser.add_argument("--seed", type=int, default=0, help="Image i is decoded from noise seeded with seed + i.")
    parser.add_argument("--batch_size", type=positive_int, default=16, help="Images per decode, per process.")
    parser.add_argument("--grid_images", type=positive_int, default=8, help="Rows of the comparison grid.")
    parser.add_argument("--error_gain", type=float, default=4.0, help="Brightness gain of the error column.")
    parser.add_argument(
        "--grid_cell_size",
        type=positive_int,
        default=96,
        help="Smaller images are enlarged (nearest neighbour, by a whole factor) to at least this size in the grid.",
    )
    parser.add_argument(
        "--num_processes",
        type=positive_int,
        default=None,
        help="Shard over N processes: re-launches this script with `accelerate launch` (CPU processes without a GPU).",
    )
    weights = parser.add_argument_group("weights of the metrics that need them (else skipped, with the reason)")
    weights.add_argument("--inception_weights", default=None, help="rFID: torch-fidelity's Inception .pth file.")
    weights.add_argument("--dinov2_path", default=None, help="FD-DINOv2: a local transformers Dinov2Model folder.")
    weights.add_argument("--lpips_backbone", default=None, help="LPIPS: torchvision's alexnet-owt-7be5be79.pth.")

    args = parser.parse_args(input_args)
    try:
        model_kind(args.model)
    except ValueError as err:
        parser.error(f"--model: {err}")
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir} is not a folder.")
    if not list_image_files(args.data_dir, max_images=1):
        parser.error(f"--data_dir {args.data_dir} holds no image files.")
    if args.error_gain <= 0:
        parser.error(f"--error_gain must be > 0, got {args.error_gain}.")
    if not args.skip_sweep and importlib.util.find_spec("matplotlib") is None:
        parser.error("the sweep plot needs matplotlib: pip install matplotlib (or pass --skip_sweep).")
    conflict = check_num_processes(args.num_processes)
    if conflict:
        parser.error(conflict)
    args.sweep_steps = sorted(set(args.sweep_steps))
    args.samplers = list(dict.fromkeys(args.samplers))
    args.sweep_shifts = sorted(set(args.sweep_shifts)) if args.sweep_shifts is not None else None
    return args


# ------------------------------------------------------------------------------------------------------- evaluation
@dataclass
class EncodedBatch:
    indices: list[int]  # positions in the file list: they seed each image's noise
    originals: torch.Tensor  # (B, 3, H, W) uint8
    latents: torch.Tensor  # (B, C, h, w), as `DiToPipeline.encode` returns them


def encode_shard(pipe: DiToPipeline, images: dict[int, PIL.Image.Image], batch_size: int) -> list[EncodedBatch]:
    """Encode once; every decode (main and sweep) starts from these latents. Batches hold images of one size."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in images.items():
        by_size.setdefault(image.size, []).append(index)
    batches = []
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            pictures = [images[i] for i in chunk]
            originals = torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2)
            batches.append(EncodedBatch(chunk, originals.contiguous(), pipe.encode(pictures)))
    return batches


@torch.no_grad()
def reconstruct(pipe: DiToPipeline, batch: EncodedBatch, steps: int, seed: int) -> torch.Tensor:
    """Decode one batch with `pipe.scheduler`; returns uint8 `(B, 3, H, W)` on the CPU, as a PNG would store it."""
    height, width = batch.originals.shape[-2:]
    generators = [torch.Generator().manual_seed(seed + index) for index in batch.indices]  # same noise at every point
    images = pipe(
        latents=batch.latents,
        height=height,
        width=width,
        num_inference_steps=steps,
        generator=generators,
        output_type="pt",
    ).images  # (B, 3, H, W) in [0, 1]
    return (images * 255).round().to(torch.uint8).cpu()


def score(reconstruction: torch.Tensor, original: torch.Tensor) -> dict[str, float | None]:
    """PSNR and SSIM of one uint8 `(3, H, W)` pair (SSIM is None below its 11-px window)."""
    rec, orig = to_float(reconstruction[None]), to_float(original[None])
    ssim_value = ssim(rec, orig) if min(original.shape[-2:]) >= SSIM_MIN_SIZE else None
    return {"psnr": psnr(rec, orig), "ssim": ssim_value}


def decode_point(pipe, batches, scheduler, steps: int, seed: int, progress, keep_images: bool) -> list[dict]:
    """This process's share of one (sampler, shift, steps) point: a record per image, with its reconstruction if
    kept."""
    pipe.scheduler = scheduler
    records = []
    for batch in batches:
        reconstructions = reconstruct(pipe, batch, steps, seed)
        for index, reconstruction, original in zip(batch.indices, reconstructions, batch.originals):
            record = {"index": index, **score(reconstruction, original)}
            if keep_images:
                record["reconstruction"] = reconstruction.clone()  # a view would pickle the whole batch
            records.append(record)
        progress.update(len(batch.indices))
    return records


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise_point(
    records: list[dict], originals: torch.Tensor | None, sampler: str, shift: float, steps: int, seconds, seed
) -> dict:
    """One row of the sweep table. SWD when every image has one size of at least 16 px (`originals` is not None), the
    high-frequency energy ratio when they share one size; otherwise None."""
    row = {"sampler": sampler, "shift": shift, "steps": steps, "nfe": sampler_nfe(sampler, steps)}
    row["psnr"] = mean([r["psnr"] for r in records])
    row["ssim"] = mean([r["ssim"] for r in records])
    row["swd"] = row["hf_energy_ratio"] = None
    if originals is not None:
        reconstructions = to_float(torch.stack([r["reconstruction"] for r in records]))  # (N, 3, H, W)
        references = to_float(originals)
        if min(originals.shape[-2:]) >= SWD_MIN_SIZE:
            row["swd"] = sliced_wasserstein_distance(reconstructions, references, seed=seed).mean
        try:
            row["hf_energy_ratio"] = high_frequency_energy_ratio(reconstructions, references)
        except ValueError as err:  # e.g. flat originals: no energy above the cutoff, the ratio is undefined
            logger.warning(f"No high-frequency ratio for {sampler}, shift {shift:g}, {steps} steps: {err}")
    row["seconds"] = round(seconds, 3)
    return row


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    """PSNR, SWD and the high-frequency energy ratio against NFE (the cost of a decode), one line per (sampler,
    shift)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "psnr": "PSNR (dB), higher is better",
        "swd": "SWD, lower is better",
        "hf_energy_ratio": "high-frequency energy ratio, 1 = as sharp",
    }
    curves = dict.fromkeys((row["sampler"], row["shift"]) for row in rows)
    ticks = []
    for nfe in sorted({row["nfe"] for row in rows}):
        if not ticks or nfe >= 1.3 * ticks[-1]:  # Heun's 2N - 1 lands next to Euler's N: keep the labels apart
            ticks.append(nfe)
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4), constrained_layout=True)
    for ax, (metric, label) in zip(axes, panels.items()):
        for sampler, shift in curves:
            points = [
                (r["nfe"], r[metric])
                for r in rows
                if (r["sampler"], r["shift"]) == (sampler, shift) and r[metric] is not None
            ]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{sampler}, shift {shift:g}")
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not computed (see metrics.json)", ha="center", transform=ax.transAxes)
        if metric == "hf_energy_ratio" and ax.lines:
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.set_xlabel("NFE (decoder evaluations per image)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: quality against NFE")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: argparse.Namespace) -> dict:
    """Evaluate; returns the contents of metrics.json on the main process (which alone writes files)."""
    accelerator = Accelerator()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        diffusers.utils.logging.disable_progress_bar()  # loading bars: one process is enough
    output_dir = Path(args.output_dir)
    data_dir = Path(args.data_dir)

    # ---- this process's share of the images, loaded and encoded once
    files = list_image_files(data_dir, args.max_images)
    with accelerator.split_between_processes(list(enumerate(files))) as shard:
        loaded = {index: load_image(path, args.resolution) for index, path in shard}
    images = {index: image for index, image in loaded.items() if image is not None}
    unreadable = [str(files[index].relative_to(data_dir)) for index, image in loaded.items() if image is None]
    for name in unreadable:
        logger.warning(f"Skipping {name}: not a readable image.", main_process_only=False)
    pipe = load_reconstruction_pipeline(args.model).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)  # one bar, below
    shift = float(pipe.scheduler.config.get("shift", 1.0))  # a saved DiToPipeline's shift applies to both samplers
    if args.steps is None:
        args.steps = int(pipe.vae.config.num_inference_steps)  # judge the model at its own default

    sweep_shifts = args.sweep_shifts if args.sweep_shifts is not None else [shift]
    points = [(args.sampler, shift, args.steps)]  # first: its records make the main reconstruction
    if not args.skip_sweep:
        sweep = [(s, h, n) for s in args.samplers for h in sweep_shifts for n in args.sweep_steps]
        points += [point for point in sweep if point != points[0]]
    logger.info("***** Evaluating reconstructions *****")
    logger.info(
        f"  Image files = {len(files)}, processes = {accelerator.num_processes}, resolution = {args.resolution}"
    )
    logger.info(
        f"  Main reconstruction = {args.sampler}, shift {shift:g}, {args.steps} steps; "
        f"sweep points = {len(points) - 1}"
    )

    batches = encode_shard(pipe, images, args.batch_size)
    local = [
        {"index": i, "process": accelerator.process_index, "original": batch.originals[k].clone()}
        for batch in batches
        for k, i in enumerate(batch.indices)
    ]
    shared = sorted(gather_object(local), key=lambda r: r["index"])
    unreadable = sorted(gather_object(unreadable))
    if not shared:
        raise SystemExit(f"evaluate_dito.py: error: none of the {len(files)} image files in {data_dir} is readable.")
    sizes = {tuple(r["original"].shape[-2:]) for r in shared}
    one_size = len(sizes) == 1
    originals = torch.stack([r["original"] for r in shared]) if one_size else None  # (N, 3, H, W) uint8

    progress = tqdm(total=len(images) * len(points), unit="img", disable=not accelerator.is_local_main_process)
    rows, main_records = [], None
    for sampler, point_shift, steps in points:
        start = time.perf_counter()
        keep_images = one_size or main_records is None  # for SWD, and for the grid of the main reconstruction
        progress.set_description(f"{sampler}, shift {point_shift:g}, {steps} steps")
        scheduler = make_scheduler(sampler, point_shift)
        records = decode_point(pipe, batches, scheduler, steps, args.seed, progress, keep_images)
        records = sorted(gather_object(records), key=lambda r: r["index"])
        if accelerator.is_main_process:
            seconds = time.perf_counter() - start
            rows.append(summarise_point(records, originals, sampler, point_shift, steps, seconds, args.seed))
        main_records = records if main_records is None else main_records
    progress.close()

    result = {
        "model": str(args.model),
        "data_dir": str(data_dir),
        "num_images": len(shared),
        "num_unreadable": len(unreadable),
        "unreadable_files": unreadable,
        "image_size": list(next(iter(sizes))) if one_size else None,
        "resolution": args.resolution,
        "sampler": args.sampler,
        "steps": args.steps,
        "nfe": sampler_nfe(args.sampler, args.steps),
        "seed": args.seed,
        "scheduler_shift": shift,
        "num_processes": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        result.update(set_metrics(args, main_records, originals))
        in_sweep = [
            row
            for row in rows
            if row["sampler"] in args.samplers and row["shift"] in sweep_shifts and row["steps"] in args.sweep_steps
        ]
        in_sweep.sort(key=lambda r: (r["sampler"], r["shift"], r["steps"]))
        result["sweep"] = [] if args.skip_sweep else in_sweep
        write_outputs(args, output_dir, data_dir, files, shared, main_records, result)
        logger.info(f"PSNR {result['psnr']:.2f} dB over {len(shared)} images; wrote {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def set_metrics(args: argparse.Namespace, records: list[dict], originals: torch.Tensor | None) -> dict:
    """The metrics of the main reconstruction: compute_metrics over the set when the images share one size."""
    if originals is not None and min(originals.shape[-2:]) >= SET_METRICS_MIN_SIZE:
        reconstructions = torch.stack([r["reconstruction"] for r in records])
        report = compute_metrics(
            to_float(reconstructions),
            to_float(originals),
            inception=args.inception_weights,
            dinov2=args.dinov2_path,
            lpips_backbone=args.lpips_backbone,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        return {**report.values, "skipped": report.skipped}
    reason = DIFFERENT_SIZES if originals is None else f"the images are smaller than {SET_METRICS_MIN_SIZE} px"
    values = {"psnr": mean([r["psnr"] for r in records]), "ssim": mean([r["ssim"] for r in records])}
    skipped = dict.fromkeys(("swd", "hf_energy_ratio", "lpips", "rfid", "fd_dinov2"), reason)
    return {**values, "skipped": skipped}


def write_outputs(args, output_dir, data_dir, files, shared, records, result) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "metrics.json", result)
    with open(output_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "file", "width", "height", "psnr", "ssim", "process"])
        for item, record in zip(shared, records):
            height, width = item["original"].shape[-2:]
            file = files[item["index"]].relative_to(data_dir)
            writer.writerow([item["index"], file, width, height, record["psnr"], record["ssim"], item["process"]])
    columns = ["sampler", "shift", "steps", "nfe", "psnr", "ssim", "swd", "hf_energy_ratio", "seconds"]
    with open(output_dir / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result["sweep"])

    grid_rows = []
    for item, record in list(zip(shared, records))[: args.grid_images]:
        original = item["original"].permute(1, 2, 0).numpy()  # (H, W, 3)
        reconstruction = record["reconstruction"].permute(1, 2, 0).numpy()
        cells = [original, reconstruction, error_image(reconstruction, original, args.error_gain)]
        factor = -(-args.grid_cell_size // min(original.shape[:2]))  # whole factor: pixels stay square and sharp
        grid_rows.append([cell.repeat(factor, axis=0).repeat(factor, axis=1) for cell in cells])
    labels = ["original", f"reconstruction\n{args.steps} {args.sampler} steps", f"error x{args.error_gain:g}"]
    labelled_grid(grid_rows, labels).save(output_dir / "reconstructions.png")
    if result["sweep"]:
        title = f"{Path(args.model).name}: {result['num_images']} images"
        plot_sweep(result["sweep"], output_dir / "sweep.png", title)


if __name__ == "__main__":
    args = parse_args()
    exit_code = relaunch_with_accelerate(args.num_processes, __file__, sys.argv[1:])
    if exit_code is not None:
        sys.exit(exit_code)
    main(args)
