# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""What keeps a long run alive, or stops it with a clear message: pre-emption (SIGTERM), runs of non-finite steps,
and data that is mostly unreadable. The loop calls these at every step boundary; docs/reliability.md tells the whole
story (atomic checkpoints live in checkpoints.py).
"""

import atexit
import contextlib
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from .checkpoints import NonFiniteWeightsError, ResumeMismatchError, list_checkpoints

logger = get_logger(__name__, log_level="INFO")

EXIT_CODE_SIGTERM = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended: "stopped, not finished"
MIN_BAD_SAMPLES = 10  # the bad-sample share is not judged on fewer bad samples: one broken file in the first batch
# of a run is a 50% share, yet no reason to stop


class NonFiniteTrainingError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class RunError(ValueError):
    """A problem with what the user asked for (data, output folder, resume): one line, exit code 2 (`run_script`)."""


class BadDataError(RunError):
    """Too many of the samples read could not be decoded, or none could be used."""


class OutputDirLockedError(RunError):
    """Another live run holds the lock on --output_dir."""


LOCK_FILE = ".dito-run.lock"


def lock_output_dir(output_dir: str | os.PathLike, accelerator: Accelerator) -> Path | None:
    """
    Take `output_dir/.dito-run.lock` for this run (main process only), released when the run finishes
    (`release_output_dir`) or, failing that, when the process exits.

    Two runs writing checkpoints and the final model into one folder would overwrite each other's work, so a second
    run on a folder whose lock names a live process stops at once (`OutputDirLockedError`, naming that pid). A lock
    left by a process that is gone (killed, machine restarted) is taken over with a warning; one left by this very
    process (`main` called again in one Python session) is kept. The lock is created with O_EXCL, so two runs
    starting together cannot both take it.
    """
    if not accelerator.is_main_process:
        return None
    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder == owner:  # this very process ran a run here before (in-process calls of `main`)
                return path
            if holder is not None and _alive(holder):
                raise OutputDirLockedError(
                    f"{output_dir} is in use by another training run (pid {holder['pid']} on {holder['host']}, lock "
                    f"file {path}); wait for it to finish, or use another --output_dir."
                ) from None
            logger.warning(f"Taking over {path}, left by a run that is gone ({holder or 'unreadable lock'}).")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        atexit.register(_release_lock, path, owner["pid"])
        return path
    raise OutputDirLockedError(f"Could not take the lock {path}: another run keeps re-creating it.")


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the lock's process still runs. A pid on another host cannot be checked: assume it does."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Remove this process's lock on `output_dir` (a finished run leaves the folder free); another's stays."""
    _release_lock(Path(output_dir) / LOCK_FILE, os.getpid())


def _release_lock(path: Path, pid: int) -> None:
    if os.getpid() == pid and (_read_lock(path) or {}).get("pid") == pid:  # not in forked children, not another's
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def run_script(main, args, prog: str) -> int:
    """Run a training script's `main(args)`; a `RunError` (or a resume mismatch) ends as one line, exit code 2."""
    try:
        main(args)
    except (RunError, ResumeMismatchError) as err:
        print(f"{prog}: error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


class StopRequest:
    """SIGTERM handling: the handler only sets a flag, which the loop reads at step boundaries (all-reduced, so every
    rank stops after the same step), then saves a checkpoint and exits with EXIT_CODE_SIGTERM.

    Used as a context manager around the loop; the previous handler is restored on exit. Disabled (SIGTERM keeps its
    default action: immediate death) when `enabled` is False or outside the main thread, where Python cannot install
    handlers. Dataloader workers inherit the handler: there it sets a flag nobody reads, so a worker outlives a
    SIGTERM sent to the whole process group until the main process has saved and shuts it down."""

    active: "StopRequest | None" = None  # the one around the running loop (read by the tests' debug pause)

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True  # nothing else here: a signal handler may run in the middle of anything

    def __enter__(self) -> "StopRequest":
        if self.enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        StopRequest.active = self
        return self

    def __exit__(self, *exc) -> None:
        StopRequest.active = None
        if self.enabled:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any rank was asked to stop; the same answer on every rank (one tiny all-reduce a step)."""
        if not self.enabled:
            return False
        if accelerator.num_processes == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


class NonFiniteStreak:
    """Counts optimizer steps skipped in a row for a non-finite loss or gradient; the run stops at `limit`."""

    def __init__(self, limit: int, count: int = 0):
        self.limit, self.count = limit, count

    def update(self, skipped: bool, global_step: int, output_dir: str) -> None:
        """Count a step, raising NonFiniteTrainingError at the limit: before that step's checkpoint is written."""
        if not skipped:
            self.count = 0
            return
        self.count += 1
        logger.warning(
            f"step {global_step}: non-finite loss or gradient, optimizer step and EMA update skipped "
            f"({self.count} in a row; the run stops at --max_nonfinite_steps {self.limit})"
        )
        if self.count >= self.limit:
            checkpoints = list_checkpoints(Path(output_dir))
            kept = f"{checkpoints[-1]} is untouched" if checkpoints else "no checkpoint was written"
            raise NonFiniteTrainingError(
                f"Stopping: the last {self.count} optimizer steps (up to step {global_step}) all had a non-finite "
                f"loss or gradient (--max_nonfinite_steps {self.limit}). Skipped steps do not change the weights, "
                f"and {kept}. Lower --learning_rate or --max_grad_norm, use bf16 instead of fp16, or check the data, "
                "then resume with --resume_from_checkpoint."
            )


def check_bad_samples(unreadable: int, usable: int, too_small: int, max_fraction: float) -> None:
    """Stop when more than `max_fraction` of the samples read so far (over all ranks) could not be decoded, judged
    once at least MIN_BAD_SAMPLES were bad."""
    read = unreadable + usable + too_small
    if unreadable >= MIN_BAD_SAMPLES and unreadable > max_fraction * read:
        raise BadDataError(
            f"{unreadable} of the {read} samples read so far ({unreadable / read:.1%}) could not be decoded, more "
            f"than --max_bad_sample_fraction {max_fraction}. The log names the files (rate-limited); remove or "
            "repair them, or raise --max_bad_sample_fraction."
        )


class RunGuard:
    """What a training step checks at its boundary, as one context manager around the loop: SIGTERM (`StopRequest`),
    runs of non-finite steps (`NonFiniteStreak`) and unreadable data (`check_bad_samples`). When one of these stops
    the run, the trackers are flushed on the way out, since the logs up to the failure are what explains it."""

    STOPS = (NonFiniteTrainingError, NonFiniteWeightsError, BadDataError)

    def __init__(self, accelerator: Accelerator, args, nonfinite_streak: int = 0):
        self.accelerator = accelerator
        self.stop = StopRequest(args.checkpoint_on_sigterm)
        self.streak = NonFiniteStreak(args.max_nonfinite_steps, nonfinite_streak)
        self.max_bad_sample_fraction = args.max_bad_sample_fraction
        self.output_dir = args.output_dir

    def __enter__(self) -> "RunGuard":
        self.stop.__enter__()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.stop.__exit__(exc_type, exc, traceback)
        if exc_type is not None and issubclass(exc_type, self.STOPS):
            self.accelerator.end_training()

    def after_step(self, progress, skipped: bool, max_train_steps: int) -> bool:
        """After a step is counted in `progress`, before its checkpoint: raise if the run must stop (a non-finite
        streak, too much unreadable data), so that the newest checkpoint stays the last good one. Then return whether
        a SIGTERM reached any rank (the same answer on every rank), so the run stops after this step's checkpoint;
        one during the last step changes nothing: the run finishes and saves its final model."""
        self.streak.update(skipped, progress.global_step, self.output_dir)
        progress.nonfinite_streak = self.streak.count
        check_bad_samples(
            progress.corrupt_images, progress.images_seen, progress.too_small_images, self.max_bad_sample_fraction
        )
        return self.stop.agreed(self.accelerator) and progress.global_step < max_train_steps


def resident_memory_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
