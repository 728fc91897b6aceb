# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""The optimisation loop that every training script runs, given its loss and its validation.

It follows diffusers' `train_unconditional.py` (`accelerator.accumulate`, gradient clipping when gradients sync, EMA,
one tqdm bar, `accelerator.log`) and NVlabs/edm2's exact resume: the loss's `torch.Generator` is reseeded for every
micro-batch from (seed, rank, epoch, batch), the data order and augmentation from (seed, epoch[, index]), and
`accelerator.skip_first_batches` restores the data position. A resumed run is then bit-identical to one never stopped.

At every step boundary the loop also applies the checks of reliability.py (non-finite streaks, unreadable data, a
SIGTERM to save on); docs/reliability.md describes them.
"""

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .checkpointing import (
    NonFiniteWeightsError,
    TrainingProgress,
    check_finite_weights,
    ema_weights,
    save_checkpoint,
    weights_digest,
)
from .data import seed_from
from .logging_utils import StepStatistics
from .reliability import (
    EXIT_CODE_SIGTERM,
    BadDataError,
    NonFiniteStreak,
    NonFiniteTrainingError,
    StopRequest,
    check_bad_samples,
    debug_pause,
    release_output_dir,
    resident_memory_bytes,
)

logger = get_logger(__name__, log_level="INFO")


@dataclass
class LossTerms:
    """What a script's loss returns for one micro-batch; the loop weighs out the unreadable samples."""

    per_sample_loss: torch.Tensor  # (B,)
    t: torch.Tensor  # (B,): flow time, for the loss per t-bucket
    flags: dict[str, torch.Tensor] = field(default_factory=dict)  # (B,) each, logged as fractions of the samples


@dataclass
class Schedule:
    max_train_steps: int
    num_train_epochs: int  # sys.maxsize when streaming
    batches_per_epoch: int | None  # on each process; None when streaming


@dataclass
class LoopRecord:
    """What the loop saw on this process, for the debug dump."""

    sample_indices: list[int] = field(default_factory=list)
    flag_totals: dict[str, float] = field(default_factory=dict)
    samples_total: float = 0.0
    rss_bytes: list[int] = field(default_factory=list)  # resident memory after each step (the soak benchmark)
    interrupted: bool = False  # stopped by SIGTERM, after saving a checkpoint


def create_optimizer(trainable: list[torch.nn.Parameter], args: argparse.Namespace, accelerator: Accelerator):
    """AdamW with a linear warm-up, then a constant or cosine learning rate (`--lr_scheduler`)."""
    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
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


def optimizer_step(accelerator, optimizer, lr_scheduler, params, max_grad_norm: float, stats: StepStatistics):
    """Clip, gather the step's statistics, then step unless the loss or the gradient norm is not finite (the weights
    and Adam moments then keep their last good values). Returns (grad_norm, reduced statistics, skipped)."""
    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    totals = stats.reduce(accelerator)
    finite = bool(torch.isfinite(grad_norm) & torch.isfinite(stats.mean_loss(totals)))
    if finite or accelerator.scaler is not None:  # fp16: the grad scaler skips (and rescales) itself
        optimizer.step()
    skipped = not finite or accelerator.optimizer_step_was_skipped
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, totals, skipped


def train_loop(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model: torch.nn.Module,
    compute_loss: Callable[[dict, torch.Generator], LossTerms],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    trainable: list[torch.nn.Parameter],
    ema: EMAModel | None,
    progress: TrainingProgress,
    train_dataloader,
    epoch_aware: list,
    schedule: Schedule,
    validate: Callable[[int], None] | None,
    flag_logs: dict[str, str],
) -> LoopRecord:
    """Train from `progress` to `schedule.max_train_steps`. `model` is the prepared module the loss runs through,
    `epoch_aware` the dataset and sampler (their `set_epoch` is called), `validate(step)` runs with the EMA weights
    on the main process, and `flag_logs` names the flags of `LossTerms` and their log keys."""
    first_epoch, resume_batches = progress.epoch, progress.batches_in_epoch
    progress_bar = tqdm(
        range(schedule.max_train_steps),
        initial=progress.global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    record = LoopRecord(flag_totals=dict.fromkeys(flag_logs, 0.0))
    generator = torch.Generator(device=accelerator.device)
    max_grad_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")  # inf: measure, do not clip
    stats = StepStatistics(accelerator.device, flag_logs)
    streak = NonFiniteStreak(args.max_nonfinite_steps, progress.nonfinite_streak)
    limit, bad_fraction = args.checkpoints_total_limit, args.max_bad_sample_fraction

    def pause(event: str) -> None:
        if accelerator.is_main_process:
            debug_pause(event, args.debug_pause_at, args.output_dir, stop)

    with guard_run(accelerator, args.checkpoint_on_sigterm) as stop:
        for epoch in range(first_epoch, schedule.num_train_epochs):
            if progress.global_step >= schedule.max_train_steps or record.interrupted:
                break
            progress.epoch = epoch
            # accelerate re-applies its own epoch counter to the sampler and dataset on every pass (and a
            # `skip_first_batches` copy starts from it): pin it, so a resumed run sees the same epoch numbers.
            train_dataloader.set_epoch(epoch)
            for item in epoch_aware:
                item.set_epoch(epoch)
            skip = resume_batches if epoch == first_epoch else 0
            progress.batches_in_epoch = skip
            usable_in_pass = 0  # samples that trained, in the batches of this pass
            active_dataloader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
            for batch in active_dataloader:
                with accelerator.accumulate(model):
                    # The loss's noise and times: a fresh stream per (rank, epoch, batch), restored exactly on resume.
                    generator.manual_seed(
                        seed_from(args.seed, accelerator.process_index, epoch, progress.batches_in_epoch)
                    )
                    terms = compute_loss(batch, generator)
                    valid = batch["valid"].to(terms.per_sample_loss.dtype)  # (B,): unusable images weigh nothing
                    loss = (terms.per_sample_loss * valid).sum() / valid.sum().clamp_min(1.0)
                    accelerator.backward(loss)

                    stats.add(terms.per_sample_loss, terms.t, valid, batch["too_small"], **terms.flags)
                    if args.debug_dump_dir is not None:
                        record.sample_indices += batch["index"][batch["valid"]].tolist()

                    if accelerator.sync_gradients:
                        grad_norm, totals, skipped = optimizer_step(
                            accelerator, optimizer, lr_scheduler, trainable, max_grad_norm, stats
                        )
                progress.batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue

                # ---- a step boundary: every rank holds the same all-reduced `totals`, so takes the same decisions
                usable_in_pass += count_step(progress, record, stats, totals, skipped)
                if not skipped and ema is not None:  # a skipped step leaves the EMA alone too
                    ema.step(trainable)
                progress_bar.update(1)
                logs = step_logs(stats, totals, progress, epoch, lr_scheduler.get_last_lr()[0], grad_norm, ema)
                progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", grad_norm=f"{logs['grad_norm']:.3f}")
                accelerator.log(logs, step=progress.global_step)
                if args.debug_dump_dir is not None:
                    record.rss_bytes.append(resident_memory_bytes())

                # These stop the run before the step's checkpoint: the newest checkpoint stays the last good one.
                streak.update(skipped, progress.global_step, args.output_dir)
                progress.nonfinite_streak = streak.count
                check_bad_samples(
                    progress.corrupt_images, progress.images_seen, progress.too_small_images, bad_fraction
                )

                pause(f"step-{progress.global_step}")
                # A SIGTERM during the last step changes nothing: the run finishes and saves its final model.
                record.interrupted = stop.agreed(accelerator) and progress.global_step < schedule.max_train_steps
                if progress.global_step % args.checkpointing_steps == 0 or record.interrupted:
                    save_checkpoint(
                        accelerator, args.output_dir, limit, progress.global_step, model, ema, pause,
                        run_signature=progress.run_signature,
                    )  # fmt: skip
                if record.interrupted:
                    logger.warning(f"SIGTERM: stopping after step {progress.global_step}, whose checkpoint is saved")
                    break
                if validate is not None and progress.global_step % args.validation_steps == 0:
                    with ema_weights(ema, trainable):  # validate the weights that will be saved
                        validate(progress.global_step)

                stats.reset()
                if progress.global_step >= schedule.max_train_steps:
                    break
            if progress.batches_in_epoch == 0:  # would loop over empty epochs forever
                raise ValueError("The training data yielded no full batch.")
            if progress.batches_in_epoch > skip and usable_in_pass == 0:
                raise BadDataError(
                    f"Epoch {epoch} yielded no usable image: {progress.corrupt_images} unreadable and "
                    f"{progress.too_small_images} smaller than --resolution (--small_image_policy skip) so far."
                )
    progress_bar.close()
    return record


def count_step(progress: TrainingProgress, record: LoopRecord, stats: StepStatistics, totals, skipped: bool) -> int:
    """Add a finished step to the saved progress and to this run's record; returns its usable samples."""
    progress.global_step += 1
    progress.images_seen += stats.samples(totals)
    progress.corrupt_images += stats.corrupt(totals)
    progress.too_small_images += stats.too_small(totals)
    progress.skipped_steps += int(skipped)
    record.samples_total += stats.samples(totals)
    for name in record.flag_totals:
        record.flag_totals[name] += stats.flag_count(totals, name)
    return stats.samples(totals)


def step_logs(stats, totals, progress: TrainingProgress, epoch: int, lr: float, grad_norm, ema) -> dict:
    logs = stats.logs(totals)
    logs.update(
        lr=lr,
        grad_norm=grad_norm.item(),
        skipped_steps=progress.skipped_steps,
        corrupt_images=progress.corrupt_images,
        too_small_images=progress.too_small_images,
        epoch=epoch,
    )
    if ema is not None:
        logs["ema_decay"] = ema.cur_decay_value if ema.cur_decay_value is not None else 0.0
    return logs


@contextlib.contextmanager
def guard_run(accelerator: Accelerator, checkpoint_on_sigterm: bool):
    """Around the loop: SIGTERM handling (yields the StopRequest), and the trackers flushed when a reliability check
    stops the run, since the logs up to the failure are what explains it."""
    try:
        with StopRequest(checkpoint_on_sigterm) as stop:
            yield stop
    except (NonFiniteTrainingError, NonFiniteWeightsError, BadDataError):
        accelerator.end_training()
        raise


def finish_training(
    accelerator: Accelerator,
    args: argparse.Namespace,
    progress: TrainingProgress,
    record: LoopRecord,
    flag_logs: dict[str, str],
    model: torch.nn.Module,
    ema: EMAModel | None,
    trainable: list[torch.nn.Parameter],
    save_final_model: Callable[[], None],
) -> None:
    """Wait for every process, swap in the EMA weights for good, and save the final model on the main process (never
    with non-finite weights). After a SIGTERM, save nothing more and exit with EXIT_CODE_SIGTERM instead: the
    checkpoint is written, and the run is not finished."""
    accelerator.wait_for_everyone()
    write_debug_dump(args, accelerator, progress, record, flag_logs, model)
    if record.interrupted:
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


def write_debug_dump(
    args: argparse.Namespace,
    accelerator: Accelerator,
    progress: TrainingProgress,
    record: LoopRecord,
    flag_logs: dict[str, str],
    model: torch.nn.Module,
) -> None:
    """With the hidden --debug_dump_dir: what this rank saw, for the tests (rank<N>.json)."""
    if args.debug_dump_dir is None:
        return
    dump = {
        "num_processes": accelerator.num_processes,
        "process_index": accelerator.process_index,
        "global_step": progress.global_step,
        "sample_indices": record.sample_indices,
        **{key: record.flag_totals[name] / max(record.samples_total, 1.0) for name, key in flag_logs.items()},
        "skipped_steps": progress.skipped_steps,
        "corrupt_images": progress.corrupt_images,
        "too_small_images": progress.too_small_images,
        "images_seen": progress.images_seen,
        "weights_sha256": weights_digest(model),
        "interrupted": record.interrupted,
        "rss_bytes": record.rss_bytes,
    }
    os.makedirs(args.debug_dump_dir, exist_ok=True)
    with open(os.path.join(args.debug_dump_dir, f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(dump, f)
