# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""What every training script's step calls: the optimizer and its schedule, the batches of each epoch from where a
run stands, the optimizer step that skips non-finite steps, the step's logs, and the end of the run.

The step itself is written out in each script's `main`, as in diffusers' `train_unconditional.py`: the loss,
`accelerator.backward`, clipping, the optimizer step, EMA, logging, the checks of reliability.py, the checkpoint and
validation, in that order. Exact resume follows NVlabs/edm2: the loss's `torch.Generator` is reseeded for every
micro-batch from (seed, rank, epoch, batch) (`seed_from`), the data order and augmentation from (seed, epoch[,
index]), and `accelerator.skip_first_batches` restores the data position, so a resumed run is bit-identical to one
never stopped.
"""

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .checkpointing import NonFiniteWeightsError, TrainingProgress, check_finite_weights
from .logging_utils import StepTotals
from .performance import optimizer_kwargs
from .reliability import EXIT_CODE_SIGTERM, BadDataError, release_output_dir

logger = get_logger(__name__, log_level="INFO")


@dataclass
class Schedule:
    max_train_steps: int
    num_train_epochs: int  # sys.maxsize when streaming
    batches_per_epoch: int | None  # on each process; None when streaming


def create_optimizer(trainable: list[torch.nn.Parameter], args: argparse.Namespace, accelerator: Accelerator):
    """AdamW with a linear warm-up, then a constant or cosine learning rate (`--lr_scheduler`)."""
    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        **optimizer_kwargs(args.optimizer_implementation, trainable),
    )
    # accelerate steps the scheduler once per process per optimizer step, hence the factor.
    name = getattr(args, "lr_scheduler", "constant")
    lr_scheduler = get_scheduler(
        "constant_with_warmup" if name == "constant" else name,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=None if name == "constant" else args.max_train_steps * accelerator.num_processes,
    )
    return optimizer, lr_scheduler


def make_schedule(
    train_dataloader, num_examples: int | None, args: argparse.Namespace, accelerator: Accelerator
) -> Schedule:
    """Steps and epochs; `num_examples` is None for a stream (which needs --max_train_steps)."""
    if num_examples is None:
        return Schedule(args.max_train_steps, sys.maxsize, None)
    if len(train_dataloader) == 0:
        raise ValueError(
            f"{num_examples} training images make no full batch of {args.train_batch_size} on each of "
            f"{accelerator.num_processes} processes; lower --train_batch_size."
        )
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * num_update_steps_per_epoch
    return Schedule(max_train_steps, math.ceil(max_train_steps / num_update_steps_per_epoch), len(train_dataloader))


def epoch_batches(
    accelerator: Accelerator, train_dataloader, epoch_aware: list, progress: TrainingProgress, schedule: Schedule
) -> Iterator[tuple[int, dict]]:
    """(epoch, batch) from where `progress` stands to the end of `schedule`. Each epoch pins the data loader's,
    dataset's and sampler's epoch (`epoch_aware`: the dataset and sampler), and a resumed run's first epoch skips the
    batches its checkpoint had consumed. The caller counts `progress.batches_in_epoch` and the steps; an epoch that
    yields no full batch, or no usable image, stops the run."""
    first_epoch, resume_batches = progress.epoch, progress.batches_in_epoch
    for epoch in range(first_epoch, schedule.num_train_epochs):
        if progress.global_step >= schedule.max_train_steps:
            return
        progress.epoch = epoch
        # accelerate re-applies its own epoch counter to the sampler and dataset on every pass (and a
        # `skip_first_batches` copy starts from it): pin it, so a resumed run sees the same epoch numbers.
        train_dataloader.set_epoch(epoch)
        for item in epoch_aware:
            item.set_epoch(epoch)
        skip = resume_batches if epoch == first_epoch else 0
        progress.batches_in_epoch = skip
        images_before = progress.images_seen
        batches = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for batch in batches:
            yield epoch, batch
        if progress.batches_in_epoch == 0:  # would loop over empty epochs forever
            raise ValueError("The training data yielded no full batch.")
        if progress.batches_in_epoch > skip and progress.images_seen == images_before:
            raise BadDataError(
                f"Epoch {epoch} yielded no usable image: {progress.corrupt_images} unreadable and "
                f"{progress.too_small_images} smaller than --resolution (--small_image_policy skip) so far."
            )


def masked_mean(per_sample_loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The mean over the usable samples (`valid`, (B,) bool): unreadable or skipped images weigh nothing, even when
    their (zero-filled) slot gave a non-finite loss."""
    valid = valid.to(per_sample_loss.device)  # (B,)
    total = torch.where(valid, per_sample_loss, torch.zeros_like(per_sample_loss)).sum()
    return total / valid.sum().clamp_min(1).to(per_sample_loss.dtype)


def optimizer_step(accelerator: Accelerator, optimizer, lr_scheduler, totals: StepTotals, grad_norm) -> bool:
    """Step unless the step's loss or gradient norm is not finite (the weights and Adam moments then keep their last
    good values); returns whether the step was skipped. `totals` and `grad_norm` are all-reduced, so every rank
    decides alike."""
    finite = math.isfinite(totals.mean_loss) and bool(torch.isfinite(grad_norm))
    if finite or accelerator.scaler is not None:  # fp16: the grad scaler skips (and rescales) itself
        optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return not finite or accelerator.optimizer_step_was_skipped


def progress_bar(schedule: Schedule, progress: TrainingProgress, accelerator: Accelerator) -> tqdm:
    """The run's one progress bar, from where `progress` stands (local main process only)."""
    return tqdm(
        range(schedule.max_train_steps),
        initial=progress.global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )


def log_step(accelerator: Accelerator, progress_bar: tqdm, logs: dict, global_step: int) -> None:
    """A finished step's logs: to the trackers, and its loss and gradient norm to the progress bar."""
    progress_bar.update(1)
    progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", grad_norm=f"{logs['grad_norm']:.3f}")
    accelerator.log(logs, step=global_step)


def step_logs(stats, totals: StepTotals, flag_logs: dict, progress: TrainingProgress, lr_scheduler, grad_norm, ema):
    """The step's loss statistics (`StepStatistics.logs`), learning rate, gradient norm, EMA decay and counters."""
    logs = stats.logs(totals, flag_logs)
    logs.update(
        lr=lr_scheduler.get_last_lr()[0],
        grad_norm=grad_norm.item(),
        images_seen=progress.images_seen,
        skipped_steps=progress.skipped_steps,
        corrupt_images=progress.corrupt_images,
        too_small_images=progress.too_small_images,
        epoch=progress.epoch,
    )
    if ema is not None:
        logs["ema_decay"] = ema.cur_decay_value if ema.cur_decay_value is not None else 0.0
    return logs


def finish_training(
    accelerator: Accelerator,
    args: argparse.Namespace,
    progress: TrainingProgress,
    interrupted: bool,
    model: torch.nn.Module,
    ema: EMAModel | None,
    trainable: list[torch.nn.Parameter],
    save_final_model,
    debug=None,
) -> None:
    """Wait for every process, swap in the EMA weights for good, and save the final model on the main process (never
    with non-finite weights). After a SIGTERM, save nothing more and exit with EXIT_CODE_SIGTERM instead: the
    checkpoint is written, and the run is not finished. `save_final_model()` saves the model."""
    accelerator.wait_for_everyone()
    if debug is not None:  # the tests' record (training/debug.py)
        debug.write_dump(accelerator, progress, model, interrupted)
    if interrupted:
        accelerator.end_training()
        logger.warning(
            f"Stopped by SIGTERM after step {progress.global_step} of {args.output_dir}: resume with "
            f"--resume_from_checkpoint latest. Exit code {EXIT_CODE_SIGTERM}."
        )
        raise SystemExit(EXIT_CODE_SIGTERM)
    if ema is not None:
        ema.copy_to(trainable)
    try:
        check_finite_weights(model, None, "the final model")
    except NonFiniteWeightsError:
        accelerator.end_training()
        raise
    if accelerator.is_main_process:
        save_final_model()
        release_output_dir(args.output_dir)  # finished: the folder is free for the next run
    accelerator.end_training()
