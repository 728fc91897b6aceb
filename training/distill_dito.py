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

The student's decoder may be lighter than the teacher's (`--student_config`: a `STUDENT_DECODER_PRESETS` name such as
`lite`, a JSON file, or an inline JSON object of `decoder_*` settings): its tensors whose name and shape are the
teacher's start from the teacher's values, the others from a fresh initialisation seeded by `--seed`, and the saved
folder's config holds the student's decoder, so it loads everywhere the teacher does.

Data, EMA, atomic checkpoints, exact resume, multi-process training and the bad-data and non-finite limits are those
of train_dito.py, shared through the `diffusers_dito.training` library.

    accelerate launch training/distill_dito.py --teacher_model_name_or_path dito-b --train_data_dir ./images \
        --resolution 256 --train_batch_size 16 --max_train_steps 20000 --output_dir dito-b-1step

docs/distillation.md has the method, the flags and the measured results.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import STUDENT_DECODER_PRESETS, AutoencoderDiTo
from diffusers_dito.atomic_files import save_folder_atomically
from diffusers_dito.cli import OneLineArgumentParser  # one-line usage errors, exit code 2
from diffusers_dito.models.autoencoder_dito import downsample_factor_of
from diffusers_dito.pipelines.loading import load_component
from diffusers_dito.training import arguments, performance
from diffusers_dito.training.accelerator import create_accelerator, log_reconstructions
from diffusers_dito.training.checkpoints import run_signature
from diffusers_dito.training.data import image_training_data, seed_from
from diffusers_dito.training.loop import TrainingRun, create_optimizer, masked_mean
from diffusers_dito.training.objectives import (
    LOSS_TYPES,
    SWD_NOISES,
    DistillationObjective,
    TeacherTargetCache,
    build_student,
    student_decoder_overrides,
    student_model_config,
    teacher_targets,
)
from diffusers_dito.training.reliability import lock_output_dir, run_script
from diffusers_dito.training.trained_weights import create_ema, trained_parameters

logger = get_logger(__name__, log_level="INFO")

LOSS_LOGS = {"distill_loss": "distill_loss", "data_loss": "data_loss", "swd_loss": "swd_loss"}  # terms -> logged means
SWD_MIN_RESOLUTION = 14  # patch_sliced_wasserstein_loss's defaults: 7 px patches on the 2 finest pyramid levels
FRESH_NOISE_KEY = 0x6672657368  # seed_from(seed, rank, epoch, batch, FRESH_NOISE_KEY): the --swd_noise fresh draws
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
        "--student_config",
        type=str,
        default="teacher",
        help=f"The student's decoder: a preset ({', '.join(STUDENT_DECODER_PRESETS)}; teacher: the teacher's own), "
        "a JSON file, or an inline JSON object of decoder_* settings of the teacher's config to change, e.g. "
        "'{\"decoder_layers_per_block\": 1}'. Tensors of the teacher's name and shape start from its values.",
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
    return arguments.parse(parser, input_args, check=_check_args)


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """This script's own argument errors, reported at start-up (before any data or model is loaded)."""
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
    teacher = args.teacher_model_name_or_path
    config = arguments.read_dito_model_config("--teacher_model_name_or_path", teacher, parser, args.cache_dir)
    arguments.check_output_dir_spares("--teacher_model_name_or_path", teacher, args.output_dir, parser)
    if args.resolution % downsample_factor_of(config):
        parser.error(
            f"--resolution {args.resolution} is not divisible by the teacher's down-sampling factor "
            f"{downsample_factor_of(config)}."
        )
    teacher_steps = args.teacher_steps or arguments.vae_config_value(config, "num_inference_steps")
    if teacher_steps <= args.student_steps:
        parser.error(
            f"--teacher_steps {teacher_steps} must be more than --student_steps {args.student_steps}: the student "
            "learns the teacher's many-step decode."
        )
    try:  # decoder keys of the right types, and a decoder that builds on the teacher's config
        student_model_config(config, student_decoder_overrides(args.student_config), args.student_steps)
    except ValueError as err:
        parser.error(f"--student_config {err}")


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
    caption = f"original | teacher ({teacher_steps} steps) | student ({args.student_steps})"
    return log_reconstructions(
        accelerator, images, [targets, recon], args.output_dir, global_step, "validation/decodes", caption
    )


# ---------------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> AutoencoderDiTo:
    """Distil; returns the student (EMA weights with --use_ema), as also saved to --output_dir."""
    accelerator = create_accelerator(args)
    lock_output_dir(args.output_dir, accelerator)  # one run per folder: a second run would overwrite this one's work

    # ---- data (as train_dito.py)
    train_dataset, sampler, train_dataloader, validation_images = image_training_data(args, accelerator)

    # ---- the frozen teacher and its student
    teacher = load_component(AutoencoderDiTo, args.teacher_model_name_or_path, "vae", args.cache_dir)
    teacher.requires_grad_(False).eval().to(accelerator.device, memory_format=performance.memory_format(args))
    if args.resolution % teacher.downsample_factor:
        raise ValueError(f"--resolution {args.resolution} is not divisible by {teacher.downsample_factor}.")
    teacher_steps = args.teacher_steps or teacher.config.num_inference_steps
    if teacher_steps <= args.student_steps:
        raise ValueError(f"--teacher_steps {teacher_steps} must be more than --student_steps {args.student_steps}.")
    cache = TeacherTargetCache(teacher, teacher_steps, args.seed) if args.cache_teacher_targets else None
    student_config = student_decoder_overrides(args.student_config)  # {}: the teacher's shape
    student = build_student(
        args.teacher_model_name_or_path, args.student_steps, args.cache_dir, args.gradient_checkpointing,
        student_config, args.seed,
    ).to(accelerator.device, memory_format=performance.memory_format(args))  # fmt: skip
    optimizer, lr_scheduler = create_optimizer(trained_parameters(student), args, accelerator)  # the decoder's
    objective = DistillationObjective(
        student, args.student_steps, args.data_loss_weight, args.loss_type, args.laplacian_levels,
        args.laplacian_fine_weight, args.swd_loss_weight, args.swd_noise,
    )  # fmt: skip
    objective, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        objective, optimizer, train_dataloader, lr_scheduler
    )
    # Listed after prepare (FSDP replaces them with sharded ones). The EMA covers every weight: the frozen encoder's
    # shadow is copied, not averaged, so it stays bit-identical.
    weights, trainable = list(student.parameters()), trained_parameters(student)
    ema = create_ema(weights, student, args.ema_decay, lora=False, device=accelerator.device) if args.use_ema else None
    # Every checkpoint-N/ holds vae/ (the student) and vae_ema/ save_pretrained folders.
    run = TrainingRun(
        accelerator, args, train_dataloader, objective, student, ema, weights, name="vae", logged=LOSS_LOGS
    )

    # ---- schedule and resume
    dataset_size = None if args.streaming else len(train_dataset)
    signature = run_signature(args, accelerator.num_processes, dataset_size, student.config)
    signature.update(
        teacher_steps=teacher_steps,
        data_loss_weight=args.data_loss_weight,
        cache_teacher_targets=cache is not None,
        loss=distillation_loss_name(args),
    )
    if student_config:  # absent for the teacher's shape, so that runs saved before the flag existed still resume
        signature.update(student_config=json.loads(json.dumps(student_config)))  # tuples as lists, as saved
    run.resume(dataset_size, signature)
    run.start(
        "DiTo decoder distillation",
        num_examples="streaming" if args.streaming else len(train_dataset),
        parameters=f"teacher {args.teacher_model_name_or_path} at {teacher_steps} steps -> student at "
        f"{args.student_steps}; trained {sum(p.numel() for p in trainable) / 1e6:.2f}M (the decoder)",
    )

    # ---- train: the step, top to bottom
    epoch_aware = [train_dataset] + ([sampler] if sampler is not None else [])
    with run:  # SIGTERM, non-finite streaks and unreadable data: see TrainingRun
        for epoch, batch in run.batches(epoch_aware):
            with accelerator.accumulate(objective):
                if cache is None:
                    # ε of this (rank, epoch, batch), shared by the teacher's and the student's decode; so on resume.
                    noise_seed = seed_from(args.seed, accelerator.process_index, epoch, run.batch_index)
                    images = batch["pixel_values"]  # (B, 3, R, R)
                    latents, targets = teacher_targets(teacher, images, noise_seed, teacher_steps, accelerator)
                else:  # ε fixed per image, its target decoded once
                    images, latents, targets, noise_seed = cache.lookup(batch, accelerator)
                # the --swd_noise fresh draws and the SWD's directions: a function of (rank, epoch, batch) too
                fresh_seed = seed_from(args.seed, accelerator.process_index, epoch, run.batch_index, FRESH_NOISE_KEY)
                out = objective(latents, targets, images, noise_seed, fresh_seed, batch["valid"])
                loss = masked_mean(out["per_sample_loss"], batch["valid"])  # unreadable images weigh nothing
                accelerator.backward(loss)
                run.stats.add(out["per_sample_loss"], None, batch, **{name: out[name] for name in LOSS_LOGS})
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, run.max_grad_norm)
                    run.optimizer_step(optimizer, lr_scheduler, grad_norm)  # skipped if the loss or norm is not finite

            # After an optimizer step: EMA, logs, the run's checks and the checkpoint, in TrainingRun.
            end = run.end_batch()
            if end.validate:  # every rank: under FSDP the weights are gathered from all of them
                with run.validation() as model:  # the weights that will be saved (whole, on the main process)
                    if model is not None:
                        log_validation(model, teacher, validation_images, args, accelerator,
                                       run.progress.global_step, teacher_steps)  # fmt: skip
            if end.stop:
                break

    final = run.finish()  # the final weights (the EMA's with --use_ema), whole, on the main process
    if final is not None:
        save_final_model(final, args, teacher_steps, student_decoder_name(args.student_config, student_config))
    run.close()
    return student


def distillation_loss_name(args: argparse.Namespace) -> str:
    """The loss in words, for the run signature and the model card."""
    name = args.loss_type
    if args.loss_type == "laplacian":
        name = f"laplacian ({args.laplacian_levels} levels, finest band x{args.laplacian_fine_weight:g})"
    if args.swd_loss_weight:
        name += f" + {args.swd_loss_weight:g} x patch SWD ({args.swd_noise} noise)"
    return name


def student_decoder_name(student_config_flag: str, overrides: dict) -> str | None:
    """The student's decoder in words, for the model card: the preset's name and its settings (None for the teacher's
    own shape)."""
    if not overrides:
        return None
    name = f"{student_config_flag} " if student_config_flag in STUDENT_DECODER_PRESETS else ""
    return name + json.dumps(overrides)


def save_final_model(
    student: AutoencoderDiTo, args: argparse.Namespace, teacher_steps: int, student_decoder: str | None = None
) -> None:
    """A DiToPipeline folder whose model card names the teacher, both step counts and, where it is not the
    teacher's, the student's decoder (`student_decoder_name`)."""
    from diffusers_dito import DiToPipeline  # imported late: the training loop does not need the pipeline

    pipeline = DiToPipeline(vae=student.eval(), scheduler=FlowMatchEulerDiscreteScheduler())
    pipeline.training_data = args.dataset_name or f"image folder {Path(args.train_data_dir).name}"  # for the card
    pipeline.distilled_from = (
        f"{args.teacher_model_name_or_path} (its {teacher_steps}-step Euler decode), into {args.student_steps} "
        f"step(s); loss {distillation_loss_name(args)}, data loss weight {args.data_loss_weight}"
    )
    if student_decoder is not None:
        pipeline.distilled_from += f"; student decoder: {student_decoder}"
    # Into a temporary folder first: a failed save leaves no model_index.json over half-written weights.
    save_folder_atomically(args.output_dir, pipeline.save_pretrained, last="model_index.json")
    logger.info(f"Saved the {args.student_steps}-step DiToPipeline to {args.output_dir}")


if __name__ == "__main__":
    sys.exit(run_script(main, parse_args(), "distill_dito.py"))
