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

`experiments/decode_steps/choose_decode_defaults.py` reads the sweep of metrics.json and picks the cheapest decoding
setting.

docs/evaluation.md describes the outputs and how to reproduce the curves. The image-folder, grid and launch helpers
are shared with `evaluate_generation.py` (`diffusers_dito.training.evaluation`), the sweep's samplers, rows and plot
are in `diffusers_dito.training.decode_sweep`, and models load through `diffusers_dito.pipelines.loading`, as in the
`diffusers-dito` command line. With `--update_model_card`, or when `--output_dir` lies in the model folder, the
metrics also go into the folder's model card (README.md); `--push_to_hub` then uploads the folder.
"""

import argparse
import csv
import importlib.util
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from diffusers_dito import DiToPipeline
from diffusers_dito.cli import OneLineArgumentParser  # one-line usage errors, exit code 2
from diffusers_dito.metrics import compute_metrics, psnr, ssim
from diffusers_dito.pipelines.loading import load_reconstruction_pipeline, model_kind
from diffusers_dito.training.arguments import positive_int
from diffusers_dito.training.decode_sweep import (
    DEFAULT_SWEEP_STEPS,
    SAMPLERS,
    make_scheduler,
    plot_sweep,
    sampler_nfe,
    summarise_point,
)
from diffusers_dito.training.evaluation import (
    add_hub_arguments,
    add_shared_arguments,
    check_hub_arguments,
    check_num_processes,
    labelled_grid,
    list_image_files,
    load_image,
    mean,
    publish_metrics,
    relaunch_with_accelerate,
    to_float,
    write_json,
)

logger = get_logger(__name__, log_level="INFO")

SSIM_MIN_SIZE = 11  # SSIM's Gaussian window
SET_METRICS_MIN_SIZE = 32  # compute_metrics (LPIPS' smallest input)
DIFFERENT_SIZES = "the images differ in size; pass --resolution to compare them at one size"


# ------------------------------------------------------------------------------------------------------- helpers
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


def error_image(reconstruction: np.ndarray, original: np.ndarray, gain: float) -> np.ndarray:
    """|reconstruction − original| of two `(H, W, 3)` uint8 images, averaged over channels, × `gain`, as grey."""
    error = np.abs(reconstruction.astype(np.int16) - original.astype(np.int16)).mean(axis=2) * gain  # (H, W)
    return np.repeat(np.clip(error.round(), 0, 255).astype(np.uint8)[..., None], 3, axis=2)  # (H, W, 3)


# ------------------------------------------------------------------------------------------------------- args
def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Evaluate the reconstructions of a DiTo autoencoder.")
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
    weights = add_shared_arguments(parser, fid="rFID")
    weights.add_argument("--lpips_backbone", default=None, help="LPIPS: torchvision's alexnet-owt-7be5be79.pth.")
    add_hub_arguments(parser)

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
    conflict = check_num_processes(args.num_processes) or check_hub_arguments(args)
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
    if accelerator.is_main_process:  # after the other processes are done: a failed push stops this one only
        publish_metrics(args, output_dir, result)
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
