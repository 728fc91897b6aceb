# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""The training loop's machinery, with one owner: the optimizer and its schedule, the batches of each epoch from where
a run stands, and `TrainingRun`, which does what every training script does around its own step.

Each script's `main` writes its step out, as diffusers' `train_unconditional.py` does: the batch, the loss,
`accelerator.backward`, clipping and the optimizer step (`TrainingRun.optimizer_step`, which skips a non-finite step).
One call then ends the batch (`TrainingRun.end_batch`): after an optimizer step it counts it, steps the EMA, logs, runs
the checks of reliability.py and writes the checkpoint, and it says whether to validate and whether to stop. Exact
resume follows NVlabs/edm2: the loss's `torch.Generator` is reseeded for every micro-batch from (seed, rank, epoch,
batch) (`seed_from`), the data order and augmentation from (seed, epoch[, index]), and
`accelerator.skip_first_batches` restores the data position, so a resumed run is bit-identical to one never stopped.

    >>> from diffusers_dito.training.loop import StepEnd
    >>> StepEnd(validate=False, stop=True).stop
    True
"""

import argparse
import contextlib
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

from . import sharding
from .accelerator import StepStatistics, StepTotals, init_trackers, log_banner
from .checkpoints import (
    NonFiniteWeightsError,
    TrainingProgress,
    check_finite_weights,
    register_checkpoint_hooks,
    resume,
    save_checkpoint,
)
from .performance import optimizer_kwargs
from .reliability import EXIT_CODE_SIGTERM, BadDataError, RunGuard, release_output_dir
from .testing import install_test_hooks
from .trained_weights import ema_weights

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


@dataclass
class StepEnd:
    """What the loop does after `TrainingRun.end_batch`."""

    validate: bool  # an optimizer step at a multiple of --validation_steps, and no SIGTERM
    stop: bool  # leave the loop: the last step, or a SIGTERM whose checkpoint is saved


class TrainingRun:
    """What every training script does around its own step, in one place: the checkpoint hooks and the progress they
    save, resume, the trackers and banner, the step's statistics and logs, the EMA, the run guard (SIGTERM,
    non-finite streaks, unreadable data), checkpoints, and the end of the run.

    `model` is the one model trained (inside the module `prepared` by `accelerator.prepare`, or that module itself); it
    is saved as `name/` in every checkpoint (`name_ema/` with an EMA, `name_lora/` with `--lora_rank`). `ema_params`
    are the parameters the EMA follows, listed after `prepare`. `logged` maps the per-sample values that the script's
    loss returns to their logged means (a flag's mean is a fraction). Used as a context manager around the loop, it
    holds the run guard and the progress bar.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        args: argparse.Namespace,
        train_dataloader,
        prepared: torch.nn.Module,
        model: torch.nn.Module,
        ema: EMAModel | None,
        ema_params: list[torch.nn.Parameter],
        name: str,
        logged: dict[str, str],
    ):
        self.accelerator, self.args, self.train_dataloader = accelerator, args, train_dataloader
        self.prepared, self.model, self.ema, self.ema_params = prepared, model, ema, ema_params
        self.name, self.logged = name, logged
        self.test_hooks = install_test_hooks(args, accelerator, train_dataloader)  # None without the hidden flags
        self.progress = register_checkpoint_hooks(
            accelerator, model, name, ema, ema_params, lora=getattr(args, "lora_rank", 0) > 0
        )
        self.stats = StepStatistics(accelerator.device, flag_names=list(logged))
        self.max_grad_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")  # inf: measure only
        self.schedule: Schedule | None = None
        self.interrupted = False  # by a SIGTERM, after a step whose checkpoint is saved
        self._step: tuple | None = None  # (StepTotals, skipped, grad_norm, lr) of the optimizer step just taken
        self._guard: RunGuard | None = None
        self._progress_bar: tqdm | None = None

    @property
    def batch_index(self) -> int:
        """The position of the current micro-batch in its epoch, on this process: a key of its random streams."""
        return self.progress.batches_in_epoch

    # ------------------------------------------------------------------------------------------ before the loop
    def resume(self, num_examples: int | None, signature: dict) -> Schedule:
        """Size the run (`num_examples` is None for a stream), then resume from --resume_from_checkpoint, refusing
        a checkpoint whose run signature (`checkpoints.run_signature`) differs from `signature`."""
        args = self.args
        self.schedule = make_schedule(self.train_dataloader, num_examples, args, self.accelerator)
        self.progress.run_signature = signature
        resume(
            self.accelerator,
            args.resume_from_checkpoint,
            args.output_dir,
            self.progress,
            self.ema,
            self.schedule.batches_per_epoch,
            allow_changed=args.allow_changed_resume,
        )
        return self.schedule

    def start(self, title: str, num_examples: int | str, parameters: str) -> None:
        """Start the trackers and log the banner."""
        init_trackers(self.accelerator, self.args)
        streaming = self.schedule.batches_per_epoch is None
        log_banner(
            title,
            self.args,
            self.accelerator,
            num_examples=num_examples,
            num_epochs="until max_train_steps" if streaming else self.schedule.num_train_epochs,
            max_train_steps=self.schedule.max_train_steps,
            start_step=self.progress.global_step,
            parameters=parameters,
        )

    def __enter__(self) -> "TrainingRun":
        self._guard = RunGuard(self.accelerator, self.args, self.progress.nonfinite_streak).__enter__()
        self._progress_bar = tqdm(
            range(self.schedule.max_train_steps),
            initial=self.progress.global_step,
            desc="Steps",
            disable=not self.accelerator.is_local_main_process,
        )
        return self

    def __exit__(self, *exc) -> None:
        self._progress_bar.close()
        self._guard.__exit__(*exc)

    # ---------------------------------------------------------------------------------------------- the loop
    def batches(self, epoch_aware: list) -> Iterator[tuple[int, dict]]:
        """(epoch, batch) from where the run stands to its end (`epoch_batches`)."""
        return epoch_batches(self.accelerator, self.train_dataloader, epoch_aware, self.progress, self.schedule)

    def optimizer_step(self, optimizer, lr_scheduler, grad_norm: torch.Tensor) -> None:
        """Gather the step's statistics from every process, then step (`optimizer_step`: skipped, weights and Adam
        moments untouched, when the loss or `grad_norm` is not finite)."""
        totals = self.stats.reduce(self.accelerator)  # the same on every rank, so every rank decides alike
        skipped = optimizer_step(self.accelerator, optimizer, lr_scheduler, totals, grad_norm)
        self._step = (totals, skipped, grad_norm, lr_scheduler.get_last_lr()[0])

    def end_batch(self) -> StepEnd:
        """Count the micro-batch. After an optimizer step: count the step, step the EMA (not after a skipped step),
        log, run the checks that stop a run before this step's checkpoint, save the checkpoint (every
        --checkpointing_steps, and after a SIGTERM), and say whether to validate and whether to stop."""
        self.progress.batches_in_epoch += 1
        if not self.accelerator.sync_gradients:
            return StepEnd(validate=False, stop=False)
        args, progress = self.args, self.progress
        totals, skipped, grad_norm, lr = self._step
        progress.count_step(totals, skipped)
        if self.ema is not None and not skipped:  # a skipped step leaves the EMA alone too
            self.ema.step(self.ema_params)
        self._log(totals, grad_norm, lr)
        self.interrupted = self._guard.after_step(progress, skipped, self.schedule.max_train_steps)
        if progress.global_step % args.checkpointing_steps == 0 or self.interrupted:
            save_checkpoint(
                self.accelerator, args.output_dir, args.checkpoints_total_limit, progress.global_step, self.model,
                self.ema, run_signature=progress.run_signature,
            )  # fmt: skip
        self.stats.reset()
        if self.interrupted:
            logger.warning(f"SIGTERM: stopping after step {progress.global_step}, whose checkpoint is saved")
            return StepEnd(validate=False, stop=True)
        return StepEnd(
            validate=progress.global_step % args.validation_steps == 0,
            stop=progress.global_step >= self.schedule.max_train_steps,
        )

    def _log(self, totals: StepTotals, grad_norm: torch.Tensor, lr: float) -> None:
        """The step's loss statistics, learning rate, gradient norm, EMA decay and counters: to the trackers, and the
        loss and gradient norm to the progress bar."""
        progress = self.progress
        logs = self.stats.logs(totals, self.logged)
        logs.update(
            lr=lr,
            grad_norm=grad_norm.item(),
            images_seen=progress.images_seen,
            skipped_steps=progress.skipped_steps,
            corrupt_images=progress.corrupt_images,
            too_small_images=progress.too_small_images,
            epoch=progress.epoch,
        )
        if self.ema is not None:
            logs["ema_decay"] = self.ema.cur_decay_value if self.ema.cur_decay_value is not None else 0.0
        self._progress_bar.update(1)
        self._progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", grad_norm=f"{logs['grad_norm']:.3f}")
        self.accelerator.log(logs, step=progress.global_step)

    @contextlib.contextmanager
    def validation(self):
        """The model to validate on the main process, with the weights that will be saved (the EMA's, if any), for
        the block; None on the other processes. Its time does not count towards the next step's throughput. Every
        rank enters it: under FSDP all of them gather the whole weights into the main process's copy
        (`sharding.gathered_copy`); without FSDP the others have nothing to do."""
        main = self.accelerator.is_main_process
        if main or sharding.is_sharded(self.accelerator):
            with ema_weights(self.ema, self.ema_params):
                model = sharding.gathered_copy(self.accelerator, self.prepared, self.model)
                yield model if main else None
        else:
            yield None
        self.stats.reset()

    # ------------------------------------------------------------------------------------------ after the loop
    def finish(self) -> torch.nn.Module | None:
        """Wait for every process; after a SIGTERM, exit with EXIT_CODE_SIGTERM (the checkpoint is written, the run is
        not finished). Otherwise swap in the EMA weights for good and refuse non-finite weights. Returns the model to
        save on the main process (`model` itself, or its whole copy under FSDP) and None on the others; `close`
        follows."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if self.test_hooks is not None:
            self.test_hooks.write_dump(accelerator, self.progress, self.model, self.interrupted)
        if self.interrupted:
            accelerator.end_training()
            logger.warning(
                f"Stopped by SIGTERM after step {self.progress.global_step} of {self.args.output_dir}: resume with "
                f"--resume_from_checkpoint latest. Exit code {EXIT_CODE_SIGTERM}."
            )
            raise SystemExit(EXIT_CODE_SIGTERM)
        if self.ema is not None:
            self.ema.copy_to(self.ema_params)
        try:
            check_finite_weights(self.model, None, "the final model")
        except NonFiniteWeightsError:
            accelerator.end_training()
            raise
        final = sharding.gathered_copy(accelerator, self.prepared, self.model)
        return final if accelerator.is_main_process else None

    def close(self) -> None:
        """The run is finished: free the output folder for the next run, and end the trackers. Every rank waits for the
        main process's final save first: a rank that tore down its process group while another still ran was seen
        to abort the launch at exit."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            release_output_dir(self.args.output_dir)
        self.accelerator.end_training()
