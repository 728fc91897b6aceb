# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Checkpoints that hold `save_pretrained` folders, and exact resume from them.

Adapted from diffusers `examples/unconditional_image_generation/train_unconditional.py` (accelerate save/load hooks,
`--checkpoints_total_limit`, `--resume_from_checkpoint latest`). Every `checkpoint-N/` holds, for a model saved as
`name` (`vae`, `transformer`):

    name/            Model.from_pretrained("checkpoint-N/name")
    name_ema/        the EMA weights, loadable the same way (with EMA)
    name_lora/       instead of name/ with LoRA: the adapter (load with `model.load_lora_adapter`)
    name_lora_ema/   the EMA of the adapter (with LoRA and EMA)
    optimizer.bin, scheduler.bin, random_states_<rank>.pkl, custom_checkpoint_0.pkl (progress)
    checkpoint_complete.json   written last: a folder without it is ignored

A checkpoint is written atomically: into output_dir/.tmp-checkpoint-N, completed with its marker, then renamed to
checkpoint-N, and only then are old checkpoints removed (renamed to .tmp-delete-checkpoint-N first). A kill at any
moment leaves the previous checkpoints complete; `.tmp-*` leftovers are removed when the next run starts.
"""

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from . import sharding
from .trained_weights import ema_weights, load_ema_folder, load_lora_state, save_ema_folder

logger = get_logger(__name__, log_level="INFO")

COMPLETE_MARKER = "checkpoint_complete.json"
TMP_PREFIX = ".tmp-"  # checkpoints being written or deleted; never `checkpoint-*`, so never resumed from
# Only exactly `checkpoint-<step>` is a checkpoint: a user's `checkpoint-2-backup` is never resumed from or deleted.
CHECKPOINT_NAME = re.compile(r"checkpoint-([0-9]+)")


class ResumeMismatchError(ValueError):
    """The checkpoint was saved by a run whose settings (batch, processes, data, model...) differ from this one's."""


class NonFiniteWeightsError(RuntimeError):
    """The weights to be saved hold NaN or infinity."""


@dataclass
class TrainingProgress:
    """Saved with every checkpoint (accelerate custom state): where training stands, counted in data."""

    global_step: int = 0  # optimizer steps taken (including skipped non-finite ones)
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` consumed on each process
    images_seen: int = 0  # over all processes, corrupt and too-small images excluded
    skipped_steps: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    nonfinite_streak: int = 0  # of those, how many in a row up to now
    corrupt_images: int = 0  # unreadable files
    too_small_images: int = 0  # skipped by --small_image_policy skip
    # What exact resume depends on (batch size, processes, accumulation, resolution, dataset size, model config):
    # written into every checkpoint's marker and compared on resume (`resume`).
    run_signature: dict = field(default_factory=dict)

    def count_step(self, totals, skipped: bool) -> None:
        """Add a finished optimizer step and its all-reduced `StepTotals`."""
        self.global_step += 1
        self.images_seen += totals.samples
        self.corrupt_images += totals.unreadable
        self.too_small_images += totals.too_small
        self.skipped_steps += int(skipped)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_NAME.fullmatch(path.name).group(1))


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir: Path, complete: bool = True) -> list[Path]:
    """`checkpoint-N` folders by step: the complete ones, or (complete=False) those missing their marker."""
    folders = (p for p in output_dir.glob("checkpoint-*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir())
    return sorted((p for p in folders if is_complete_checkpoint(p) == complete), key=checkpoint_step)


def check_finite_weights(model: torch.nn.Module, ema: EMAModel | None, what: str) -> None:
    """Refuse to save NaN or infinite weights (model or EMA): raise NonFiniteWeightsError naming a few tensors. Under
    FSDP each rank checks its shards and the verdict is all-reduced, so every rank raises alike."""
    tensors = [(name, t) for name, t in model.state_dict().items() if t.is_floating_point()]
    if ema is not None:
        tensors += [(f"EMA of trained tensor {i}", t) for i, t in enumerate(ema.shadow_params)]
    finite = torch.stack([torch.isfinite(sharding.local(t)).all() for _, t in tensors]).float()  # one sync for all
    finite = sharding.all_ranks_agree(finite, [t for _, t in tensors]).cpu()
    bad = [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]
    if bad:
        raise NonFiniteWeightsError(
            f"Refusing to save {what}: {len(bad)} weight tensors hold NaN or infinity ({', '.join(bad[:4])}). The "
            "previous checkpoints are untouched; resume from the latest with a lower --learning_rate."
        )


def _fsync(paths: list[Path]) -> None:
    """Flush files and folders to disk, so that even a power cut cannot leave a complete-looking checkpoint over
    missing data. Folders cannot be opened for syncing on some systems: skipped there."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_checkpoint(path: Path) -> None:
    """Rename out of the `checkpoint-*` namespace first (atomic), so a half-deleted folder is never resumed from."""
    trash = path.with_name(f"{TMP_PREFIX}delete-{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)
    shutil.rmtree(trash)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str,
    total_limit: int | None,
    global_step: int,
    model: torch.nn.Module,
    ema: EMAModel | None,
    run_signature: dict | None = None,
) -> Path:
    """Write checkpoint-`global_step` atomically (see the module docstring), then drop the oldest complete
    checkpoints beyond `total_limit`. Refuses non-finite weights before writing anything. Every process calls
    this."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{global_step}"
    check_finite_weights(model, ema, final.name)  # the same weights, hence the same verdict, on every rank
    tmp = output_dir / f"{TMP_PREFIX}{final.name}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted save of the same step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # on every process: each one saves its own random state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync(sorted(tmp.rglob("*"), reverse=True))  # the data first, then the marker that vouches for it
        marker = {"global_step": global_step, "run_signature": run_signature or {}}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")
        _fsync([tmp / COMPLETE_MARKER, tmp])
        if final.exists():  # from an earlier pass over this step (a run resumed from an older checkpoint)
            _remove_checkpoint(final)
        os.rename(tmp, final)
        _fsync([output_dir])  # the rename itself
        logger.info(f"Saved {final}")
        if total_limit is not None:  # only now that the new one is complete, and only complete ones
            older = [p for p in list_checkpoints(output_dir) if p != final]
            for old in older[: max(0, len(older) + 1 - total_limit)]:
                logger.info(f"Removing {old} (--checkpoints_total_limit {total_limit})")
                _remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def register_checkpoint_hooks(
    accelerator: Accelerator,
    model: torch.nn.Module,
    name: str,
    ema: EMAModel | None,
    trainable: list[torch.nn.Parameter],
    lora: bool,
) -> TrainingProgress:
    """Make `accelerator.save_state` write `save_pretrained` (or `save_lora_adapter`) folders of `model`, the one
    model given to `accelerator.prepare` (inside a wrapper or not), and `load_state` read them back. Returns the
    progress counter, saved with every checkpoint."""
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    if ema is not None and lora:
        accelerator.register_for_checkpointing(ema)  # LoRA EMA has no model class to save_pretrained

    def save_model_hook(models, weights, checkpoint_dir):
        if sharding.is_sharded(accelerator):  # accelerate saves the shards (for resume); these folders are whole
            save_gathered_folders(accelerator, models[0], model, name, ema, checkpoint_dir)
            return
        if accelerator.is_main_process:
            if lora:
                model.save_lora_adapter(os.path.join(checkpoint_dir, f"{name}_lora"))
                if ema is not None:  # a loadable adapter with the EMA weights too
                    with ema_weights(ema, trainable):
                        model.save_lora_adapter(os.path.join(checkpoint_dir, f"{name}_lora_ema"))
            else:
                model.save_pretrained(os.path.join(checkpoint_dir, name))
                if ema is not None:
                    ema.save_pretrained(os.path.join(checkpoint_dir, f"{name}_ema"))
        weights.clear()  # already saved above: keep accelerate from writing a second copy

    def load_model_hook(models, checkpoint_dir):
        if sharding.is_sharded(accelerator):  # accelerate has loaded the sharded model: only the EMA is ours
            if ema is not None:
                load_ema_folder(ema, os.path.join(checkpoint_dir, f"{name}_ema"), sharding.original_class(model))
            return
        models.pop()  # loaded here: keep accelerate from looking for its own weights file
        if lora:
            load_lora_state(model, os.path.join(checkpoint_dir, f"{name}_lora"))
            return
        loaded = type(model).from_pretrained(checkpoint_dir, subfolder=name)
        model.load_state_dict(loaded.state_dict())
        if ema is not None:
            load_ema_folder(ema, os.path.join(checkpoint_dir, f"{name}_ema"), type(model))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
    return progress


def save_gathered_folders(
    accelerator: Accelerator, root: torch.nn.Module, model: torch.nn.Module, name: str, ema: EMAModel | None, folder
) -> None:
    """Under FSDP: `name/` and `name_ema/` `save_pretrained` folders of the whole weights, gathered from every rank
    (all of them call this) and written by the main process."""
    copy = sharding.gathered_copy(accelerator, root, model)
    shadows = [sharding.full(p) for p in ema.shadow_params] if ema is not None else None
    if accelerator.is_main_process:
        copy.save_pretrained(os.path.join(folder, name))
        if ema is not None:
            save_ema_folder(ema, shadows, copy, os.path.join(folder, f"{name}_ema"))


def run_signature(args, num_processes: int, dataset_size: int | None, model_config) -> dict:
    """What exact resume depends on, JSON-normalised (tuples as lists) so that a saved copy compares equal."""
    signature = {
        "train_batch_size": args.train_batch_size,
        "num_processes": num_processes,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "resolution": args.resolution,
        "dataset_size": dataset_size,
        "model_config": {k: v for k, v in dict(model_config).items() if not k.startswith("_")},
    }
    return json.loads(json.dumps(signature, default=list))


def signature_differences(saved: dict, current: dict) -> list[str]:
    """`name: saved -> current` for every setting that differs (model config keys listed one by one)."""
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key == "model_config":
            old, new = saved.get(key) or {}, current.get(key) or {}
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    differences.append(f"model config {name}: {old.get(name)} -> {new.get(name)}")
        elif saved.get(key) != current.get(key):
            differences.append(f"{key}: {saved.get(key)} -> {current.get(key)}")
    return differences


def check_resume_compatible(checkpoint: Path, signature: dict, allow_changed: bool) -> None:
    """Raise `ResumeMismatchError` (one line) if `checkpoint` was saved with other settings than `signature`.

    A changed model config is always an error (the weights cannot be loaded); other changes are allowed with
    `allow_changed` (`--allow_changed_resume`), with a warning: training continues, but it no longer replays the data
    exactly as the uninterrupted run would have. Checkpoints written before signatures existed are not checked.
    """
    try:
        saved = json.loads((checkpoint / COMPLETE_MARKER).read_text()).get("run_signature") or {}
    except (OSError, json.JSONDecodeError):
        saved = {}
    if not saved:
        return
    differences = signature_differences(saved, signature)
    if not differences:
        return
    listed = "; ".join(differences[:6]) + (f"; and {len(differences) - 6} more" if len(differences) > 6 else "")
    if any(d.startswith("model config") for d in differences):
        raise ResumeMismatchError(
            f"{checkpoint} was trained with another model config ({listed}); its weights cannot be resumed into "
            "this model. Resume with the model flags it was trained with (for train_dito.py --model_preset, "
            "--model_config or --pretrained_model_name_or_path; for distill_dito.py --student_config), or start a "
            "new --output_dir."
        )
    if not allow_changed:
        raise ResumeMismatchError(
            f"{checkpoint} was saved by a run with other settings ({listed}), so resuming would not replay the "
            "data exactly. Resume with the original settings, or pass --allow_changed_resume to continue anyway."
        )
    logger.warning(f"--allow_changed_resume: resuming {checkpoint} despite {listed}; the resume is not exact.")


def resume(
    accelerator: Accelerator,
    resume_from_checkpoint: str | None,
    output_dir: str,
    progress: TrainingProgress,
    ema: EMAModel | None,
    batches_per_epoch: int | None,
    allow_changed: bool = False,
) -> None:
    """Restore the model, optimizer, LR scheduler, EMA, progress and RNG states from a checkpoint (`latest`: the
    newest complete one in `output_dir`, or none), then move `progress` past an epoch that the checkpoint ended.
    Removes the `.tmp-*` leftovers of interrupted saves first. A checkpoint saved with other settings than
    `progress.run_signature` stops the run before anything is loaded (see `check_resume_compatible`)."""
    output_dir = Path(output_dir)
    if accelerator.is_main_process and output_dir.is_dir():
        for leftover in sorted(output_dir.glob(f"{TMP_PREFIX}*checkpoint-*")):
            logger.warning(f"Removing {leftover}, left by an interrupted checkpoint save or removal")
            shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    resume_path = None
    if resume_from_checkpoint == "latest":
        for incomplete in list_checkpoints(output_dir, complete=False):
            logger.warning(f"Ignoring {incomplete}: it has no {COMPLETE_MARKER}, so its save did not finish")
        checkpoints = list_checkpoints(output_dir)
        resume_path = checkpoints[-1] if checkpoints else None
        if resume_path is None:
            logger.info(f"No complete checkpoint in {output_dir}: starting a new run.")
    elif resume_from_checkpoint is not None:
        resume_path = Path(resume_from_checkpoint)
    if resume_path is not None:
        signature = progress.run_signature
        if signature:
            check_resume_compatible(resume_path, signature, allow_changed)
        logger.info(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        progress.run_signature = signature  # this run's settings go into its own checkpoints
        if ema is not None:
            ema.to(accelerator.device)
    if batches_per_epoch is not None and progress.batches_in_epoch >= batches_per_epoch:  # saved at an epoch's end
        progress.epoch, progress.batches_in_epoch = progress.epoch + 1, 0
