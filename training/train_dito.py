#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Train a DiTo diffusion autoencoder, or LoRA adapters on its decoder, on an image folder or a `datasets` dataset.

Adapted from diffusers `examples/unconditional_image_generation/train_unconditional.py` (parse_args/main, accelerate
hooks that write `save_pretrained` folders into every `checkpoint-N/`, EMA around validation). The exact-resume scheme
follows NVlabs/edm2 `training/training_loop.py`: progress is a small saved state, and every random stream (data order,
augmentation, the loss's noise) is reseeded from (seed, position) instead of carried along. The code shared with the
other training scripts is the `diffusers_dito.training` library.

    accelerate launch training/train_dito.py --train_data_dir ./images --model_preset dito-b-f8c4 \
        --resolution 256 --train_batch_size 16 --output_dir dito-b

docs/training.md lists every flag and the resume, LoRA, multi-GPU and multi-node commands.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToLossOutput
from diffusers_dito.cli import OneLineArgumentParser, finite_float  # one-line usage errors, exit code 2
from diffusers_dito.metrics import (
    LPIPS_BACKBONE_ENV,
    MissingWeightsError,
    load_lpips,
    lpips_backbone_file,
    read_lpips_backbone,
)
from diffusers_dito.metrics.perceptual import LPIPS_BACKBONE_FILES
from diffusers_dito.models.autoencoder_dito import downsample_factor_of
from diffusers_dito.pipelines.loading import load_component
from diffusers_dito.training import arguments, performance
from diffusers_dito.training.accelerator import create_accelerator, log_reconstructions
from diffusers_dito.training.checkpoints import run_signature
from diffusers_dito.training.data import image_training_data, seed_from
from diffusers_dito.training.loop import TrainingRun, create_optimizer, masked_mean
from diffusers_dito.training.objectives import DiToTrainingObjective
from diffusers_dito.training.reliability import lock_output_dir, run_script
from diffusers_dito.training.trained_weights import (
    create_ema,
    save_lora_adapter,
    setup_trained_weights,
    trained_parameters,
)

logger = get_logger(__name__, log_level="INFO")

FLAG_LOGS = {"noise_synced": "noise_sync_fraction"}  # per-sample flag of the loss -> logged fraction
LPIPS_LOGS = {"flow_loss": "flow_loss", "lpips_loss": "lpips_loss"}  # the two terms of DiTo+LPIPS -> logged means


# ----------------------------------------------------------------------------------------------------------- args
def _read_model_config(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        with open(arguments.config_file(path)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        parser.error(f"--model_config {path}: cannot read a JSON model config ({e}).")


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Train a DiTo diffusion autoencoder (Chen et al., 2025).")

    data = parser.add_argument_group("data")
    arguments.add_data_source_arguments(data)
    arguments.add_streaming_arguments(data)
    arguments.add_data_loading_arguments(
        data,
        resolution_help="Training crop size (paper: 256).",
        flip_help="Random horizontal flips (paper augmentation: resize, random crop, random flip).",
    )

    model = parser.add_argument_group("model")
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_preset", type=str, choices=sorted(DITO_PRESETS), help="Train from scratch.")
    source.add_argument("--model_config", type=str, help="Train from scratch from a config.json (file or folder).")
    source.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        help="Start from a saved AutoencoderDiTo (or DiToPipeline folder, whose vae/ is used); required for LoRA.",
    )
    model.add_argument("--noise_sync_prob", type=float, default=0.1, help="Noise synchronisation p (paper: 0.1).")
    model.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for activation memory.")

    perceptual = parser.add_argument_group("DiTo+LPIPS (the paper's best-rFID variant)")
    perceptual.add_argument(
        "--lpips_weight",
        type=finite_float,
        default=0.0,
        help="Weight of LPIPS on the one-step estimate x_t - t*v (paper: 0.5; 0: the plain DiTo loss, bit for bit).",
    )
    perceptual.add_argument(
        "--lpips_backbone",
        type=str,
        default=None,
        help=f"torchvision's ImageNet checkpoint for LPIPS (vgg16-397923af.pth or alexnet-owt-7be5be79.pth); "
        f"default ${LPIPS_BACKBONE_ENV}, then torch's hub cache. Nothing is downloaded.",
    )
    perceptual.add_argument(
        "--lpips_net",
        type=str,
        default="vgg",
        choices=sorted(LPIPS_BACKBONE_FILES),
        help="LPIPS backbone (taming's: vgg).",
    )

    arguments.add_optimisation_arguments(
        parser,
        "optimisation (paper defaults: AdamW, lr 1e-4, betas 0.9/0.999, wd 0.01)",
        weight_decay=0.01,
        ema_by_default=False,
    )
    arguments.add_checkpoint_arguments(parser, default_output_dir="dito-model")

    val = parser.add_argument_group("validation and logging")
    val.add_argument(
        "--validation_steps", type=arguments.positive_int, default=1000, help="Reconstruct every N steps."
    )
    val.add_argument(
        "--num_validation_images", type=arguments.positive_int, default=4, help="The first N dataset images."
    )
    val.add_argument(
        "--validation_inference_steps",
        type=arguments.positive_int,
        default=None,
        help="Euler steps (default: the model's).",
    )
    arguments.add_tracker_arguments(val, project_name="train_dito")

    arguments.add_lora_arguments(
        parser,
        "LoRA (peft) on the decoder UNet",
        target_modules="conv1,conv2,time_emb_proj",
        target_help="Comma-separated module names inside vae.decoder_unet.",
    )
    return arguments.parse(parser, input_args, check=_check_args)


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """This script's own argument errors, reported at start-up (before any data or model is loaded)."""
    if not 0.0 <= args.noise_sync_prob <= 1.0:
        parser.error(f"--noise_sync_prob must be in [0, 1], got {args.noise_sync_prob}.")
    if not args.lpips_weight >= 0:
        parser.error(f"--lpips_weight must be >= 0, got {args.lpips_weight}.")
    if args.lpips_weight > 0:
        if args.resolution < 32:
            parser.error(f"--lpips_weight needs --resolution >= 32 (LPIPS' smallest input), got {args.resolution}.")
        try:  # found now, not after the data and model are loaded
            backbone = lpips_backbone_file(args.lpips_backbone, args.lpips_net)
        except MissingWeightsError:
            where = f"--lpips_backbone {args.lpips_backbone} is not a file" if args.lpips_backbone else "none given"
            parser.error(
                f"--lpips_weight {args.lpips_weight} needs torchvision's {LPIPS_BACKBONE_FILES[args.lpips_net]} "
                f"({where}): pass --lpips_backbone PATH or set ${LPIPS_BACKBONE_ENV}; nothing is downloaded."
            )
        try:  # and read now: a corrupt file or another network would stop the run only after its set-up
            read_lpips_backbone(backbone, args.lpips_net)
        except ValueError as err:
            parser.error(f"--lpips_backbone {err}")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no known length).")
    arguments.check_run_arguments(args, parser, "--pretrained_model_name_or_path", args.pretrained_model_name_or_path)
    if args.pretrained_model_name_or_path is not None:
        pretrained = args.pretrained_model_name_or_path
        arguments.check_output_dir_spares("--pretrained_model_name_or_path", pretrained, args.output_dir, parser)

    if args.model_preset is not None:
        config = DITO_PRESETS[args.model_preset]
    elif args.model_config is not None:
        config = _read_model_config(args.model_config, parser)
    else:  # hub ids are checked after loading
        config = arguments.read_model_config(args.pretrained_model_name_or_path, "vae", parser)
    if config is not None and args.resolution % downsample_factor_of(config):
        parser.error(
            f"--resolution {args.resolution} is not divisible by the model's down-sampling factor "
            f"{downsample_factor_of(config)}."
        )


# ----------------------------------------------------------------------------------------------------------- model
def build_vae(args: argparse.Namespace) -> AutoencoderDiTo:
    if args.pretrained_model_name_or_path is not None:
        return load_component(AutoencoderDiTo, args.pretrained_model_name_or_path, "vae", args.cache_dir)
    if args.model_preset is not None:
        return AutoencoderDiTo.from_config(DITO_PRESETS[args.model_preset])
    with open(arguments.config_file(args.model_config)) as f:
        return AutoencoderDiTo.from_config(json.load(f))


def lora_target_regex(target_modules: str) -> str:
    """The named modules of the decoder UNet only: the encoder, and with it the latent space, does not change."""
    return rf"decoder_unet\..*\.(?:{'|'.join(arguments.lora_target_names(target_modules))})"


# ---------------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def log_validation(vae, images, args, accelerator, global_step: int) -> float:
    """Reconstruct the fixed validation images with fixed decoder noise; log PSNR and an (original | recon) grid."""
    images = images.to(accelerator.device)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
    with accelerator.autocast():
        latents = vae.encode(images).latents
        recon = vae.decode(latents, num_inference_steps=args.validation_inference_steps, generator=generator).sample
    caption = "original | reconstruction"
    return log_reconstructions(
        accelerator, images, [recon], args.output_dir, global_step, "validation/reconstructions", caption
    )


# ---------------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> AutoencoderDiTo:
    """Train; returns the final model (EMA weights when --use_ema), as also saved to --output_dir."""
    accelerator = create_accelerator(args)
    lock_output_dir(args.output_dir, accelerator)  # one run per folder: a second run would overwrite this one's work

    # ---- data
    train_dataset, sampler, train_dataloader, validation_images = image_training_data(args, accelerator)

    # ---- model
    vae = build_vae(args).train()  # from_pretrained returns eval mode
    if args.resolution % vae.downsample_factor:
        raise ValueError(f"--resolution {args.resolution} is not divisible by {vae.downsample_factor}.")
    trainable = setup_trained_weights(
        vae, args, accelerator.device, accelerator.mixed_precision, lora_target_regex(args.lora_target_modules)
    )

    optimizer, lr_scheduler = create_optimizer(trainable, args, accelerator)
    lpips_model = load_lpips(args.lpips_backbone, args.lpips_net) if args.lpips_weight > 0 else None
    objective = DiToTrainingObjective(
        vae, args.noise_sync_prob, lpips_model, args.lpips_weight, performance.memory_format(args)
    )
    objective, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        objective, optimizer, train_dataloader, lr_scheduler
    )
    trainable = trained_parameters(vae)  # again: FSDP has replaced them with sharded ones, which the EMA follows
    ema = create_ema(trainable, vae, args.ema_decay, args.lora_rank > 0, accelerator.device) if args.use_ema else None
    # Every checkpoint-N/ holds vae/ and vae_ema/ save_pretrained folders (vae_lora/, vae_lora_ema/ with LoRA).
    logged = FLAG_LOGS | (LPIPS_LOGS if args.lpips_weight > 0 else {})
    run = TrainingRun(accelerator, args, train_dataloader, objective, vae, ema, trainable, name="vae", logged=logged)

    # ---- schedule and resume
    dataset_size = None if args.streaming else len(train_dataset)
    run.resume(dataset_size, run_signature(args, accelerator.num_processes, dataset_size, vae.config))
    encoder_params = sum(p.numel() for p in vae.encoder.parameters())
    decoder_params = sum(p.numel() for p in vae.decoder_unet.parameters())
    run.start(
        "DiTo training",
        num_examples="streaming" if args.streaming else len(train_dataset),
        parameters=f"encoder {encoder_params / 1e6:.2f}M, decoder {decoder_params / 1e6:.2f}M, "
        f"trained {sum(p.numel() for p in trainable) / 1e6:.3f}M"
        + (f" (LoRA rank {args.lora_rank} on the decoder)" if args.lora_rank > 0 else ""),
    )

    # ---- train: the step, top to bottom
    generator = torch.Generator(device=accelerator.device)  # the loss's noise and times, reseeded every micro-batch
    epoch_aware = [train_dataset] + ([sampler] if sampler is not None else [])
    with run:  # SIGTERM, non-finite streaks and unreadable data: see TrainingRun
        for epoch, batch in run.batches(epoch_aware):
            with accelerator.accumulate(objective):
                # A fresh random stream per (rank, epoch, batch): restored exactly on resume.
                generator.manual_seed(seed_from(args.seed, accelerator.process_index, epoch, run.batch_index))
                out = DiToLossOutput(**objective(batch["pixel_values"], generator))
                loss = masked_mean(out.per_sample_loss, batch["valid"])  # unreadable images weigh nothing
                accelerator.backward(loss)
                run.stats.add(out.per_sample_loss, out.t, batch, **{name: out[name] for name in logged})
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, run.max_grad_norm)
                    run.optimizer_step(optimizer, lr_scheduler, grad_norm)  # skipped if the loss or norm is not finite

            # After an optimizer step: EMA, logs, the run's checks and the checkpoint, in TrainingRun.
            end = run.end_batch()
            if end.validate:  # every rank: under FSDP the weights are gathered from all of them
                with run.validation() as model:  # the weights that will be saved (whole, on the main process)
                    if model is not None:
                        log_validation(model, validation_images, args, accelerator, run.progress.global_step)
            if end.stop:
                break

    final = run.finish()  # the final weights (the EMA's with --use_ema), whole, on the main process
    if final is not None:
        save_final_model(final, args)
    run.close()
    return vae


def save_final_model(vae: AutoencoderDiTo, args: argparse.Namespace) -> None:
    """A DiToPipeline folder, or with LoRA the adapter weights alone (load with `vae.load_lora_adapter`)."""
    if args.lora_rank > 0:
        save_lora_adapter(vae, args.output_dir)
        return
    from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

    from diffusers_dito import DiToPipeline  # imported late: the training loop does not need the pipeline

    pipeline = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    pipeline.training_data = args.dataset_name or f"image folder {Path(args.train_data_dir).name}"  # for the card
    pipeline.save_pretrained(args.output_dir)
    logger.info(f"Saved the DiToPipeline to {args.output_dir}")


if __name__ == "__main__":
    sys.exit(run_script(main, parse_args(), "train_dito.py"))
