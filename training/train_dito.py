#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Train a DiTo diffusion autoencoder, or LoRA adapters on its decoder, on an image folder or a `datasets` dataset.

Adapted from diffusers `examples/unconditional_image_generation/train_unconditional.py` (parse_args/main, accelerate
hooks that write `save_pretrained` folders into every `checkpoint-N/`, EMA around validation). The exact-resume scheme
follows NVlabs/edm2 `training/training_loop.py`: progress is a small saved state, and every random stream (data order,
augmentation, the loss's noise) is reseeded from (seed, position) instead of carried along.

    accelerate launch training/train_dito.py --train_data_dir ./images --model_preset dito-b-f8c4 \
        --resolution 256 --train_batch_size 16 --output_dir dito-b

docs/training.md lists every flag and the resume, LoRA, multi-GPU and multi-node commands.
"""

import argparse
import contextlib
import functools
import hashlib
import inspect
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, cast_training_params
from diffusers.utils import is_wandb_available
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict
from tqdm.auto import tqdm

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToLossOutput, dito_flow_matching_loss

logger = get_logger(__name__, log_level="INFO")
# Dataloader workers have no accelerate state, so the data code logs through the standard library.
data_logger = logging.getLogger(__name__ + ".data")

NUM_T_BUCKETS = 4  # the loss is also logged per quarter of flow time t, where reconstruction gets hard (t -> 1)
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_adapter writes


# ----------------------------------------------------------------------------------------------------------- args
def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return number


def _config_file(path: str) -> Path:
    return Path(path) / "config.json" if Path(path).is_dir() else Path(path)


def _read_model_config(path: str, parser: argparse.ArgumentParser) -> dict:
    try:
        with open(_config_file(path)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        parser.error(f"--model_config {path}: cannot read a JSON model config ({e}).")


def _local_pretrained_config(path: str) -> dict | None:
    """The config of a local AutoencoderDiTo folder (or DiToPipeline folder); None for hub ids."""
    for candidate in (Path(path) / "vae" / "config.json", Path(path) / "config.json"):
        if candidate.is_file():
            with open(candidate) as f:
                return json.load(f)
    return None


def _downsample_factor(config: dict) -> int:
    default = inspect.signature(AutoencoderDiTo.__init__).parameters["block_out_channels"].default
    return 2 ** (len(config.get("block_out_channels", default)) - 1)


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a DiTo diffusion autoencoder (Chen et al., 2025).")

    data = parser.add_argument_group("data")
    data.add_argument("--train_data_dir", type=str, default=None, help="A folder of images (datasets' imagefolder).")
    data.add_argument("--dataset_name", type=str, default=None, help="A hub dataset id or a local dataset folder.")
    data.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's configuration name.")
    data.add_argument("--image_column", type=str, default="image", help="The column holding the images.")
    data.add_argument("--cache_dir", type=str, default=None, help="Where datasets and hub models are cached.")
    data.add_argument("--streaming", action="store_true", help="Stream the data instead of preparing it on disk.")
    data.add_argument("--shuffle_buffer_size", type=_positive_int, default=1000, help="Shuffle buffer (streaming).")
    data.add_argument("--max_train_samples", type=_positive_int, default=None, help="Use only the first N samples.")
    data.add_argument("--resolution", type=_positive_int, default=256, help="Training crop size (paper: 256).")
    data.add_argument(
        "--random_flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Random horizontal flips (paper augmentation: resize, random crop, random flip).",
    )
    data.add_argument(
        "--dataloader_num_workers", type=_non_negative_int, default=0, help="0: load in the main process."
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

    optim = parser.add_argument_group("optimisation (paper defaults: AdamW, lr 1e-4, betas 0.9/0.999, wd 0.01)")
    optim.add_argument("--learning_rate", type=float, default=1e-4, help="Constant learning rate after warm-up.")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=0.01)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--lr_warmup_steps", type=_non_negative_int, default=0, help="Linear warm-up steps.")
    optim.add_argument("--train_batch_size", type=_positive_int, default=16, help="Batch size per device.")
    optim.add_argument("--gradient_accumulation_steps", type=_positive_int, default=1)
    optim.add_argument("--max_train_steps", type=_positive_int, default=None, help="Overrides --num_train_epochs.")
    optim.add_argument("--num_train_epochs", type=_positive_int, default=100)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping; <= 0 disables it.")
    optim.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    optim.add_argument("--seed", type=_non_negative_int, default=0, help="Seeds init, data order and all noise.")
    optim.add_argument("--use_ema", action="store_true", help="Keep an EMA of the trained weights (saved at the end).")
    optim.add_argument("--ema_decay", type=float, default=0.9999)

    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--output_dir", type=str, default="dito-model", help="Checkpoints, logs and the final model.")
    ckpt.add_argument("--checkpointing_steps", type=_positive_int, default=500)
    ckpt.add_argument("--checkpoints_total_limit", type=_positive_int, default=None, help="Keep at most N.")
    ckpt.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder, or "latest".')

    val = parser.add_argument_group("validation and logging")
    val.add_argument("--validation_steps", type=_positive_int, default=1000, help="Reconstruct every N steps.")
    val.add_argument("--num_validation_images", type=_positive_int, default=4, help="The first N dataset images.")
    val.add_argument(
        "--validation_inference_steps", type=_positive_int, default=None, help="Euler steps (default: the model's)."
    )
    val.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "wandb", "all", "none"])
    val.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    val.add_argument("--tracker_project_name", type=str, default="train_dito")

    lora = parser.add_argument_group("LoRA (peft) on the decoder UNet")
    lora.add_argument("--lora_rank", type=_non_negative_int, default=0, help="0: train the whole model.")
    lora.add_argument("--lora_alpha", type=float, default=None, help="LoRA scaling numerator (default: the rank).")
    lora.add_argument(
        "--lora_target_modules",
        type=str,
        default="conv1,conv2,time_emb_proj",
        help="Comma-separated module names inside vae.decoder_unet.",
    )
    # Hidden: each rank writes what it saw (sample ids, noise-sync fraction, weight digest) for the tests.
    parser.add_argument("--debug_dump_dir", type=str, default=None, help=argparse.SUPPRESS)

    args = parser.parse_args(input_args)
    _check_args(args, parser)
    return args


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every argument error, reported at start-up (before any data or model is loaded)."""
    if (args.train_data_dir is None) == (args.dataset_name is None):
        parser.error("give exactly one of --train_data_dir and --dataset_name.")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        parser.error(f"--train_data_dir {args.train_data_dir} is not a folder.")
    if not 0.0 <= args.noise_sync_prob <= 1.0:
        parser.error(f"--noise_sync_prob must be in [0, 1], got {args.noise_sync_prob}.")
    if args.streaming and args.max_train_steps is None:
        parser.error("--streaming needs --max_train_steps (a stream has no known length).")
    if args.report_to == "wandb" and not is_wandb_available():
        parser.error("--report_to wandb needs `pip install wandb`.")
    if args.lora_rank > 0 and args.pretrained_model_name_or_path is None:
        parser.error("--lora_rank adapts a trained model: give it with --pretrained_model_name_or_path.")
    if args.lora_rank > 0 and not [m for m in args.lora_target_modules.split(",") if m.strip()]:
        parser.error("--lora_target_modules is empty.")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        parser.error(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a folder.")

    if args.model_preset is not None:
        config = DITO_PRESETS[args.model_preset]
    elif args.model_config is not None:
        config = _read_model_config(args.model_config, parser)
    else:
        config = _local_pretrained_config(args.pretrained_model_name_or_path)  # hub ids are checked after loading
    if config is not None and args.resolution % _downsample_factor(config):
        parser.error(
            f"--resolution {args.resolution} is not divisible by the model's down-sampling factor "
            f"{_downsample_factor(config)}."
        )


# ----------------------------------------------------------------------------------------------------------- data
def _seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of integer keys: one independent stream per (seed, position)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0])


def decode_image(value) -> PIL.Image.Image | None:
    """An RGB image from a datasets cell (Image(decode=False) dict, PIL image, path or bytes); None if corrupt."""
    try:
        if isinstance(value, dict):
            value = value["bytes"] if value.get("bytes") else value["path"]
        if isinstance(value, (bytes, bytearray)):
            value = io.BytesIO(value)
        image = value if isinstance(value, PIL.Image.Image) else PIL.Image.open(value)
        image.load()  # PIL decodes lazily: force it here, inside the try
        return image.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError... for bad files
        data_logger.warning(f"Skipping an unreadable image ({type(e).__name__}: {e}).")
        return None


def resize_and_crop(image: PIL.Image.Image, resolution: int, rng: np.random.Generator | None = None, flip=False):
    """Resize the short side to `resolution`, crop a square (random with `rng`, else central), maybe flip."""
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    image = image.resize((width, height), PIL.Image.Resampling.BICUBIC)
    if rng is None:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left, top = int(rng.integers(0, width - resolution + 1)), int(rng.integers(0, height - resolution + 1))
    image = image.crop((left, top, left + resolution, top + resolution))
    if rng is not None and flip and rng.random() < 0.5:
        image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (R, R, 3) in [-1, 1]
    return pixels.permute(2, 0, 1)  # (3, R, R)


class DiToImageDataset(torch.utils.data.Dataset):
    """Map-style training images. Augmentation is seeded by (seed, epoch, index), so a resumed run replays it."""

    def __init__(self, hf_dataset, image_column: str, resolution: int, random_flip: bool, seed: int):
        self.hf_dataset, self.image_column = hf_dataset, image_column
        self.resolution, self.random_flip, self.seed, self.epoch = resolution, random_flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # reaches the workers: they are re-created (and the dataset re-copied) every epoch

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def __getitem__(self, index: int) -> dict:
        image = decode_image(self.hf_dataset[index][self.image_column])
        if image is None:
            return {"index": index, "pixel_values": None}
        rng = np.random.default_rng(_seed(self.seed, self.epoch, index))
        return {"index": index, "pixel_values": resize_and_crop(image, self.resolution, rng, self.random_flip)}


class DiToStreamingImageDataset(torch.utils.data.IterableDataset):
    """Streaming training images; sample ids are positions in the epoch's shuffled stream."""

    def __init__(self, hf_dataset, image_column: str, resolution: int, random_flip: bool, seed: int):
        self.hf_dataset, self.image_column = hf_dataset, image_column
        self.resolution, self.random_flip, self.seed, self.epoch = resolution, random_flip, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.hf_dataset.set_epoch(epoch)  # reshuffles the stream with seed + epoch

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for position, example in enumerate(self.hf_dataset):
            if position % num_workers != worker_id:  # each worker decodes its own share of the stream
                continue
            image = decode_image(example[self.image_column])
            pixels = None
            if image is not None:
                rng = np.random.default_rng(_seed(self.seed, self.epoch, position))
                pixels = resize_and_crop(image, self.resolution, rng, self.random_flip)
            yield {"index": position, "pixel_values": pixels}


def collate_images(examples: list[dict], resolution: int) -> dict:
    """Stack a batch; a corrupt image keeps its slot (zeros, valid=False) so every tensor stays per-sample."""
    pixel_values = torch.zeros(len(examples), 3, resolution, resolution)  # (B, 3, R, R)
    valid = torch.tensor([e["pixel_values"] is not None for e in examples])  # (B,)
    for i, example in enumerate(examples):
        if example["pixel_values"] is not None:
            pixel_values[i] = example["pixel_values"]
    return {"pixel_values": pixel_values, "valid": valid, "index": torch.tensor([e["index"] for e in examples])}


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation that is a pure function of (seed, epoch): every rank draws the same one before accelerate shards
    it, and a resumed run replays it (with `skip_first_batches`)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        permutation_rng = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=permutation_rng).tolist())


def load_hf_dataset(args: argparse.Namespace):
    """The training split, images left undecoded (corrupt files are then caught in our own decode)."""
    if args.train_data_dir is not None:
        dataset = datasets.load_dataset(
            "imagefolder",
            data_dir=args.train_data_dir,
            split="train",
            cache_dir=args.cache_dir,
            streaming=args.streaming,
        )
    elif os.path.isfile(os.path.join(args.dataset_name, "state.json")) or os.path.isfile(
        os.path.join(args.dataset_name, "dataset_dict.json")
    ):  # a `save_to_disk` folder
        dataset = datasets.load_from_disk(args.dataset_name)
        dataset = dataset["train"] if isinstance(dataset, datasets.DatasetDict) else dataset
        dataset = dataset.to_iterable_dataset() if args.streaming else dataset
    else:
        dataset = datasets.load_dataset(
            args.dataset_name,
            args.dataset_config_name,
            split="train",
            cache_dir=args.cache_dir,
            streaming=args.streaming,
        )
    columns = dataset.column_names
    if columns is not None and args.image_column not in columns:
        raise ValueError(f"--image_column {args.image_column!r} is not in the dataset; its columns are {columns}.")
    features = dataset.features
    if features is not None and isinstance(features.get(args.image_column), datasets.Image):
        dataset = dataset.cast_column(args.image_column, datasets.Image(decode=False))
    dataset = dataset.select_columns([args.image_column])
    if args.max_train_samples is not None:
        if args.streaming:
            dataset = dataset.take(args.max_train_samples)
        else:
            dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return dataset


def load_validation_images(hf_dataset, image_column: str, count: int, resolution: int) -> torch.Tensor:
    """The first `count` readable images of the (unshuffled) dataset, centre-cropped: the same set at every step."""
    images = []
    for example in hf_dataset:
        image = decode_image(example[image_column])
        if image is not None:
            images.append(resize_and_crop(image, resolution))
        if len(images) == count:
            break
    if not images:
        raise ValueError("The dataset holds no readable image.")
    return torch.stack(images)  # (N, 3, R, R)


# ---------------------------------------------------------------------------------------------- model and state
class DiToTrainingObjective(torch.nn.Module):
    """`dito_flow_matching_loss` as a module's forward: DistributedDataParallel syncs gradients only for computations
    run through the wrapped module's `forward`, and the loss calls `vae.encode`/`vae.predict_velocity` directly."""

    def __init__(self, vae: AutoencoderDiTo, noise_sync_prob: float):
        super().__init__()
        self.vae, self.noise_sync_prob = vae, noise_sync_prob

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = dito_flow_matching_loss(self.vae, images, noise_sync_prob=self.noise_sync_prob, generator=generator)
        return dict(out)  # a plain dict survives accelerate's fp32 output conversion; rebuilt by the caller


@dataclass
class TrainingProgress:
    """Saved with every checkpoint (accelerate custom state): where training stands, counted in data."""

    global_step: int = 0  # optimizer steps taken (including skipped non-finite ones)
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` consumed on each process
    images_seen: int = 0  # over all processes, corrupt images excluded
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    corrupt_images: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def build_vae(args: argparse.Namespace) -> AutoencoderDiTo:
    if args.pretrained_model_name_or_path is not None:
        path = args.pretrained_model_name_or_path
        subfolder = "vae" if os.path.isdir(os.path.join(path, "vae")) else None
        return AutoencoderDiTo.from_pretrained(path, subfolder=subfolder, cache_dir=args.cache_dir)
    if args.model_preset is not None:
        return AutoencoderDiTo.from_config(DITO_PRESETS[args.model_preset])
    with open(_config_file(args.model_config)) as f:
        return AutoencoderDiTo.from_config(json.load(f))


def add_lora(vae: AutoencoderDiTo, args: argparse.Namespace) -> None:
    """Freeze the model and inject LoRA adapters into the named modules of the decoder UNet only."""
    names = "|".join(m.strip() for m in args.lora_target_modules.split(",") if m.strip())
    vae.requires_grad_(False)
    vae.add_adapter(
        LoraConfig(
            r=args.lora_rank,
            lora_alpha=args.lora_alpha if args.lora_alpha is not None else args.lora_rank,
            target_modules=rf"decoder_unet\..*\.(?:{names})",  # a regex string: peft full-matches module names
            init_lora_weights=True,  # B = 0, so training starts from the pretrained model exactly
        )
    )


def load_lora_state(vae: AutoencoderDiTo, folder: str) -> None:
    state = safetensors.torch.load_file(os.path.join(folder, LORA_WEIGHT_NAME))
    result = set_peft_model_state_dict(vae, state, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{folder} holds LoRA weights this model has no slot for: {result.unexpected_keys[:4]}")


def load_ema_folder(ema: EMAModel, folder: str) -> None:
    """Restore an EMA written by `EMAModel.save_pretrained`: weights in the model file, counters in its config."""
    state = {k: v for k, v in AutoencoderDiTo.load_config(folder).items() if k in ema.state_dict()}
    state["shadow_params"] = [p.detach() for p in AutoencoderDiTo.from_pretrained(folder).parameters()]
    ema.load_state_dict(state)


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, params: list[torch.nn.Parameter]):
    """Swap the EMA weights into `params` for the duration of the block (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def batch_statistics(out: DiToLossOutput, valid: torch.Tensor) -> torch.Tensor:
    """Sums to log, as one tensor so that a single all-reduce gathers them from every rank: loss, samples,
    noise-synced samples, corrupt slots, then the loss and sample count of each flow-time bucket."""
    per_sample_loss = out.per_sample_loss.detach()  # (B,)
    buckets = (out.t * NUM_T_BUCKETS).long().clamp(max=NUM_T_BUCKETS - 1)  # (B,)
    in_bucket = torch.nn.functional.one_hot(buckets, NUM_T_BUCKETS).to(valid.dtype) * valid[:, None]  # (B, K)
    totals = torch.stack(
        [(per_sample_loss * valid).sum(), valid.sum(), (out.noise_synced * valid).sum(), (1 - valid).sum()]
    )
    return torch.cat([totals, in_bucket.T @ per_sample_loss, in_bucket.sum(0)])  # (4 + 2K,)


def step_logs(totals: torch.Tensor, elapsed: float) -> dict[str, float]:
    """Loss, loss per t-bucket, noise-sync fraction and throughput from one step's reduced `batch_statistics`."""
    samples = totals[1].clamp_min(1.0)
    logs = {
        "loss": (totals[0] / samples).item(),
        "noise_sync_fraction": (totals[2] / samples).item(),
        "images_per_sec": totals[1].item() / max(elapsed, 1e-9),
    }
    bucket_loss, bucket_count = totals[4 : 4 + NUM_T_BUCKETS], totals[4 + NUM_T_BUCKETS :]
    for k in range(NUM_T_BUCKETS):
        if bucket_count[k] > 0:
            logs[f"loss_t/{k / NUM_T_BUCKETS:.2f}-{(k + 1) / NUM_T_BUCKETS:.2f}"] = (
                bucket_loss[k] / bucket_count[k]
            ).item()
    return logs


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def list_checkpoints(output_dir: Path) -> list[Path]:
    return sorted((p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()), key=checkpoint_step)


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def log_validation(vae, images, args, accelerator, global_step: int) -> float:
    """Reconstruct the fixed validation images with fixed decoder noise; log PSNR and an (original | recon) grid."""
    images = images.to(accelerator.device)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
    with accelerator.autocast():
        latents = vae.encode(images).latents
        recon = vae.decode(latents, num_inference_steps=args.validation_inference_steps, generator=generator).sample
    mse = ((recon.float() - images.float()) / 2).pow(2).mean(dim=(1, 2, 3))  # (N,), on the [0, 1] scale
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean().item()

    pairs = torch.cat([images.float().cpu(), recon.float().cpu()], dim=3)  # (N, 3, R, 2R): original | recon
    grid = torch.cat(list(pairs), dim=1)  # (3, N*R, 2R)
    grid = ((grid.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()  # (N*R, 2R, 3)
    folder = Path(args.output_dir) / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(grid).save(folder / f"step-{global_step:07d}.png")

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation/reconstructions", grid, global_step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log(
                {"validation/reconstructions": wandb.Image(grid, caption="original | reconstruction")},
                step=global_step,
            )
    accelerator.log({"validation/psnr": psnr}, step=global_step)
    logger.info(f"step {global_step}: validation PSNR {psnr:.2f} dB ({len(images)} images)")
    return psnr


def _tracker_config(args: argparse.Namespace) -> dict:
    # TensorBoard's hparams accept only scalars and strings.
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()}


# ---------------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> AutoencoderDiTo:
    """Train; returns the final model (EMA weights when --use_ema), as also saved to --output_dir."""
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

    # ---- data
    with accelerator.main_process_first():  # the main process prepares the datasets cache, the others reuse it
        hf_dataset = load_hf_dataset(args)
    validation_images = None
    if accelerator.is_main_process and args.validation_steps is not None:
        validation_images = load_validation_images(
            hf_dataset, args.image_column, args.num_validation_images, args.resolution
        )
    dataset_args = (args.image_column, args.resolution, args.random_flip, args.seed)
    if args.streaming:
        hf_stream = hf_dataset.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
        train_dataset, sampler = DiToStreamingImageDataset(hf_stream, *dataset_args), None
    else:
        train_dataset = DiToImageDataset(hf_dataset, *dataset_args)
        sampler = EpochShuffleSampler(len(train_dataset), args.seed)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        drop_last=True,  # equal batches on every rank and every step
        num_workers=args.dataloader_num_workers,
        collate_fn=functools.partial(collate_images, resolution=args.resolution),
    )

    # ---- model
    vae = build_vae(args).train()  # from_pretrained returns eval mode
    if args.resolution % vae.downsample_factor:
        raise ValueError(f"--resolution {args.resolution} is not divisible by {vae.downsample_factor}.")
    if args.lora_rank > 0:
        add_lora(vae, args)
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    vae.to(accelerator.device)
    if args.lora_rank > 0 and accelerator.mixed_precision in ("fp16", "bf16"):
        # Frozen weights in half precision save memory; the adapters stay fp32 for the optimizer.
        vae.to(dtype=torch.float16 if accelerator.mixed_precision == "fp16" else torch.bfloat16)
        cast_training_params(vae, dtype=torch.float32)
    trainable = [p for p in vae.parameters() if p.requires_grad]

    ema = None
    if args.use_ema:
        ema_model_args = {} if args.lora_rank > 0 else {"model_cls": AutoencoderDiTo, "model_config": vae.config}
        ema = EMAModel(trainable, decay=args.ema_decay, **ema_model_args)
        ema.to(accelerator.device)

    optimizer = torch.optim.AdamW(
        trainable,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    # accelerate steps the scheduler once per process per optimizer step, hence the factor.
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes
    )
    objective = DiToTrainingObjective(vae, args.noise_sync_prob)
    objective, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        objective, optimizer, train_dataloader, lr_scheduler
    )

    # ---- checkpoint hooks: every checkpoint-N/ holds save_pretrained (or save_lora_adapter) folders
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    if ema is not None and args.lora_rank > 0:
        accelerator.register_for_checkpointing(ema)  # LoRA EMA has no model class to save_pretrained

    def save_model_hook(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(models[0]).vae
            if args.lora_rank > 0:
                model.save_lora_adapter(os.path.join(checkpoint_dir, "vae_lora"))
                if ema is not None:  # a loadable adapter with the EMA weights too
                    with ema_weights(ema, trainable):
                        model.save_lora_adapter(os.path.join(checkpoint_dir, "vae_lora_ema"))
            else:
                model.save_pretrained(os.path.join(checkpoint_dir, "vae"))
                if ema is not None:
                    ema.save_pretrained(os.path.join(checkpoint_dir, "vae_ema"))
        weights.clear()  # already saved above: keep accelerate from writing a second copy

    def load_model_hook(models, checkpoint_dir):
        model = accelerator.unwrap_model(models.pop()).vae
        if args.lora_rank > 0:
            load_lora_state(model, os.path.join(checkpoint_dir, "vae_lora"))
            return
        loaded = AutoencoderDiTo.from_pretrained(checkpoint_dir, subfolder="vae")
        model.load_state_dict(loaded.state_dict())
        if ema is not None:
            load_ema_folder(ema, os.path.join(checkpoint_dir, "vae_ema"))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    # ---- schedule and resume
    if args.streaming:
        num_update_steps_per_epoch, max_train_steps, num_train_epochs = None, args.max_train_steps, sys.maxsize
    else:
        if len(train_dataloader) == 0:
            raise ValueError(
                f"{len(train_dataset)} training images make no full batch of {args.train_batch_size} on each of "
                f"{accelerator.num_processes} processes; lower --train_batch_size."
            )
        num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        max_train_steps = args.max_train_steps or args.num_train_epochs * num_update_steps_per_epoch
        num_train_epochs = math.ceil(max_train_steps / num_update_steps_per_epoch)

    resume_path = None
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        resume_path = checkpoints[-1] if checkpoints else None
        if resume_path is None:
            logger.info(f"No checkpoint in {output_dir}: starting a new run.")
    elif args.resume_from_checkpoint is not None:
        resume_path = Path(args.resume_from_checkpoint)
    if resume_path is not None:
        logger.info(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))  # model, optimizer, LR scheduler, EMA, progress, RNG states
        if ema is not None:
            ema.to(accelerator.device)
    if not args.streaming and progress.batches_in_epoch >= len(train_dataloader):  # saved at an epoch's last batch
        progress.epoch, progress.batches_in_epoch = progress.epoch + 1, 0
    first_epoch, resume_batches = progress.epoch, progress.batches_in_epoch

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=_tracker_config(args))
    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    encoder_params = sum(p.numel() for p in vae.encoder.parameters())
    decoder_params = sum(p.numel() for p in vae.decoder_unet.parameters())
    logger.info("***** Running DiTo training *****")
    logger.info(f"  Num examples = {'streaming' if args.streaming else len(train_dataset)}")
    logger.info(f"  Num epochs = {'until max_train_steps' if args.streaming else num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {max_train_steps} (starting at {progress.global_step})")
    logger.info(
        f"  Parameters: encoder {encoder_params / 1e6:.2f}M, decoder {decoder_params / 1e6:.2f}M, "
        f"trained {sum(p.numel() for p in trainable) / 1e6:.3f}M"
        + (f" (LoRA rank {args.lora_rank} on the decoder)" if args.lora_rank > 0 else "")
    )

    # ---- train
    progress_bar = tqdm(
        range(max_train_steps),
        initial=progress.global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    generator = torch.Generator(device=accelerator.device)
    max_grad_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")  # inf: measure, do not clip
    window = torch.zeros(4 + 2 * NUM_T_BUCKETS, device=accelerator.device)  # batch_statistics summed over a step
    window_start = time.perf_counter()
    seen_indices, noise_synced_total, samples_total = [], 0.0, 0.0

    for epoch in range(first_epoch, num_train_epochs):
        if progress.global_step >= max_train_steps:
            break
        progress.epoch = epoch
        # accelerate re-applies its own epoch counter to the sampler and dataset on every pass (and a
        # `skip_first_batches` copy starts from it): pin it, so a resumed run sees the same epoch numbers.
        train_dataloader.set_epoch(epoch)
        train_dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        skip = resume_batches if epoch == first_epoch else 0
        progress.batches_in_epoch = skip
        active_dataloader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for batch in active_dataloader:
            with accelerator.accumulate(objective):
                # The loss's noise and times: a fresh stream per (rank, epoch, batch), restored exactly on resume.
                generator.manual_seed(_seed(args.seed, accelerator.process_index, epoch, progress.batches_in_epoch))
                out = DiToLossOutput(**objective(batch["pixel_values"], generator))
                valid = batch["valid"].to(out.per_sample_loss.dtype)  # (B,): corrupt images weigh nothing
                loss = (out.per_sample_loss * valid).sum() / valid.sum().clamp_min(1.0)
                accelerator.backward(loss)

                window += batch_statistics(out, valid)
                if args.debug_dump_dir is not None:
                    seen_indices += batch["index"][batch["valid"]].tolist()

                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, max_grad_norm)
                    totals = accelerator.reduce(window.clone(), reduction="sum")  # same on every rank
                    step_loss = totals[0] / totals[1].clamp_min(1.0)
                    finite = bool(torch.isfinite(grad_norm) & torch.isfinite(step_loss))
                    if finite or accelerator.scaler is not None:  # fp16: the grad scaler skips (and rescales) itself
                        optimizer.step()
                    skipped = not finite or accelerator.optimizer_step_was_skipped
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            progress.batches_in_epoch += 1

            if accelerator.sync_gradients:
                progress.global_step += 1
                progress.images_seen += int(totals[1])
                progress.corrupt_images += int(totals[3])
                progress.skipped_steps += int(skipped)
                noise_synced_total += float(totals[2])
                samples_total += float(totals[1])
                if skipped:
                    logger.warning(f"step {progress.global_step}: non-finite loss or gradient, optimizer step skipped")
                elif ema is not None:
                    ema.step(trainable)
                progress_bar.update(1)

                logs = step_logs(totals, time.perf_counter() - window_start)
                logs.update(
                    lr=lr_scheduler.get_last_lr()[0],
                    grad_norm=grad_norm.item(),
                    skipped_steps=progress.skipped_steps,
                    corrupt_images=progress.corrupt_images,
                    epoch=epoch,
                )
                if ema is not None:
                    logs["ema_decay"] = ema.cur_decay_value if ema.cur_decay_value is not None else 0.0
                progress_bar.set_postfix(loss=f"{logs['loss']:.4f}", grad_norm=f"{logs['grad_norm']:.3f}")
                accelerator.log(logs, step=progress.global_step)

                if progress.global_step % args.checkpointing_steps == 0:
                    save_checkpoint(accelerator, args, progress.global_step)
                if validation_images is not None and progress.global_step % args.validation_steps == 0:
                    with ema_weights(ema, trainable):  # validate the weights that will be saved
                        model = accelerator.unwrap_model(objective).vae
                        log_validation(model, validation_images, args, accelerator, progress.global_step)

                window.zero_()
                window_start = time.perf_counter()
                if progress.global_step >= max_train_steps:
                    break
        if progress.batches_in_epoch == 0:  # would loop over empty epochs forever
            raise ValueError("The training data yielded no full batch.")
    progress_bar.close()

    # ---- save
    accelerator.wait_for_everyone()
    vae = accelerator.unwrap_model(objective).vae
    if args.debug_dump_dir is not None:
        dump = {
            "num_processes": accelerator.num_processes,
            "process_index": accelerator.process_index,
            "global_step": progress.global_step,
            "sample_indices": seen_indices,
            "noise_sync_fraction": noise_synced_total / max(samples_total, 1.0),
            "skipped_steps": progress.skipped_steps,
            "corrupt_images": progress.corrupt_images,
            "images_seen": progress.images_seen,
            "weights_sha256": weights_digest(vae),
        }
        os.makedirs(args.debug_dump_dir, exist_ok=True)
        with open(os.path.join(args.debug_dump_dir, f"rank{accelerator.process_index}.json"), "w") as f:
            json.dump(dump, f)
    if ema is not None:
        ema.copy_to(trainable)
    if accelerator.is_main_process:
        save_final_model(vae, args)
    accelerator.end_training()
    return vae


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, global_step: int) -> None:
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process and args.checkpoints_total_limit is not None:
        # Make room for the new one: keep at most `checkpoints_total_limit` after saving.
        checkpoints = list_checkpoints(output_dir)
        for old in checkpoints[: max(0, len(checkpoints) - args.checkpoints_total_limit + 1)]:
            logger.info(f"Removing {old} (--checkpoints_total_limit {args.checkpoints_total_limit})")
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    path = output_dir / f"checkpoint-{global_step}"
    accelerator.save_state(str(path))  # on every process: each one saves its own random state
    logger.info(f"Saved {path}")


def save_final_model(vae: AutoencoderDiTo, args: argparse.Namespace) -> None:
    """A DiToPipeline folder, or with LoRA the adapter weights alone (load with `vae.load_lora_adapter`)."""
    if args.lora_rank > 0:
        vae.save_lora_adapter(args.output_dir)
        logger.info(f"Saved the LoRA adapter to {os.path.join(args.output_dir, LORA_WEIGHT_NAME)}")
        return
    from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

    from diffusers_dito import DiToPipeline  # imported late: the training loop does not need the pipeline

    pipeline = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    pipeline.training_data = args.dataset_name or f"image folder {Path(args.train_data_dir).name}"  # for the card
    pipeline.save_pretrained(args.output_dir)
    logger.info(f"Saved the DiToPipeline to {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
