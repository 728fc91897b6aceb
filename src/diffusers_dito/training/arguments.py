# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Flags that every training script has, and the start-up checks that go with them.

Each script builds its own parser and adds these groups; every argument error is reported by `parser.error` (one line,
exit code 2) before any data or model is loaded.
"""

import argparse
import inspect
import math
import os
from pathlib import Path

from diffusers.utils import is_wandb_available

from ..models.autoencoder_dito import AutoencoderDiTo
from ..pipelines.loading import dito_model_config, local_model_config
from . import performance
from .checkpoints import COMPLETE_MARKER, is_complete_checkpoint
from .data import SMALL_IMAGE_POLICIES
from .reliability import EXIT_CODE_SIGTERM


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return number


def positive_finite_float(value: str) -> float:
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {value}")
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value}")
    return number


def config_file(path: str) -> Path:
    """`path` itself, or the `config.json` inside it when it is a folder."""
    return Path(path) / "config.json" if Path(path).is_dir() else Path(path)


def read_model_config(path: str, subfolder: str, parser: argparse.ArgumentParser) -> dict | None:
    """The config of a local model folder or of a local pipeline's `subfolder` component (`local_model_config`);
    None for a Hub id or a path that does not exist. An unreadable config.json is a usage error."""
    try:
        return local_model_config(path, subfolder)
    except ValueError as err:
        parser.error(str(err))


def read_dito_model_config(
    flag: str, path: str, parser: argparse.ArgumentParser, cache_dir: str | None = None
) -> dict:
    """The `AutoencoderDiTo` config that `flag` names (`dito_model_config`: a local DiTo folder or a Hub model), or
    a usage error that says what `path` holds instead, before anything is locked or loaded."""
    try:
        return dito_model_config(path, cache_dir)
    except ValueError as err:
        parser.error(f"{flag} {err}")


def check_output_dir_spares(flag: str, path: str, output_dir: str, parser: argparse.ArgumentParser) -> None:
    """A usage error where `--output_dir` is the local model folder `flag` names, or holds it: the final save (and the
    checkpoints) would be written over that model."""
    if not os.path.exists(path):  # a Hub model: the run writes into a folder of its own
        return
    model, output = Path(path).resolve(), Path(output_dir).resolve()
    if output == model or output in model.parents:
        where = "is" if output == model else "holds"
        parser.error(
            f"--output_dir {output_dir} {where} the {flag} folder {path}: the run would save over that model; give "
            "another --output_dir."
        )


def vae_config_value(config: dict, name: str):
    """An AutoencoderDiTo config value, or its default when the config leaves it out."""
    return config.get(name, inspect.signature(AutoencoderDiTo.__init__).parameters[name].default)


# ------------------------------------------------------------------------------------------------ argument groups
def add_data_source_arguments(group) -> None:
    group.add_argument("--train_data_dir", type=str, default=None, help="A folder of images (datasets' imagefolder).")
    group.add_argument("--dataset_name", type=str, default=None, help="A hub dataset id or a local dataset folder.")
    group.add_argument("--dataset_config_name", type=str, default=None, help="The dataset's configuration name.")
    group.add_argument("--image_column", type=str, default="image", help="The column holding the images.")
    group.add_argument("--cache_dir", type=str, default=None, help="Where datasets and hub models are cached.")


def add_streaming_arguments(group) -> None:
    group.add_argument("--streaming", action="store_true", help="Stream the data instead of preparing it on disk.")
    group.add_argument("--shuffle_buffer_size", type=positive_int, default=1000, help="Shuffle buffer (streaming).")


def add_data_loading_arguments(group, resolution_help: str, flip_help: str) -> None:
    group.add_argument("--max_train_samples", type=positive_int, default=None, help="Use only the first N samples.")
    group.add_argument("--resolution", type=positive_int, default=256, help=resolution_help)
    group.add_argument("--random_flip", action=argparse.BooleanOptionalAction, default=True, help=flip_help)
    group.add_argument(
        "--dataloader_num_workers", type=non_negative_int, default=0, help="0: load in the main process."
    )
    group.add_argument(
        "--small_image_policy",
        type=str,
        default="upscale",
        choices=SMALL_IMAGE_POLICIES,
        help="An image whose short side is under --resolution: upscale it (bicubic), or skip it (counted).",
    )
    group.add_argument(
        "--max_bad_sample_fraction",
        type=fraction,
        default=0.05,
        help="Stop when more than this share of the samples read could not be decoded (1: never stop).",
    )


LR_SCHEDULERS = ("constant", "cosine")


def add_optimisation_arguments(
    parser: argparse.ArgumentParser, title: str, weight_decay: float, ema_by_default: bool
) -> None:
    optim = parser.add_argument_group(title)
    optim.add_argument(
        "--learning_rate", type=positive_finite_float, default=1e-4, help="Learning rate after the warm-up."
    )
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.999)
    optim.add_argument("--adam_weight_decay", type=float, default=weight_decay)
    optim.add_argument("--adam_epsilon", type=float, default=1e-8)
    optim.add_argument("--lr_warmup_steps", type=non_negative_int, default=0, help="Linear warm-up steps.")
    optim.add_argument(
        "--lr_scheduler",
        choices=LR_SCHEDULERS,
        default="constant",
        help="After the warm-up: constant, or a cosine decay to 0 at --max_train_steps (which it then needs).",
    )
    optim.add_argument("--train_batch_size", type=positive_int, default=16, help="Batch size per device.")
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    optim.add_argument("--max_train_steps", type=positive_int, default=None, help="Overrides --num_train_epochs.")
    optim.add_argument("--num_train_epochs", type=positive_int, default=100)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping; <= 0 disables it.")
    optim.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    optim.add_argument("--seed", type=non_negative_int, default=0, help="Seeds init, data order and all noise.")
    if ema_by_default:
        optim.add_argument(
            "--use_ema",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="Keep an EMA of the trained weights, used for validation and the final save.",
        )
    else:
        optim.add_argument(
            "--use_ema", action="store_true", help="Keep an EMA of the trained weights (saved at the end)."
        )
    optim.add_argument("--ema_decay", type=float, default=0.9999)
    optim.add_argument(
        "--max_nonfinite_steps",
        type=positive_int,
        default=20,
        help="Stop after this many optimizer steps in a row skipped for a non-finite loss or gradient.",
    )


def add_checkpoint_arguments(parser: argparse.ArgumentParser, default_output_dir: str) -> None:
    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument(
        "--output_dir", type=str, default=default_output_dir, help="Checkpoints, logs and the final model."
    )
    ckpt.add_argument("--checkpointing_steps", type=positive_int, default=500)
    ckpt.add_argument("--checkpoints_total_limit", type=positive_int, default=None, help="Keep at most N.")
    ckpt.add_argument("--resume_from_checkpoint", type=str, default=None, help='A checkpoint folder, or "latest".')
    ckpt.add_argument(
        "--allow_changed_resume",
        action="store_true",
        help="Resume even though the batch size, number of processes, gradient accumulation, resolution or dataset "
        "size differ from the checkpoint's run (a warning lists them): training continues from the saved weights, "
        "optimizer and step, but no longer replays the data exactly. A changed model config is never allowed.",
    )
    ckpt.add_argument(
        "--checkpoint_on_sigterm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"On SIGTERM (pre-emption), save a checkpoint at the next step boundary, then exit with code "
        f"{EXIT_CODE_SIGTERM}.",
    )


def add_tracker_arguments(group, project_name: str) -> None:
    group.add_argument("--report_to", type=str, default="tensorboard", choices=["tensorboard", "wandb", "all", "none"])
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    group.add_argument("--tracker_project_name", type=str, default=project_name)


def add_lora_arguments(parser: argparse.ArgumentParser, title: str, target_modules: str, target_help: str) -> None:
    lora = parser.add_argument_group(title)
    lora.add_argument("--lora_rank", type=non_negative_int, default=0, help="0: train the whole model.")
    lora.add_argument("--lora_alpha", type=float, default=None, help="LoRA scaling numerator (default: the rank).")
    lora.add_argument("--lora_target_modules", type=str, default=target_modules, help=target_help)


def add_debug_arguments(parser: argparse.ArgumentParser) -> None:
    # Hidden: each rank writes what it saw (sample ids, loss statistics, weight digest) for the tests.
    parser.add_argument("--debug_dump_dir", type=str, default=None, help=argparse.SUPPRESS)
    # Hidden: `step-K` (after step K) or `save-K` (inside the save of checkpoint-K, before it is complete): touch
    # output_dir/.debug-paused-<event> and wait for SIGTERM, so that the tests can kill the run at a known point.
    parser.add_argument("--debug_pause_at", type=str, default=None, help=argparse.SUPPRESS)


def lora_target_names(target_modules: str) -> list[str]:
    return [m.strip() for m in target_modules.split(",") if m.strip()]


# ------------------------------------------------------------------------------------------------ start-up checks
def parse(parser: argparse.ArgumentParser, input_args: list[str] | None, check) -> argparse.Namespace:
    """Add the flags every script ends with (speed, and the tests' hidden ones), parse `input_args`, then check the
    data source and run the script's own start-up checks, `check(args, parser)`: every usage error is reported before
    any data or model is loaded."""
    performance.add_performance_arguments(parser)
    add_debug_arguments(parser)
    args = parser.parse_args(input_args)
    check_data_source(args, parser)
    check(args, parser)
    return args


def check_data_source(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if (args.train_data_dir is None) == (args.dataset_name is None):
        parser.error("give exactly one of --train_data_dir and --dataset_name.")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        parser.error(f"--train_data_dir {args.train_data_dir} is not a folder.")


def check_run_arguments(
    args: argparse.Namespace, parser: argparse.ArgumentParser, pretrained_flag: str, pretrained: str | None
) -> None:
    """The schedule, trackers, LoRA (which adapts the model given by `pretrained_flag`) and resuming."""
    if args.lr_scheduler != "constant" and args.max_train_steps is None:
        parser.error(f"--lr_scheduler {args.lr_scheduler} needs --max_train_steps (where the decay ends).")
    if args.report_to == "wandb" and not is_wandb_available():
        parser.error("--report_to wandb needs `pip install wandb`.")
    lora_rank = getattr(args, "lora_rank", 0)  # scripts without LoRA flags train no adapters
    if lora_rank > 0 and pretrained is None:
        parser.error(f"--lora_rank adapts a trained model: give it with {pretrained_flag}.")
    if lora_rank > 0 and not lora_target_names(args.lora_target_modules):
        parser.error("--lora_target_modules is empty.")
    if args.resume_from_checkpoint not in (None, "latest"):
        if not os.path.isdir(args.resume_from_checkpoint):
            parser.error(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a folder.")
        if not is_complete_checkpoint(args.resume_from_checkpoint):
            parser.error(
                f"--resume_from_checkpoint {args.resume_from_checkpoint} is incomplete (no {COMPLETE_MARKER}): its "
                "save was interrupted. Give an older checkpoint, or `latest` for the newest complete one."
            )
