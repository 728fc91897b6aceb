# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Test-only instrumentation of a training run, kept out of the training step.

The hidden flags `--debug_dump_dir` and `--debug_pause_at` let the tests see what a run did and stop it at a known
point. Its one entry point is `install_test_hooks`, which `TrainingRun` calls when it is built: it attaches the
recorder through the mechanisms a run already has, and without the flags it attaches nothing. Not for real runs.

- an accelerate tracker (`DebugRecorder`, main process) receives every step's logs: it records the resident memory
  (the soak benchmark) and the per-sample flag fractions, and pauses at `step-K`;
- the data loader's collate function records which samples each process was given;
- an accelerate save-state hook pauses at `save-K`, inside the save of checkpoint-K: its temporary folder exists, and
  nothing of its state or completion marker is written yet;
- `write_dump` writes `rank<N>.json` when the run ends.
"""

import argparse
import json
import os
import re
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from .checkpoints import TMP_PREFIX
from .reliability import StopRequest, resident_memory_bytes
from .sharding import local
from .trained_weights import weights_digest


def debug_pause(event: str, pause_at: str | None, output_dir: str) -> None:
    """With the hidden --debug_pause_at `event`: touch output_dir/.debug-paused-<event>, then wait for SIGTERM (at
    most 10 minutes). The kill tests use it to signal the run at a known point instead of racing it."""
    if pause_at != event:
        return
    Path(output_dir, f".debug-paused-{event}").touch()
    deadline = time.monotonic() + 600
    while not (StopRequest.active is not None and StopRequest.active.requested) and time.monotonic() < deadline:
        time.sleep(0.02)


class DebugRecorder(GeneralTracker):
    """What one process of a run saw, for the tests. Also an accelerate tracker: `accelerator.log` hands it each
    step's logs (on the main process)."""

    name = "debug_dump"
    requires_logging_directory = False

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.dump_dir, self.pause_at, self.output_dir = args.debug_dump_dir, args.debug_pause_at, args.output_dir
        self.sample_indices: list[int] = []  # usable samples given to this process, in order
        self.rss_bytes: list[int] = []  # resident memory after each step
        self.images = 0  # trained samples of the logged steps
        self.flag_sums: dict[str, float] = {}  # `*_fraction` log key -> flagged samples
        self.step_logs: list[dict[str, float]] = []  # each logged step's values, e.g. the terms of the loss

    @property
    def tracker(self):
        return self

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        if "loss" not in values:  # a validation log, not a step's
            return
        self.rss_bytes.append(resident_memory_bytes())
        self.images += values["images"]
        self.step_logs.append({key: float(value) for key, value in values.items()})
        for key, value in values.items():
            if key.endswith("_fraction"):
                self.flag_sums[key] = self.flag_sums.get(key, 0.0) + value * values["images"]
        debug_pause(f"step-{step}", self.pause_at, self.output_dir)

    def collate(self, collate_fn):
        """`collate_fn`, recording the indices of the usable samples of each batch it makes."""

        def recording_collate(examples: list[dict]) -> dict:
            batch = collate_fn(examples)
            self.sample_indices += batch["index"][batch["valid"]].tolist()
            return batch

        return recording_collate

    def pause_in_save(self, models, weights, output_dir: str) -> None:
        """An accelerate save-state pre-hook: `save-K` pauses inside the save of checkpoint-K."""
        match = re.fullmatch(rf"{re.escape(TMP_PREFIX)}checkpoint-([0-9]+)", Path(output_dir).name)
        if match is not None and self.pause_at is not None:
            debug_pause(f"save-{match.group(1)}", self.pause_at, self.output_dir)

    def write_dump(self, accelerator: Accelerator, progress, model: torch.nn.Module, interrupted: bool) -> None:
        """`rank<N>.json` in --debug_dump_dir: this process's record, the run's counters and a weights digest."""
        if self.dump_dir is None:
            return
        dump = {
            "num_processes": accelerator.num_processes,
            "process_index": accelerator.process_index,
            "global_step": progress.global_step,
            "sample_indices": self.sample_indices,
            **{key: total / max(self.images, 1) for key, total in self.flag_sums.items()},
            "skipped_steps": progress.skipped_steps,
            "corrupt_images": progress.corrupt_images,
            "too_small_images": progress.too_small_images,
            "images_seen": progress.images_seen,
            "weights_sha256": weights_digest(model),  # of the whole weights (gathered under FSDP)
            # the share of the model's parameters this process holds: 1 unsharded, about 1/N under FSDP
            "local_parameter_fraction": sum(local(p).numel() for p in model.parameters())
            / sum(p.numel() for p in model.parameters()),
            "interrupted": interrupted,
            "rss_bytes": self.rss_bytes,
            "step_logs": self.step_logs,
        }
        os.makedirs(self.dump_dir, exist_ok=True)
        with open(os.path.join(self.dump_dir, f"rank{accelerator.process_index}.json"), "w") as f:
            json.dump(dump, f)


def install_test_hooks(
    args: argparse.Namespace, accelerator: Accelerator, train_dataloader: torch.utils.data.DataLoader
) -> DebugRecorder | None:
    """With --debug_dump_dir or --debug_pause_at: attach a `DebugRecorder` to the accelerator (before
    `init_trackers`; its save-state hook before the checkpoint hooks) and to the data loader's collate function
    (accelerate's `skip_first_batches` copies it). Returns it, or None without the flags."""
    if args.debug_dump_dir is None and args.debug_pause_at is None:
        return None
    if args.debug_dump_dir is not None and train_dataloader.num_workers > 0:
        raise ValueError("--debug_dump_dir records the samples in the main process: use --dataloader_num_workers 0.")
    recorder = DebugRecorder(args)
    accelerator.log_with.append(recorder)
    # A prepared loader wraps a torch DataLoader (accelerate's `base_dataloader`), which makes the batches.
    loader = getattr(train_dataloader, "base_dataloader", train_dataloader)
    loader.collate_fn = recorder.collate(loader.collate_fn)
    accelerator.register_save_state_pre_hook(recorder.pause_in_save)
    return recorder
