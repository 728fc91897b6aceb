#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Sample a class-conditional DiToDiTPipeline and score the samples against a folder of real images: a sample grid,
and SWD (plus gFID and FD-DINOv2 when their weights are given) in metrics.json.

Laid out like diffusers' example scripts (`parse_args()` + `main(args)`). The samples are sharded over processes with
accelerate; the main process gathers them, scores them and writes every file. Sample k is drawn from a generator
seeded with seed + k, so the samples do not depend on the number of processes or the batch size.

    python training/evaluate_generation.py --model dito-dit --num_classes_to_sample 10 --samples_per_class 50 \
        --reference_dir ./val --output_dir eval-dito-dit
    python training/evaluate_generation.py ... --num_processes 4    # re-launches itself under `accelerate launch`

docs/evaluation.md describes the outputs. The image-folder, grid and launch helpers are shared with evaluate_dito.py
(`diffusers_dito.training.evaluation`); the model loads through `diffusers_dito.pipelines.loading`.
"""

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from diffusers_dito import DiToDiTPipeline
from diffusers_dito.cli import OneLineArgumentParser  # one-line usage errors, exit code 2
from diffusers_dito.metrics import compute_generation_metrics
from diffusers_dito.pipelines.loading import load_pipeline, model_kind
from diffusers_dito.training.arguments import positive_int
from diffusers_dito.training.evaluation import (
    add_shared_arguments,
    check_num_processes,
    image_grid,
    list_image_files,
    load_image,
    relaunch_with_accelerate,
    to_float,
    write_json,
)

logger = get_logger(__name__, log_level="INFO")

NOT_SCORED = "no --reference_dir was given"


def resolve_class_labels(
    model: str | Path, class_labels: list[str] | None, num_classes_to_sample: int | None, seed: int = 0
) -> list[int]:
    r"""
    The class ids to sample, read from a saved DiToDiTPipeline folder without loading any weights.

    `class_labels` are ids or names (any comma-separated synonym of the pipeline's `id2label`); else
    `num_classes_to_sample` distinct classes drawn with `seed`, in increasing order; else every class. Duplicates are
    dropped, order is kept.

    Raises:
        `ValueError`: An unknown name, an id out of range, or more classes than the model has.

    Examples:
        ```py
        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "model_index.json").write_text(json.dumps({"id2label": {"0": "cat, kitty", "1": "dog"}}))
        >>> (folder / "transformer").mkdir()
        >>> _ = (folder / "transformer" / "config.json").write_text(json.dumps({"num_embeds_ada_norm": 3}))
        >>> resolve_class_labels(folder, ["dog", "2", "kitty"], None), resolve_class_labels(folder, None, None)
        ([1, 2, 0], [0, 1, 2])

        ```
    """
    model = Path(model)
    index = json.loads((model / "model_index.json").read_text())
    num_classes = json.loads((model / "transformer" / "config.json").read_text())["num_embeds_ada_norm"]
    names = {}
    for key, value in (index.get("id2label") or {}).items():
        for name in value.split(","):
            names[name.strip()] = int(key)
    if class_labels:
        ids = []
        for label in class_labels:
            if label.lstrip("-").isdigit():
                if not 0 <= int(label) < num_classes:
                    raise ValueError(f"--class_labels: class id {label} is out of range [0, {num_classes - 1}]")
                ids.append(int(label))
            elif label in names:
                ids.append(names[label])
            else:
                known = ", ".join(sorted(names)[:20]) or "none: the model has no id2label, use ids"
                raise ValueError(f"--class_labels: unknown class name {label!r} (known names: {known})")
        return list(dict.fromkeys(ids))
    if num_classes_to_sample is not None:
        if num_classes_to_sample > num_classes:
            raise ValueError(f"--num_classes_to_sample {num_classes_to_sample}: the model has {num_classes} classes")
        drawn = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))[:num_classes_to_sample]
        return sorted(drawn.tolist())
    return list(range(num_classes))


def class_name(id2label: dict[int, str], class_id: int) -> str:
    """The first of a class's comma-separated names, or its id when the pipeline has no `id2label`."""
    return id2label.get(class_id, str(class_id)).split(",")[0].strip()


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Sample a DiToDiTPipeline and score the samples against real images.")
    parser.add_argument("--model", required=True, help="A saved DiToDiTPipeline folder.")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--class_labels", nargs="+", default=None, help="Class ids or names (default: every class).")
    classes.add_argument(
        "--num_classes_to_sample", type=positive_int, default=None, help="Sample N random classes (seeded)."
    )
    parser.add_argument("--samples_per_class", type=positive_int, default=4, help="Samples of each class.")
    parser.add_argument("--guidance_scale", type=float, default=2.0, help="Classifier-free guidance (1: none).")
    parser.add_argument("--num_inference_steps", type=positive_int, default=50, help="Steps of the latent ODE.")
    parser.add_argument(
        "--decoder_num_inference_steps", type=positive_int, default=None, help="DiTo decoding steps (default: vae's)."
    )
    parser.add_argument(
        "--reference_dir", default=None, help="Real images, centre-cropped and resized to the model's resolution."
    )
    parser.add_argument("--max_reference_images", type=positive_int, default=None, help="Use the first N files.")
    parser.add_argument("--output_dir", default="dito-generation-eval", help="Where the results are written.")
    parser.add_argument("--seed", type=int, default=0, help="Sample k is drawn with seed + k.")
    parser.add_argument("--batch_size", type=positive_int, default=16, help="Samples per pipeline call, per process.")
    parser.add_argument("--save_samples", action="store_true", help="Also write every sample as a PNG.")
    parser.add_argument("--grid_classes", type=positive_int, default=16, help="Rows of the sample grid.")
    parser.add_argument("--grid_samples_per_class", type=positive_int, default=8, help="Columns of the sample grid.")
    add_shared_arguments(parser, fid="gFID")

    args = parser.parse_args(input_args)
    try:
        kind = model_kind(args.model)
    except ValueError as err:
        parser.error(f"--model: {err}")
    if kind != "DiToDiTPipeline":
        parser.error(f"--model {args.model} holds a {kind}; sampling needs a DiToDiTPipeline folder.")
    if args.guidance_scale < 1:
        parser.error(f"--guidance_scale must be >= 1 (1 disables guidance), got {args.guidance_scale}.")
    if args.reference_dir is not None:
        if not Path(args.reference_dir).is_dir():
            parser.error(f"--reference_dir {args.reference_dir} is not a folder.")
        if not list_image_files(args.reference_dir, max_images=1):
            parser.error(f"--reference_dir {args.reference_dir} holds no image files.")
    try:
        args.class_ids = resolve_class_labels(args.model, args.class_labels, args.num_classes_to_sample, args.seed)
    except ValueError as err:
        parser.error(str(err))
    except (OSError, KeyError) as err:
        parser.error(f"--model {args.model}: cannot read its class count ({err!r}).")
    if args.reference_dir is not None and len(args.class_ids) * args.samples_per_class < 2:
        parser.error("scoring against --reference_dir needs >= 2 samples; raise --samples_per_class.")
    conflict = check_num_processes(args.num_processes)
    if conflict:
        parser.error(conflict)
    return args


@torch.no_grad()
def sample_shard(pipe: DiToDiTPipeline, jobs: list[tuple[int, int]], args, progress, process: int) -> list[dict]:
    """Generate this process's `(sample index, class id)` jobs; each sample as uint8 `(3, H, W)` on the CPU."""
    records = []
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start : start + args.batch_size]
        images = pipe(
            [class_id for _, class_id in chunk],
            guidance_scale=args.guidance_scale,
            num_inference_steps=args.num_inference_steps,
            decoder_num_inference_steps=args.decoder_num_inference_steps,
            generator=[torch.Generator().manual_seed(args.seed + index) for index, _ in chunk],
            output_type="pt",
        ).images  # (B, 3, H, W) in [0, 1]
        images = (images * 255).round().to(torch.uint8).cpu()
        for (index, class_id), image in zip(chunk, images):
            records.append({"index": index, "class_label": class_id, "process": process, "image": image.clone()})
        progress.update(len(chunk))
    return records


def load_reference(args: argparse.Namespace, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """The reference images as uint8 `(M, 3, resolution, resolution)`, and the files that could not be read."""
    folder = Path(args.reference_dir)
    images, unreadable = [], []
    for path in tqdm(list_image_files(folder, args.max_reference_images), desc="reference images", unit="img"):
        image = load_image(path, resolution)
        if image is None:
            logger.warning(f"Skipping {path}: not a readable image.")
            unreadable.append(str(path.relative_to(folder)))
        else:
            images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))  # (3, H, W)
    if not images:
        return torch.empty(0, 3, resolution, resolution, dtype=torch.uint8), unreadable
    return torch.stack(images), unreadable


def main(args: argparse.Namespace) -> dict:
    """Sample and score; returns the contents of metrics.json on the main process (which alone writes files)."""
    accelerator = Accelerator()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if not accelerator.is_local_main_process:
        diffusers.utils.logging.disable_progress_bar()
    output_dir = Path(args.output_dir)
    pipe = load_pipeline(args.model).to(accelerator.device)  # a DiToDiTPipeline: parse_args checked the folder
    pipe.set_progress_bar_config(disable=True)  # one bar, below
    resolution = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    id2label = {int(k): v for k, v in (pipe.config.get("id2label") or {}).items()}

    jobs = [(k, c) for k, c in enumerate(c for c in args.class_ids for _ in range(args.samples_per_class))]
    logger.info("***** Sampling *****")
    logger.info(f"  Classes = {len(args.class_ids)}, samples per class = {args.samples_per_class}")
    logger.info(f"  Guidance = {args.guidance_scale}, steps = {args.num_inference_steps}, resolution = {resolution}")
    logger.info(f"  Processes = {accelerator.num_processes}")
    with accelerator.split_between_processes(jobs) as shard:
        local_jobs = list(shard)
    progress = tqdm(total=len(local_jobs), unit="img", desc="sampling", disable=not accelerator.is_local_main_process)
    records = sample_shard(pipe, local_jobs, args, progress, accelerator.process_index)
    progress.close()
    samples = sorted(gather_object(records), key=lambda r: r["index"])

    result = {
        "model": str(args.model),
        "class_labels": args.class_ids,
        "class_names": [class_name(id2label, c) for c in args.class_ids],
        "samples_per_class": args.samples_per_class,
        "num_samples": len(samples),
        "guidance_scale": args.guidance_scale,
        "num_inference_steps": args.num_inference_steps,
        "decoder_num_inference_steps": args.decoder_num_inference_steps or pipe.vae.config.num_inference_steps,
        "resolution": resolution,
        "seed": args.seed,
        "num_processes": accelerator.num_processes,
        "reference_dir": args.reference_dir,
    }
    if accelerator.is_main_process:
        result.update(score_samples(args, samples, resolution))
        write_outputs(args, output_dir, samples, id2label, result)
        logger.info(f"Wrote {len(samples)} samples' grid and metrics to {output_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def score_samples(args: argparse.Namespace, samples: list[dict], resolution: int) -> dict:
    """SWD, gFID and FD-DINOv2 of the samples against `--reference_dir`; what could not run is in `skipped`."""
    if args.reference_dir is None:
        return {"skipped": dict.fromkeys(("swd", "gfid", "fd_dinov2"), NOT_SCORED)}
    reference, unreadable = load_reference(args, resolution)
    scored = {"num_reference_images": len(reference), "unreadable_reference_files": unreadable}
    if len(reference) < 2:
        reason = f"--reference_dir has {len(reference)} readable images; the metrics need >= 2"
        return {**scored, "skipped": dict.fromkeys(("swd", "gfid", "fd_dinov2"), reason)}
    report = compute_generation_metrics(
        to_float(torch.stack([s["image"] for s in samples])),
        to_float(reference),
        inception=args.inception_weights,
        dinov2=args.dinov2_path,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    scored["swd_num_images"] = min(len(samples), len(reference))
    return {**scored, **report.values, "skipped": report.skipped}


def write_outputs(args, output_dir: Path, samples: list[dict], id2label: dict[int, str], result: dict) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "metrics.json", result)
    if args.save_samples:
        (output_dir / "samples").mkdir(exist_ok=True)
    with open(output_dir / "samples.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "class_label", "class_name", "seed", "process", "file"])
        for s in samples:
            name = class_name(id2label, s["class_label"])
            file = f"samples/{s['index']:05d}_class{s['class_label']}.png" if args.save_samples else ""
            if file:
                PIL.Image.fromarray(s["image"].permute(1, 2, 0).numpy()).save(output_dir / file)
            writer.writerow([s["index"], s["class_label"], name, args.seed + s["index"], s["process"], file])

    rows = []
    for class_id in args.class_ids[: args.grid_classes]:
        of_class = [s for s in samples if s["class_label"] == class_id][: args.grid_samples_per_class]
        rows.append([s["image"].permute(1, 2, 0).numpy() for s in of_class])  # (H, W, 3) each
    image_grid(rows).save(output_dir / "samples_grid.png")


if __name__ == "__main__":
    args = parse_args()
    exit_code = relaunch_with_accelerate(args.num_processes, __file__, sys.argv[1:])
    if exit_code is not None:
        sys.exit(exit_code)
    main(args)
