# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Accelerator set-up, the start-up banner, per-step logs (all-reduced over processes) and validation grids."""

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed

from . import performance, sharding
from .reliability import RunError

logger = get_logger(__name__, log_level="INFO")

NUM_T_BUCKETS = 4  # the loss is also logged per quarter of flow time t, where the task gets hard (t -> 1)


def create_accelerator(args: argparse.Namespace) -> Accelerator:
    """The accelerator of a run, with logging set up, the seed set and the output folder made (main process)."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=output_dir / args.logging_dir),
        dynamo_plugin=performance.dynamo_plugin(args),  # --torch_compile: prepare() compiles the model
    )
    sharding.apply_test_fsdp_switch(accelerator)  # test-only (DITO_TEST_FSDP_ON_CPU): FSDP2 on CPU processes
    if args.allow_tf32:
        performance.set_tf32(True)
    performance.warn_if_slow_precision(accelerator, logger)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    if (ignored := sharding.fsdp_config_ignored_message(accelerator)) is not None:
        logger.warning(ignored)
    if sharding.is_sharded(accelerator) and getattr(args, "lora_rank", 0) > 0:
        raise RunError("--lora_rank is not supported under FSDP (adapters are small): launch with a DDP config.")
    logger.info(accelerator.state, main_process_only=False)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
    set_seed(args.seed)  # the model's initialisation; everything later is reseeded from (seed, position)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    return accelerator


def init_trackers(accelerator: Accelerator, args: argparse.Namespace) -> None:
    if accelerator.is_main_process:
        # TensorBoard's hparams accept only scalars and strings.
        config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}
        accelerator.init_trackers(args.tracker_project_name, config=config)


def log_banner(
    title: str,
    args: argparse.Namespace,
    accelerator: Accelerator,
    num_examples: int | str,
    num_epochs: int | str,
    max_train_steps: int,
    start_step: int,
    parameters: str,
) -> None:
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info(f"***** Running {title} *****")
    logger.info(f"  Num examples = {num_examples}")
    logger.info(f"  Num epochs = {num_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {max_train_steps} (starting at {start_step})")
    logger.info(f"  Parameters: {parameters}")


@dataclass
class StepTotals:
    """One optimizer step's statistics, summed over its micro-batches and over every process (the same on all)."""

    loss_sum: float  # of the per-sample losses of the usable samples
    samples: int  # usable samples
    unreadable: int  # samples whose image could not be decoded
    too_small: int  # samples skipped by --small_image_policy skip
    flag_counts: dict[str, float]  # sums over the usable samples of each named per-sample value (a flag: a count)
    bucket_loss_sums: list[float]  # loss sum per flow-time bucket (NUM_T_BUCKETS)
    bucket_samples: list[float]  # usable samples per flow-time bucket

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


class StepStatistics:
    """Sums over one optimizer step: each micro-batch adds its per-sample losses, flow times and flags, and
    `reduce` gathers them from every process in a single all-reduce (the named fields travel packed in one tensor,
    which is the only place their order matters)."""

    FIELDS = ("loss_sum", "samples", "unreadable", "too_small")

    def __init__(self, device: torch.device, flag_names: list[str]):
        self.flag_names = list(flag_names)
        self.sums = torch.zeros(len(self.FIELDS) + len(self.flag_names) + 2 * NUM_T_BUCKETS, device=device)
        self.start = time.perf_counter()

    def add(self, per_sample_loss: torch.Tensor, t: torch.Tensor | None, batch: dict, **values: torch.Tensor) -> None:
        """One micro-batch: (B,) losses and flow times (None: no per-time statistics), the batch's (B,) `valid` and
        `too_small` masks, and the (B,) named per-sample values (flags or loss terms: each is logged as its mean over
        the usable samples)."""
        per_sample_loss = per_sample_loss.detach()  # (B,)
        valid = batch["valid"].to(device=per_sample_loss.device, dtype=per_sample_loss.dtype)  # (B,)
        too_small = batch["too_small"].to(device=valid.device, dtype=valid.dtype)  # (B,)
        usable_loss = torch.where(valid > 0, per_sample_loss, torch.zeros_like(per_sample_loss))  # (B,)
        fields = [usable_loss.sum(), valid.sum(), (1 - valid - too_small).sum(), too_small.sum()]
        fields += [
            torch.where(valid > 0, values[name].detach().to(valid.dtype), 0.0).sum() for name in self.flag_names
        ]
        if t is None:
            in_bucket = torch.zeros(len(valid), NUM_T_BUCKETS, dtype=valid.dtype, device=valid.device)  # (B, K)
        else:
            buckets = (t * NUM_T_BUCKETS).long().clamp(max=NUM_T_BUCKETS - 1)  # (B,)
            in_bucket = torch.nn.functional.one_hot(buckets, NUM_T_BUCKETS).to(valid.dtype) * valid[:, None]
        self.sums += torch.cat([torch.stack(fields), in_bucket.T @ usable_loss, in_bucket.sum(0)])

    def reduce(self, accelerator: Accelerator) -> StepTotals:
        sums = accelerator.reduce(self.sums.clone(), reduction="sum").tolist()  # the same on every rank
        head, rest = sums[: len(self.FIELDS)], sums[len(self.FIELDS) :]
        flags, buckets = rest[: len(self.flag_names)], rest[len(self.flag_names) :]
        return StepTotals(
            loss_sum=head[0],
            samples=int(head[1]),
            unreadable=int(head[2]),
            too_small=int(head[3]),
            flag_counts=dict(zip(self.flag_names, flags)),
            bucket_loss_sums=buckets[:NUM_T_BUCKETS],
            bucket_samples=buckets[NUM_T_BUCKETS:],
        )

    def reset(self) -> None:
        self.sums.zero_()
        self.start = time.perf_counter()

    def logs(self, totals: StepTotals, flag_logs: dict[str, str]) -> dict[str, float]:
        """Loss, flag fractions (`flag_logs`: flag name -> log key), throughput and the loss per flow-time bucket."""
        samples = max(totals.samples, 1)
        logs = {"loss": totals.mean_loss, "images": totals.samples}
        for name, key in flag_logs.items():
            logs[key] = totals.flag_counts[name] / samples
        logs["images_per_sec"] = totals.samples / max(time.perf_counter() - self.start, 1e-9)
        for k, (loss_sum, count) in enumerate(zip(totals.bucket_loss_sums, totals.bucket_samples)):
            if count > 0:
                logs[f"loss_t/{k / NUM_T_BUCKETS:.2f}-{(k + 1) / NUM_T_BUCKETS:.2f}"] = loss_sum / count
        return logs


def log_reconstructions(
    accelerator: Accelerator,
    images: torch.Tensor,
    decodes: list[torch.Tensor],
    output_dir: str,
    global_step: int,
    tag: str,
    caption: str,
) -> float:
    """Validation of a decoder: the PSNR of the last of `decodes` against `images` (each (N, 3, R, R) in [-1, 1]),
    logged as `validation/psnr`, and a grid of rows (image | decode | ...) saved by `save_validation_grid`. Returns
    the PSNR in dB."""
    reconstruction = decodes[-1]
    mse = ((reconstruction.float() - images.float()) / 2).pow(2).mean(dim=(1, 2, 3))  # (N,), on the [0, 1] scale
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()
    rows = torch.cat([x.float().cpu() for x in (images, *decodes)], dim=3)  # (N, 3, R, K·R)
    grid = to_uint8(torch.cat(list(rows), dim=1))  # (N·R, K·R, 3)
    save_validation_grid(accelerator, grid, output_dir, global_step, tag, caption)
    accelerator.log({"validation/psnr": psnr}, step=global_step)
    logger.info(f"step {global_step}: validation PSNR {psnr:.2f} dB ({len(images)} images, {caption})")
    return psnr


def save_validation_grid(
    accelerator: Accelerator, grid: np.ndarray, output_dir: str, global_step: int, tag: str, caption: str
) -> None:
    """Write a (H, W, 3) uint8 grid to output_dir/validation/step-NNNNNNN.png and to the trackers."""
    folder = Path(output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(grid).save(folder / f"step-{global_step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, grid, global_step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: wandb.Image(grid, caption=caption)}, step=global_step)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return ((images.float().cpu().permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
