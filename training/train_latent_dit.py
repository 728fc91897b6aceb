#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Train a class-conditional DiT on the latents of a trained, frozen DiTo: the second stage of the two-stage recipe.

The transformer learns flow matching on the scaled latents, (z − shift_factor)·scaling_factor, with target ε − z at
timestep t·1000 (`diffusers_dito.latent_flow_matching_loss`), so that `DiToDiTPipeline` and its stock
`FlowMatchEulerDiscreteScheduler` sample it. Class labels are dropped to the null class for classifier-free guidance.
Training from scratch follows facebookresearch/DiT `train.py` (DiT init, AdamW at 1e-4 without weight decay, EMA
0.9999, centre crops and flips); checkpoints, exact resume, logging and the multi-process set-up are the ones of
train_dito.py, shared through the `diffusers_dito.training` library.

    accelerate launch training/train_latent_dit.py --vae_model_name_or_path dito-b --train_data_dir ./imagenet \
        --dit_preset dit-xl-2 --resolution 256 --cache_latents ./imagenet-latents --output_dir dito-dit-xl

docs/training.md lists every flag, the latent cache, LoRA and the multi-GPU commands.
"""

import argparse
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import (
    DIT_PRESETS,
    AutoencoderDiTo,
    DiToDiTPipeline,
    DiToDiTTransformer2DModel,
    latent_flow_matching_loss,
)
from diffusers_dito.cli import OneLineArgumentParser  # one-line usage errors, exit code 2
from diffusers_dito.models.autoencoder_dito import downsample_factor_of
from diffusers_dito.pipelines.loading import load_component, local_model_config
from diffusers_dito.training import arguments, latent_cache
from diffusers_dito.training.accelerator import create_accelerator, save_validation_grid, to_uint8
from diffusers_dito.training.checkpoints import run_signature
from diffusers_dito.training.data import (
    EpochShuffleSampler,
    ImageDataset,
    class_names,
    load_hf_dataset,
    seed_from,
    training_dataloader,
)
from diffusers_dito.training.loop import TrainingRun, create_optimizer, masked_mean
from diffusers_dito.training.reliability import lock_output_dir, run_script
from diffusers_dito.training.trained_weights import (
    create_ema,
    save_lora_adapter,
    setup_trained_weights,
    trained_parameters,
)

logger = get_logger(__name__, log_level="INFO")

FLAG_LOGS = {"dropped": "class_dropout_fraction"}  # per-sample flag of the loss -> logged fraction
GRID_COLUMNS = 8  # validation samples per row


# ----------------------------------------------------------------------------------------------------------- args
def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(description="Train a class-conditional DiT on the latents of a frozen DiTo.")

    data = parser.add_argument_group("data")
    arguments.add_data_source_arguments(data)
    data.add_argument("--label_column", type=str, default="label", help="The column holding the class ids.")
    data.add_argument(
        "--cache_latents",
        type=str,
        default=None,
        help="Encode the data (and its flips) once into this folder; later runs train from it.",
    )
    data.add_argument("--cache_shard_size", type=arguments.positive_int, default=1024, help="Images per cache shard.")
    arguments.add_data_loading_arguments(
        data,
        resolution_help="Image size (centre crop); the DiT sees resolution / f latents.",
        flip_help="Random horizontal flips (DiT's only augmentation).",
    )

    model = parser.add_argument_group("model")
    model.add_argument(
        "--vae_model_name_or_path",
        type=str,
        required=True,
        help="The frozen DiTo: a DiToPipeline folder (its vae/ is used) or an AutoencoderDiTo folder.",
    )
    source = model.add_mutually_exclusive_group(required=True)
    source.add_argument("--dit_preset", type=str, choices=sorted(DIT_PRESETS), help="Train a DiT from scratch.")
    source.add_argument(
        "--pretrained_transformer_path",
        type=str,
        help="Start from a saved DiToDiTTransformer2DModel (or DiToDiTPipeline folder); required for LoRA.",
    )
    model.add_argument(
        "--class_dropout_prob", type=float, default=0.1, help="Null-class probability, for guidance (DiT: 0.1)."
    )
    model.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for activation memory.")

    arguments.add_optimisation_arguments(
        parser, "optimisation (DiT defaults: AdamW, lr 1e-4, no weight decay, EMA 0.9999)", 0.0, ema_by_default=True
    )
    arguments.add_checkpoint_arguments(parser, default_output_dir="dito-dit-model")

    val = parser.add_argument_group("validation and logging")
    val.add_argument("--validation_steps", type=arguments.positive_int, default=1000, help="Sample every N steps.")
    val.add_argument(
        "--num_validation_images", type=arguments.positive_int, default=8, help="Samples of classes 0, 1, ... in turn."
    )
    val.add_argument("--validation_guidance_scale", type=float, default=4.0, help="Classifier-free guidance scale.")
    val.add_argument("--validation_inference_steps", type=arguments.positive_int, default=50, help="Latent ODE steps.")
    val.add_argument(
        "--validation_decoder_inference_steps",
        type=arguments.positive_int,
        default=None,
        help="DiTo decoding steps (default: the VAE's).",
    )
    arguments.add_tracker_arguments(val, project_name="train_latent_dit")

    arguments.add_lora_arguments(
        parser,
        "LoRA (peft) on the DiT",
        target_modules="to_q,to_k,to_v,to_out.0",
        target_help="Comma-separated module names inside the transformer blocks.",
    )
    return arguments.parse(parser, input_args, check=_check_args)


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """This script's own argument errors, reported at start-up (before any data or model is loaded)."""
    if not 0.0 <= args.class_dropout_prob < 1.0:
        parser.error(f"--class_dropout_prob must be in [0, 1), got {args.class_dropout_prob}.")
    if args.validation_guidance_scale < 1.0:
        parser.error(
            f"--validation_guidance_scale must be >= 1 (1: no guidance), got {args.validation_guidance_scale}."
        )
    arguments.check_run_arguments(args, parser, "--pretrained_transformer_path", args.pretrained_transformer_path)

    vae_config = arguments.read_model_config(args.vae_model_name_or_path, "vae", parser)
    if vae_config is None:
        parser.error(
            f"--vae_model_name_or_path {args.vae_model_name_or_path} is not a DiToPipeline or AutoencoderDiTo folder "
            "(no config.json in it or in its vae/)."
        )
    factor = downsample_factor_of(vae_config)
    if args.resolution % factor:
        parser.error(f"--resolution {args.resolution} is not divisible by the VAE's down-sampling factor {factor}.")
    latent_size, channels = args.resolution // factor, arguments.vae_config_value(vae_config, "latent_channels")

    if args.dit_preset is not None:
        patch_size = DIT_PRESETS[args.dit_preset]["patch_size"]
        if latent_size % patch_size:
            parser.error(
                f"--resolution {args.resolution} gives {latent_size}x{latent_size} latents, which {args.dit_preset}'s "
                f"{patch_size}x{patch_size} patches do not tile."
            )
        return
    config = arguments.read_model_config(args.pretrained_transformer_path, "transformer", parser)
    if config is None:
        parser.error(
            f"--pretrained_transformer_path {args.pretrained_transformer_path} is not a DiToDiTPipeline or "
            "DiToDiTTransformer2DModel folder (no config.json in it or in its transformer/)."
        )
    expected = {"sample_size": latent_size, "in_channels": channels, "out_channels": channels}
    wrong = {key: config.get(key) for key, value in expected.items() if config.get(key) != value}
    if wrong:
        parser.error(
            f"--pretrained_transformer_path {args.pretrained_transformer_path} has {wrong}, but the VAE at "
            f"--resolution {args.resolution} gives latents of {channels}x{latent_size}x{latent_size}, so {expected}."
        )


def check_num_classes(args: argparse.Namespace, num_classes: int) -> None:
    """The data's classes against a pretrained transformer's label table (a preset is sized to the data)."""
    if num_classes < 1:
        raise ValueError(f"The data has no classes in --label_column {args.label_column!r}.")
    if args.pretrained_transformer_path is not None:
        config = local_model_config(args.pretrained_transformer_path, "transformer")
        if config["num_embeds_ada_norm"] != num_classes:
            raise ValueError(
                f"The data has {num_classes} classes, but --pretrained_transformer_path "
                f"{args.pretrained_transformer_path} was made for {config['num_embeds_ada_norm']} "
                "(num_embeds_ada_norm): give data with the same classes."
            )


# ----------------------------------------------------------------------------------------------------------- model
def build_transformer(args: argparse.Namespace, vae: AutoencoderDiTo, num_classes: int) -> DiToDiTTransformer2DModel:
    """A pretrained transformer, or a preset sized to the VAE's latents and the data's classes, DiT-initialised."""
    if args.pretrained_transformer_path is not None:
        transformer = load_component(
            DiToDiTTransformer2DModel, args.pretrained_transformer_path, "transformer", args.cache_dir
        )
    else:
        channels = vae.config.latent_channels
        config = {
            **DIT_PRESETS[args.dit_preset],
            "sample_size": args.resolution // vae.downsample_factor,
            "in_channels": channels,
            "out_channels": channels,  # the velocity, not a learned variance
            "num_embeds_ada_norm": num_classes,  # the null class is index num_classes
        }
        transformer = DiToDiTTransformer2DModel.from_config(config)
        transformer.initialize_weights()
    return transformer.train()  # its own random label dropout is off: the loss drops labels, reproducibly


def lora_target_regex(target_modules: str) -> str:
    return rf"transformer_blocks\..*\.(?:{'|'.join(arguments.lora_target_names(target_modules))})"


@torch.no_grad()
def training_latents(vae: AutoencoderDiTo, batch: dict, accelerator) -> torch.Tensor:
    """The batch's latents, cached or encoded now, scaled as DiToDiTPipeline expects: (z − shift)·scale."""
    if "latents" in batch:
        z = batch["latents"]  # (B, C, h, w)
    else:
        with accelerator.autocast():
            z = vae.encode(batch["pixel_values"]).latents  # (B, C, h, w)
    return (z.float() - vae.config.shift_factor) * vae.config.scaling_factor


def make_pipeline(transformer, vae, names: list[str]) -> DiToDiTPipeline:
    id2label = dict(enumerate(names))
    return DiToDiTPipeline(transformer, vae, FlowMatchEulerDiscreteScheduler(), id2label=id2label)


# ---------------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def log_validation(transformer, vae, names: list[str], args, accelerator, global_step: int) -> None:
    """A grid of samples of classes 0, 1, ... with classifier-free guidance and fixed noise."""
    pipeline = make_pipeline(transformer, vae, names)
    pipeline.set_progress_bar_config(disable=True)
    labels = [i % len(names) for i in range(args.num_validation_images)]
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
    transformer.eval()
    try:
        with accelerator.autocast():
            images = pipeline(
                labels,
                guidance_scale=args.validation_guidance_scale,
                num_inference_steps=args.validation_inference_steps,
                decoder_num_inference_steps=args.validation_decoder_inference_steps,
                generator=generator,
                output_type="pt",
            ).images  # (N, 3, R, R) in [0, 1]
    finally:
        transformer.train()

    columns = min(len(images), GRID_COLUMNS)
    rows = -(-len(images) // columns)
    padded = torch.cat([images.float().cpu() * 2 - 1, -torch.ones(rows * columns - len(images), *images.shape[1:])])
    grid = torch.cat([torch.cat(list(row), dim=2) for row in padded.split(columns)], dim=1)  # (3, rows·R, cols·R)
    caption = ", ".join(names[label] for label in labels)
    save_validation_grid(accelerator, to_uint8(grid), args.output_dir, global_step, "validation/samples", caption)
    logger.info(f"step {global_step}: {len(images)} validation samples (guidance {args.validation_guidance_scale})")


# ---------------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> DiToDiTTransformer2DModel:
    """Train; returns the final transformer (EMA weights with EMA), as also saved to --output_dir."""
    accelerator = create_accelerator(args)
    lock_output_dir(args.output_dir, accelerator)  # one run per folder: a second run would overwrite this one's work

    # ---- classes: from the cache, or from the dataset; checked before any model is built
    hf_dataset = None
    if args.cache_latents is not None and latent_cache.is_complete(args.cache_latents):
        names = latent_cache.read_index(args.cache_latents)["class_names"]
    else:
        with accelerator.main_process_first():  # the main process prepares the datasets cache, the others reuse it
            hf_dataset = load_hf_dataset(args, label_column=args.label_column)
        names = class_names(hf_dataset, args.label_column)
    check_num_classes(args, len(names))

    # ---- the frozen VAE and the training latents
    vae = load_component(AutoencoderDiTo, args.vae_model_name_or_path, "vae", args.cache_dir)
    vae.requires_grad_(False).eval().to(accelerator.device)
    if args.cache_latents is not None:
        cache_fingerprint = latent_cache.fingerprint(args, vae)
        if hf_dataset is not None:
            latent_cache.write_cache(args.cache_latents, hf_dataset, vae, names, cache_fingerprint, args, accelerator)
        latent_cache.check_fingerprint(args.cache_latents, cache_fingerprint)
        train_dataset = latent_cache.CachedLatentDataset(args.cache_latents, args.random_flip, args.seed)
        key, shape = "latents", train_dataset.latent_shape
    else:
        dataset_args = (args.image_column, args.resolution, args.random_flip, args.seed)
        train_dataset = ImageDataset(
            hf_dataset,
            *dataset_args,
            label_column=args.label_column,
            random_crop=False,
            small_image_policy=args.small_image_policy,
        )
        key, shape = "pixel_values", (3, args.resolution, args.resolution)
    sampler = EpochShuffleSampler(len(train_dataset), args.seed)
    train_dataloader = training_dataloader(train_dataset, sampler, args, key=key, shape=shape)

    # ---- the transformer
    transformer = build_transformer(args, vae, len(names))
    trainable = setup_trained_weights(
        transformer, args, accelerator.device, accelerator.mixed_precision, lora_target_regex(args.lora_target_modules)
    )
    lora = args.lora_rank > 0

    optimizer, lr_scheduler = create_optimizer(trainable, args, accelerator)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, train_dataloader, lr_scheduler
    )
    trainable = trained_parameters(transformer)  # again: FSDP has replaced them with sharded ones
    ema = create_ema(trainable, transformer, args.ema_decay, lora, accelerator.device) if args.use_ema else None
    # Every checkpoint-N/ holds transformer/ and transformer_ema/ (transformer_lora/, transformer_lora_ema/ with LoRA).
    run = TrainingRun(
        accelerator, args, train_dataloader, model, transformer, ema, trainable, name="transformer", logged=FLAG_LOGS
    )

    # ---- schedule and resume
    dataset_size = len(train_dataset)
    run.resume(dataset_size, run_signature(args, accelerator.num_processes, dataset_size, transformer.config))
    run.start(
        "latent DiT training",
        num_examples=f"{dataset_size} in {len(names)} classes, "
        + (f"latents cached in {args.cache_latents}" if args.cache_latents else "encoded on the fly"),
        parameters=f"transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M, "
        f"VAE {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M (frozen), "
        f"trained {sum(p.numel() for p in trainable) / 1e6:.3f}M" + (f" (LoRA rank {args.lora_rank})" if lora else ""),
    )

    # ---- train: the step, top to bottom
    generator = torch.Generator(device=accelerator.device)  # noise, times and label drops, reseeded every micro-batch
    with run:  # SIGTERM, non-finite streaks and unreadable data: see TrainingRun
        for epoch, batch in run.batches([train_dataset, sampler]):
            with accelerator.accumulate(model):
                # A fresh random stream per (rank, epoch, batch): restored exactly on resume.
                generator.manual_seed(seed_from(args.seed, accelerator.process_index, epoch, run.batch_index))
                latents = training_latents(vae, batch, accelerator)  # (B, C, h, w)
                out = latent_flow_matching_loss(
                    model, latents, batch["label"], len(names), args.class_dropout_prob, generator=generator
                )
                loss = masked_mean(out.per_sample_loss, batch["valid"])  # unreadable images weigh nothing
                accelerator.backward(loss)
                run.stats.add(out.per_sample_loss, out.t, batch, dropped=out.dropped)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, run.max_grad_norm)
                    run.optimizer_step(optimizer, lr_scheduler, grad_norm)  # skipped if the loss or norm is not finite

            # After an optimizer step: EMA, logs, the run's checks and the checkpoint, in TrainingRun.
            end = run.end_batch()
            if end.validate:
                with run.validation() as model:  # sample with the weights that will be saved (whole)
                    if model is not None:
                        log_validation(model, vae, names, args, accelerator, run.progress.global_step)
            if end.stop:
                break

    final = run.finish()  # the final weights (the EMA's with EMA), whole, on the main process
    if final is not None:
        save_final_model(final, vae, names, args)
    run.close()
    return transformer


def save_final_model(transformer, vae: AutoencoderDiTo, names: list[str], args: argparse.Namespace) -> None:
    """A DiToDiTPipeline folder (transformer, vae, scheduler, id2label), or with LoRA the adapter weights alone."""
    if args.lora_rank > 0:
        save_lora_adapter(transformer, args.output_dir)
        return
    pipeline = make_pipeline(transformer, vae, names)
    data = args.dataset_name or f"image folder {Path(args.train_data_dir).name}"
    pipeline.training_data = f"DiTo latents of {data}, {len(names)} classes"  # for the model card
    pipeline.save_pretrained(args.output_dir)
    logger.info(f"Saved the DiToDiTPipeline to {args.output_dir}")


if __name__ == "__main__":
    sys.exit(run_script(main, parse_args(), "train_latent_dit.py"))
