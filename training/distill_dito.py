#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Distil a trained DiTo's diffusion decoder into a 1-step (or 2-step) student: output distillation with paired noise.

For every batch the frozen teacher encodes the images, z = E(x), and decodes (z, ε) with `--teacher_steps` Euler steps
of its ODE, without gradient. The student, initialised from the teacher's decoder, decodes the same (z, ε) in
`--student_steps` steps through the stock `FlowMatchEulerDiscreteScheduler` (`AutoencoderDiTo.decode`, with gradients
through every step), and the loss is the L2 distance between the two decodes (`--loss_type l2`) or the same per
Laplacian-pyramid band with the finest band weighted up (`--loss_type laplacian`), plus an optional
`--data_loss_weight` × L2 to the images. Both decodes draw ε from one seed, so they start from the same noise. The
method follows the idea of SSDD (arXiv 2510.04961) and of Luhman & Luhman (2021): a student that maps noise to the
teacher's sample in one evaluation; the code is our own.

The student's encoder is the teacher's, bit for bit: it is frozen and never in the optimizer, so the latent space,
latent caches and latent DiTs trained on the teacher stay valid. The output is a normal `DiToPipeline` folder whose
`AutoencoderDiTo` has `num_inference_steps = --student_steps` in its config, so every decoding path (the pipelines,
the drop-in `vae=`, tiling, the CLI) decodes in one network evaluation with no code change.

Data, EMA, atomic checkpoints, exact resume, multi-process training and the bad-data and non-finite limits are those
of train_dito.py, shared through the `training` package.

    accelerate launch training/distill_dito.py --teacher_model_name_or_path dito-b --train_data_dir ./images \
        --resolution 256 --train_batch_size 16 --max_train_steps 20000 --output_dir dito-b-1step

docs/distillation.md has the method, the flags and the measured results.
"""

import argparse
import math
import os
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import AutoencoderDiTo, laplacian_l2_loss, patch_sliced_wasserstein_loss
from diffusers_dito.cli import OneLineArgumentParser  # one-line usage errors, exit code 2

# Run as a file, this script has training/ on sys.path, not the repository root: add the root for `training.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import arguments, performance, steps
from training.checkpointing import (
    create_ema,
    ema_weights,
    load_component,
    register_checkpoint_hooks,
    resume,
    run_signature,
    save_checkpoint,
)
from training.data import image_training_data, seed_from
from training.debug import install_debug_hooks
from training.logging_utils import (
    StepStatistics,
    create_accelerator,
    init_trackers,
    log_banner,
    save_validation_grid,
    to_uint8,
)
from training.performance import add_performance_arguments
from training.reliability import RunGuard, lock_output_dir, run_script

logger = get_logger(__name__, log_level="INFO")

LOSS_LOGS = {"distill_loss": "distill_loss", "data_loss": "data_loss", "swd_loss": "swd_loss"}  # terms -> logged means
SWD_NOISES = ("fresh", "paired")
SWD_MIN_RESOLUTION = 14  # patch_sliced_wasserstein_loss's defaults: 7 px patches on the 2 finest pyramid levels
FRESH_NOISE_KEY = 0x6672657368  # seed_from(seed, rank, epoch, batch, FRESH_NOISE_KEY): the --swd_noise fresh draws
LOSS_TYPES = ("l2", "laplacian")
MAX_STUDENT_STEPS = 2


# ----------------------------------------------------------------------------------------------------------- args
def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Distil a DiTo decoder into a 1-step (or 2-step) student.")

    data = parser.add_argument_group("data")
    arguments.add_data_source_arguments(data)
    arguments.add_streaming_arguments(data)
    arguments.add_data_loading_arguments(
        data, resolution_help="Training crop size.", flip_help="Random horizontal flips (as in train_dito.py)."
    )

    model = parser.add_argument_group("distillation")
    model.add_argument(
        "--teacher_model_name_or_path",
        type=str,
        required=True,
        help="The trained DiTo: a DiToPipeline folder (its vae/ is used) or an AutoencoderDiTo folder.",
    )
    model.add_argument(
        "--teacher_steps",
        type=arguments.positive_int,
        default=None,
        help="Euler steps of the teacher's target decode (default: the teacher's own default).",
    )
    model.add_argument(
        "--student_steps",
        type=int,
        choices=range(1, MAX_STUDENT_STEPS + 1),
        default=1,
        help="Euler steps of the student's decode, written into its config as num_inference_steps.",
    )
    model.add_argument(
        "--data_loss_weight",
        type=float,
        default=0.0,
        help="Weight of an extra L2 term between the student's decode and the images (0: distillation only).",
    )
    model.add_argument(
        "--loss_type",
        choices=LOSS_TYPES,
        default="l2",
        help="l2: the mean squared distance of the two decodes. laplacian: the same per Laplacian-pyramid band, the "
        "finest weighted --laplacian_fine_weight (diffusers_dito.laplacian_l2_loss; docs/distillation.md).",
    )
    model.add_argument(
        "--laplacian_fine_weight",
        type=float,
        default=4.0,
        help="--loss_type laplacian: weight of the finest band against 1 for the others.",
    )
    model.add_argument(
        "--laplacian_levels",
        type=arguments.positive_int,
        default=3,
        help="--loss_type laplacian: pyramid levels (band-pass levels and the low-pass residual).",
    )
    model.add_argument(
        "--swd_loss_weight",
        type=float,
        default=0.0,
        help="Weight of a distribution term: the patch sliced-Wasserstein distance between the student's decodes and "
        "the teacher's (diffusers_dito.losses.patch_sliced_wasserstein_loss; 0: none; docs/distillation.md).",
    )
    model.add_argument(
        "--swd_noise",
        choices=SWD_NOISES,
        default="fresh",
        help="--swd_loss_weight: fresh: the term scores a second student decode, from noise drawn afresh each step "
        "(no teacher decode of its own); paired: it scores the decode of the targets' own noise.",
    )
    model.add_argument(
        "--cache_teacher_targets",
        action="store_true",
        help="Small data: decode each training image's target once, from noise fixed per image, keep it in memory "
        "and reuse it in later epochs (needs --no-random_flip and no --streaming; see docs/distillation.md).",
    )
    model.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for activation memory.")

    arguments.add_optimisation_arguments(
        parser, "optimisation (AdamW; the paper's DiTo settings)", weight_decay=0.01, ema_by_default=False
    )
    arguments.add_checkpoint_arguments(parser, default_output_dir="dito-distilled")

    val = parser.add_argument_group("validation and logging")
    val.add_argument("--validation_steps", type=arguments.positive_int, default=500, help="Validate every N steps.")
    val.add_argument(
        "--num_validation_images", type=arguments.positive_int, default=4, help="The first N dataset images."
    )
    arguments.add_tracker_arguments(val, project_name="distill_dito")
    add_performance_arguments(parser)
    arguments.add_debug_arguments(parser)

    args = parser.parse_args(input_args)
    _check_args(args, parser)
    return args


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every argument error, reported at start-up (before any data or model is loaded)."""
    arguments.check_data_source(args, parser)
    if not 0.0 <= args.data_loss_weight < float("inf"):
        parser.error(f"--data_loss_weight must be a finite number >= 0, got {args.data_loss_weight}.")
    if not 0.0 <= args.swd_loss_weight < float("inf"):
        parser.error(f"--swd_loss_weight must be a finite number >= 0, got {args.swd_loss_weight}.")
    if args.swd_loss_weight and args.resolution < SWD_MIN_RESOLUTION:
        parser.error(f"--swd_loss_weight needs --resolution >= {SWD_MIN_RESOLUTION} (7 px patches, 2 pyramid levels).")
    if not 0.0 < args.laplacian_fine_weight < float("inf"):
        parser.error(f"--laplacian_fine_weight must be a finite number > 0, got {args.laplacian_fine_weight}.")
    if args.loss_type == "laplacian" and args.resolution < 3 * 2 ** (args.laplacian_levels - 1):
        parser.error(
            f"--laplacian_levels {args.laplacian_levels} halves a {args.resolution} px crop below 3 px; use at most "
            f"{1 + int(math.log2(args.resolution / 3))}."
        )
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no known length).")
    if args.cache_teacher_targets and (args.streaming or args.random_flip):
        parser.error("--cache_teacher_targets keeps one target per image: give --no-random_flip, and no --streaming.")
    arguments.check_run_arguments(args, parser, "--teacher_model_name_or_path", args.teacher_model_name_or_path)
    config = arguments.local_model_config(args.teacher_model_name_or_path, "vae")
    if config is None:  # hub ids are checked after loading
        return
    if args.resolution % arguments.vae_downsample_factor(config):
        parser.error(
            f"--resolution {args.resolution} is not divisible by the teacher's down-sampling factor "
            f"{arguments.vae_downsample_factor(config)}."
        )
    teacher_steps = args.teacher_steps or arguments.vae_config_value(config, "num_inference_steps")
    if teacher_steps <= args.student_steps:
        parser.error(
            f"--teacher_steps {teacher_steps} must be more than --student_steps {args.student_steps}: the student "
            "learns the teacher's many-step decode."
        )


# ----------------------------------------------------------------------------------------------------------- model
class DistillationObjective(torch.nn.Module):
    """The student's decode of (z, ε) against the teacher's, as a module's forward: DistributedDataParallel syncs
    gradients only for computations run through the wrapped module's `forward`."""

    def __init__(
        self,
        student: AutoencoderDiTo,
        student_steps: int,
        data_loss_weight: float,
        loss_type: str = "l2",
        laplacian_levels: int = 3,
        laplacian_fine_weight: float = 4.0,
        swd_loss_weight: float = 0.0,
        swd_noise: str = "fresh",
    ):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}.")
        if swd_noise not in SWD_NOISES:
            raise ValueError(f"`swd_noise` must be one of {SWD_NOISES}, got {swd_noise!r}.")
        self.student, self.student_steps, self.data_loss_weight = student, student_steps, data_loss_weight
        self.loss_type = loss_type
        self.laplacian = {"num_levels": laplacian_levels, "fine_weight": laplacian_fine_weight}
        self.swd_loss_weight, self.swd_noise = swd_loss_weight, swd_noise

    def forward(
        self,
        latents: torch.Tensor,
        targets: torch.Tensor,
        images: torch.Tensor,
        noise_seed: int | list[int],
        fresh_seed: int = 0,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        # The same seed(s) as the teacher's decode: the same ε, drawn by `decode` itself.
        generator = noise_generators(noise_seed, latents.device)
        sample = self.student.decode(latents, generator=generator, num_inference_steps=self.student_steps).sample
        if self.loss_type == "laplacian":
            distill_loss = laplacian_l2_loss(sample, targets, **self.laplacian)  # (B,)
        else:
            distill_loss = (sample.float() - targets.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        data_loss = (sample.float() - images.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        loss = distill_loss + self.data_loss_weight * data_loss if self.data_loss_weight else distill_loss
        swd_loss = self.distribution_loss(latents, targets, sample, fresh_seed, valid)  # scalar: one per batch
        if self.swd_loss_weight:
            loss = loss + self.swd_loss_weight * swd_loss
        swd_loss = swd_loss.detach().expand_as(distill_loss)  # (B,), for the per-sample logs
        return {"per_sample_loss": loss, "distill_loss": distill_loss, "data_loss": data_loss, "swd_loss": swd_loss}

    def distribution_loss(
        self, latents: torch.Tensor, targets: torch.Tensor, sample: torch.Tensor, fresh_seed: int, valid
    ) -> torch.Tensor:
        """The batch's patch SWD to the teacher's decodes (0 without --swd_loss_weight), on the readable images.
        With fresh noise the student decodes the same latents again from ε drawn from `fresh_seed`: the term
        needs no teacher decode of that noise, so the student meets new noise every step."""
        keep = slice(None) if valid is None else valid.bool()
        if not self.swd_loss_weight or (valid is not None and not keep.any()):
            return sample.new_zeros(())
        if self.swd_noise == "fresh":
            generator = torch.Generator(device=latents.device).manual_seed(fresh_seed)
            sample = self.student.decode(latents, generator=generator, num_inference_steps=self.student_steps).sample
        directions = torch.Generator().manual_seed(fresh_seed)  # CPU: the same directions on every device
        return patch_sliced_wasserstein_loss(sample[keep], targets[keep], generator=directions)


def noise_generators(noise_seed: int | list[int], device) -> torch.Generator | list[torch.Generator]:
    """One generator for the batch's ε, or one per image (`--cache_teacher_targets`: ε fixed per image)."""
    if isinstance(noise_seed, int):
        return torch.Generator(device=device).manual_seed(noise_seed)
    return [torch.Generator(device=device).manual_seed(seed) for seed in noise_seed]


@torch.no_grad()
def teacher_targets(
    teacher: AutoencoderDiTo, images: torch.Tensor, noise_seed: int | list[int], steps: int, accelerator
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = E(x) and the teacher's `steps`-step decode of (z, ε), with ε drawn from `noise_seed` (one per image when
    a list)."""
    generator = noise_generators(noise_seed, images.device)
    with accelerator.autocast():
        latents = teacher.encode(images).latents  # (B, C, h, w)
        targets = teacher.decode(latents, generator=generator, num_inference_steps=steps).sample  # (B, 3, H, W)
    return latents, targets


class TeacherTargetCache:
    """`--cache_teacher_targets`: each training image's (image, z, teacher decode), decoded the first time the image
    is drawn, from ε fixed per image (seeded by (seed, index)), and reused in later epochs.

    On a CPU the teacher's many-step decode costs about ten student steps, so with a small dataset (choose its size
    with --max_train_samples) the student takes many more steps in the same time on a fixed set of (z, ε) pairs.
    Resuming stays exact: a batch with any new image is decoded whole, so the teacher always decodes full batches,
    and each image's decode does not depend on the others in its batch. Memory: three image-sized tensors per image.
    """

    NOISE_KEY = 0x7461726765  # keeps these seeds apart from the per-batch ones: seed_from(seed, NOISE_KEY, index)

    def __init__(self, teacher: AutoencoderDiTo, steps: int, seed: int):
        self.teacher, self.steps, self.seed = teacher, steps, seed
        self.entries: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def noise_seeds(self, indices: list[int]) -> list[int]:
        return [seed_from(self.seed, self.NOISE_KEY, index) for index in indices]

    def lookup(self, batch: dict, accelerator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """The batch's images, latents and targets (each `(B, ...)`), and its per-image noise seeds."""
        indices = batch["index"].tolist()
        seeds = self.noise_seeds(indices)
        if any(index not in self.entries for index in indices):
            images = batch["pixel_values"]  # (B, 3, R, R)
            latents, targets = teacher_targets(self.teacher, images, seeds, self.steps, accelerator)
            for k, index in enumerate(indices):
                self.entries.setdefault(index, (images[k], latents[k], targets[k]))
        images, latents, targets = (torch.stack(column) for column in zip(*(self.entries[i] for i in indices)))
        return images, latents, targets, seeds


def build_student(args: argparse.Namespace) -> AutoencoderDiTo:
    """A second copy of the teacher whose config decodes in --student_steps; only its decoder trains."""
    student = load_component(AutoencoderDiTo, args.teacher_model_name_or_path, "vae", args.cache_dir)
    student.register_to_config(num_inference_steps=args.student_steps)
    student.requires_grad_(False)
    student.decoder_unet.requires_grad_(True).train()
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    return student


# ---------------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def log_validation(student, teacher, images, args, accelerator, global_step: int, teacher_steps: int) -> float:
    """Decode the fixed validation images with fixed noise; log the student's PSNR and (original | teacher |
    student) rows."""
    images = images.to(accelerator.device)
    _, targets = teacher_targets(teacher, images, args.seed, teacher_steps, accelerator)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
    student.eval()
    try:
        with accelerator.autocast():
            latents = student.encode(images).latents
            recon = student.decode(latents, generator=generator).sample  # its config's student_steps
    finally:
        student.decoder_unet.train()
    mse = ((recon.float() - images.float()) / 2).pow(2).mean(dim=(1, 2, 3))  # (N,), on the [0, 1] scale
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()
    rows = torch.cat([images.float().cpu(), targets.float().cpu(), recon.float().cpu()], dim=3)  # (N, 3, R, 3R)
    caption = f"original | teacher ({teacher_steps} steps) | student ({args.student_steps})"
    grid = to_uint8(torch.cat(list(rows), dim=1))  # (N·R, 3R, 3)
    save_validation_grid(accelerator, grid, args.output_dir, global_step, "validation/decodes", caption)
    accelerator.log({"validation/psnr": psnr}, step=global_step)
    logger.info(f"step {global_step}: validation PSNR of the student {psnr:.2f} dB ({len(images)} images)")
    return psnr


# ---------------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> AutoencoderDiTo:
    """Distil; returns the student (EMA weights with --use_ema), as also saved to --output_dir."""
    accelerator = create_accelerator(args)
    lock_output_dir(args.output_dir, accelerator)  # one run per folder: a second run would overwrite this one's work

    # ---- data (as train_dito.py)
    train_dataset, sampler, train_dataloader, validation_images = image_training_data(args, accelerator)
    debug = install_debug_hooks(args, accelerator, train_dataloader)  # the tests' record and pauses, or None

    # ---- the frozen teacher and its student
    teacher = load_component(AutoencoderDiTo, args.teacher_model_name_or_path, "vae", args.cache_dir)
    teacher.requires_grad_(False).eval().to(accelerator.device, memory_format=performance.memory_format(args))
    if args.resolution % teacher.downsample_factor:
        raise ValueError(f"--resolution {args.resolution} is not divisible by {teacher.downsample_factor}.")
    teacher_steps = args.teacher_steps or teacher.config.num_inference_steps
    if teacher_steps <= args.student_steps:
        raise ValueError(f"--teacher_steps {teacher_steps} must be more than --student_steps {args.student_steps}.")
    cache = TeacherTargetCache(teacher, teacher_steps, args.seed) if args.cache_teacher_targets else None
    student = build_student(args).to(accelerator.device, memory_format=performance.memory_format(args))
    # The EMA covers every weight: the frozen encoder's shadow is copied, not averaged, so it stays bit-identical.
    weights = list(student.parameters())
    trainable = [p for p in weights if p.requires_grad]  # the decoder's
    ema = create_ema(weights, student, args.ema_decay, lora=False, device=accelerator.device) if args.use_ema else None

    optimizer, lr_scheduler = steps.create_optimizer(trainable, args, accelerator)
    objective = DistillationObjective(
        student, args.student_steps, args.data_loss_weight, args.loss_type, args.laplacian_levels,
        args.laplacian_fine_weight, args.swd_loss_weight, args.swd_noise,
    )  # fmt: skip
    objective, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        objective, optimizer, train_dataloader, lr_scheduler
    )
    # Every checkpoint-N/ holds vae/ (the student) and vae_ema/ save_pretrained folders.
    progress = register_checkpoint_hooks(accelerator, student, "vae", ema, weights, lora=False)

    # ---- schedule and resume
    dataset_size = None if args.streaming else len(train_dataset)
    schedule = steps.make_schedule(train_dataloader, dataset_size, args, accelerator)
    progress.run_signature = run_signature(args, accelerator.num_processes, dataset_size, student.config)
    progress.run_signature.update(
        teacher_steps=teacher_steps,
        data_loss_weight=args.data_loss_weight,
        cache_teacher_targets=cache is not None,
        loss=distillation_loss_name(args),
    )
    resume(accelerator, args.resume_from_checkpoint, args.output_dir, progress, ema, schedule.batches_per_epoch,
           allow_changed=args.allow_changed_resume)  # fmt: skip

    init_trackers(accelerator, args)
    log_banner(
        "DiTo decoder distillation",
        args,
        accelerator,
        num_examples="streaming" if args.streaming else len(train_dataset),
        num_epochs="until max_train_steps" if args.streaming else schedule.num_train_epochs,
        max_train_steps=schedule.max_train_steps,
        start_step=progress.global_step,
        parameters=f"teacher {args.teacher_model_name_or_path} at {teacher_steps} steps -> student at "
        f"{args.student_steps}; trained {sum(p.numel() for p in trainable) / 1e6:.2f}M (the decoder)",
    )

    # ---- train: the step, top to bottom
    max_grad_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")  # inf: measure, do not clip
    stats = StepStatistics(accelerator.device, flag_names=list(LOSS_LOGS))
    progress_bar = steps.progress_bar(schedule, progress, accelerator)
    interrupted = False
    epoch_aware = [train_dataset] + ([sampler] if sampler is not None else [])
    with RunGuard(accelerator, args, progress.nonfinite_streak) as guard:
        for epoch, batch in steps.epoch_batches(accelerator, train_dataloader, epoch_aware, progress, schedule):
            with accelerator.accumulate(objective):
                if cache is None:
                    # ε of this (rank, epoch, batch), shared by the teacher's and the student's decode; so on resume.
                    noise_seed = seed_from(args.seed, accelerator.process_index, epoch, progress.batches_in_epoch)
                    images = batch["pixel_values"]  # (B, 3, R, R)
                    latents, targets = teacher_targets(teacher, images, noise_seed, teacher_steps, accelerator)
                else:  # ε fixed per image, its target decoded once
                    images, latents, targets, noise_seed = cache.lookup(batch, accelerator)
                # the --swd_noise fresh draws and the SWD's directions: a function of (rank, epoch, batch) too
                fresh_seed = seed_from(
                    args.seed, accelerator.process_index, epoch, progress.batches_in_epoch, FRESH_NOISE_KEY
                )
                out = objective(latents, targets, images, noise_seed, fresh_seed, batch["valid"])
                loss = steps.masked_mean(out["per_sample_loss"], batch["valid"])  # unreadable images weigh nothing
                accelerator.backward(loss)
                stats.add(out["per_sample_loss"], None, batch, **{name: out[name] for name in LOSS_LOGS})

                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, max_grad_norm)
                    totals = stats.reduce(accelerator)  # the same on every rank, so every rank decides alike
                    skipped = steps.optimizer_step(accelerator, optimizer, lr_scheduler, totals, grad_norm)
            progress.batches_in_epoch += 1
            if not accelerator.sync_gradients:
                continue

            # ---- the end of an optimizer step
            progress.count_step(totals, skipped)
            if ema is not None and not skipped:  # a skipped step leaves the EMA alone too
                ema.step(weights)
            logs = steps.step_logs(stats, totals, LOSS_LOGS, progress, lr_scheduler, grad_norm, ema)
            steps.log_step(accelerator, progress_bar, logs, progress.global_step)

            # Checks that stop the run before this step's checkpoint, and a SIGTERM that stops it after.
            interrupted = guard.after_step(progress, skipped, schedule.max_train_steps)
            if progress.global_step % args.checkpointing_steps == 0 or interrupted:
                save_checkpoint(
                    accelerator, args.output_dir, args.checkpoints_total_limit, progress.global_step, student, ema,
                    run_signature=progress.run_signature,
                )  # fmt: skip
            if interrupted:
                logger.warning(f"SIGTERM: stopping after step {progress.global_step}, whose checkpoint is saved")
                break
            if validation_images is not None and progress.global_step % args.validation_steps == 0:
                with ema_weights(ema, weights):  # validate the weights that will be saved
                    log_validation(
                        student, teacher, validation_images, args, accelerator, progress.global_step, teacher_steps
                    )

            stats.reset()
            if progress.global_step >= schedule.max_train_steps:
                break
    progress_bar.close()

    steps.finish_training(
        accelerator, args, progress, interrupted, student, ema, weights,
        lambda: save_final_model(student, args, teacher_steps), debug,
    )  # fmt: skip
    return student


def distillation_loss_name(args: argparse.Namespace) -> str:
    """The loss in words, for the run signature and the model card."""
    name = args.loss_type
    if args.loss_type == "laplacian":
        name = f"laplacian ({args.laplacian_levels} levels, finest band x{args.laplacian_fine_weight:g})"
    if args.swd_loss_weight:
        name += f" + {args.swd_loss_weight:g} x patch SWD ({args.swd_noise} noise)"
    return name


def save_final_model(student: AutoencoderDiTo, args: argparse.Namespace, teacher_steps: int) -> None:
    """A DiToPipeline folder whose model card names the teacher and both step counts."""
    from diffusers_dito import DiToPipeline  # imported late: the training loop does not need the pipeline

    pipeline = DiToPipeline(vae=student.eval(), scheduler=FlowMatchEulerDiscreteScheduler())
    pipeline.training_data = args.dataset_name or f"image folder {Path(args.train_data_dir).name}"  # for the card
    pipeline.distilled_from = (
        f"{args.teacher_model_name_or_path} (its {teacher_steps}-step Euler decode), into {args.student_steps} "
        f"step(s); loss {distillation_loss_name(args)}, data loss weight {args.data_loss_weight}"
    )
    pipeline.save_pretrained(args.output_dir)
    logger.info(f"Saved the {args.student_steps}-step DiToPipeline to {args.output_dir}")


if __name__ == "__main__":
    sys.exit(run_script(main, parse_args(), "distill_dito.py"))
