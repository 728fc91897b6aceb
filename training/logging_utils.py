# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Accelerator set-up, the start-up banner, per-step logs (all-reduced over processes) and validation grids."""

import argparse
import logging
import time
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed

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
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
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


class StepStatistics:
    """Sums over one optimizer step, kept in one tensor so that a single all-reduce gathers them from every rank:
    loss, samples, unreadable slots, too-small slots, the count of each named per-sample flag (noise-synced,
    class-dropped...), then the loss and sample count of each flow-time bucket."""

    HEAD = 4  # loss, samples, unreadable, too small

    def __init__(self, device: torch.device, flag_logs: dict[str, str]):
        self.flag_logs = flag_logs  # flag name -> the log key of its fraction of the step's samples
        self.sums = torch.zeros(self.HEAD + len(flag_logs) + 2 * NUM_T_BUCKETS, device=device)
        self.start = time.perf_counter()

    def add(
        self,
        per_sample_loss: torch.Tensor,
        t: torch.Tensor,
        valid: torch.Tensor,
        too_small: torch.Tensor,
        **flags: torch.Tensor,
    ):
        """One micro-batch: (B,) losses, flow times, validity weights and too-small flags (skipped, not unreadable),
        and (B,) tensors of the named flags."""
        per_sample_loss = per_sample_loss.detach()  # (B,)
        too_small = too_small.to(device=valid.device, dtype=valid.dtype)  # (B,)
        buckets = (t * NUM_T_BUCKETS).long().clamp(max=NUM_T_BUCKETS - 1)  # (B,)
        in_bucket = torch.nn.functional.one_hot(buckets, NUM_T_BUCKETS).to(valid.dtype) * valid[:, None]  # (B, K)
        head = [(per_sample_loss * valid).sum(), valid.sum(), (1 - valid - too_small).sum(), too_small.sum()]
        head += [(flags[name] * valid).sum() for name in self.flag_logs]
        self.sums += torch.cat([torch.stack(head), in_bucket.T @ per_sample_loss, in_bucket.sum(0)])

    def reduce(self, accelerator: Accelerator) -> torch.Tensor:
        return accelerator.reduce(self.sums.clone(), reduction="sum")  # the same on every rank

    def reset(self) -> None:
        self.sums.zero_()
        self.start = time.perf_counter()

    # Readers of a reduced tensor.
    @staticmethod
    def mean_loss(totals: torch.Tensor) -> torch.Tensor:
        return totals[0] / totals[1].clamp_min(1.0)

    @staticmethod
    def samples(totals: torch.Tensor) -> int:
        return int(totals[1])

    @staticmethod
    def corrupt(totals: torch.Tensor) -> int:
        return int(totals[2])

    @staticmethod
    def too_small(totals: torch.Tensor) -> int:
        return int(totals[3])

    def flag_count(self, totals: torch.Tensor, name: str) -> float:
        return float(totals[self.HEAD + list(self.flag_logs).index(name)])

    def logs(self, totals: torch.Tensor) -> dict[str, float]:
        """Loss, flag fractions, throughput and the loss per flow-time bucket."""
        samples = totals[1].clamp_min(1.0)
        logs = {"loss": (totals[0] / samples).item()}
        for i, key in enumerate(self.flag_logs.values()):
            logs[key] = (totals[self.HEAD + i] / samples).item()
        logs["images_per_sec"] = totals[1].item() / max(time.perf_counter() - self.start, 1e-9)
        first = self.HEAD + len(self.flag_logs)
        bucket_loss, bucket_count = totals[first : first + NUM_T_BUCKETS], totals[first + NUM_T_BUCKETS :]
        for k in range(NUM_T_BUCKETS):
            if bucket_count[k] > 0:
                logs[f"loss_t/{k / NUM_T_BUCKETS:.2f}-{(k + 1) / NUM_T_BUCKETS:.2f}"] = (
                    bucket_loss[k] / bucket_count[k]
                ).item()
        return logs


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
