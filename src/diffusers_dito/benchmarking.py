# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""What the scripts in `benchmarks/` and `experiments/` share: timing, FLOP counting, the machine's description,
markdown tables, JSON output, and running a script in a fresh process.

Shared machines are noisy, so a benchmark measures the things it compares side by side in one run, interleaved
(`interleaved_medians`), and reports ratios of medians; absolute times are printed for context only.
"""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .training.performance import BF16_CPU_FLAGS, cpu_flags, cpu_info  # the training scripts' CPU probe


def run_script(script: str | Path, argv: list[str], threads: int | None = None) -> float:
    """Run the Python script `script` (e.g. `training/train_dito.py`) with `argv` in a fresh Python process, as a user
    would, offline and with `threads` OpenMP threads if given; returns its wall time (s). Its output is shown only if
    it fails.

        >>> run_script("-c", ["import sys; sys.exit(3)"])
        Traceback (most recent call last):
        ...
        RuntimeError: -c failed (exit code 3):
        <BLANKLINE>
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{Path(script).name} failed (exit code {result.returncode}):\n{result.stderr[-4000:]}")
    return seconds


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1):
    """Median seconds of each callable, timed round-robin so that drift in machine load hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` as `torch.utils.flop_counter` counts them: matrix products and convolutions, forward
    and backward. Element-wise work (norms, activations, the optimizer) is not counted, as usual for MFU."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5, inner: int = 10) -> float:
    """Dense matmul FLOP/s of this device in `dtype`: the best of `repeats` timings of `inner` back-to-back
    size x size products. The best rather than the median, since it stands for what the hardware can do."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty_like(a)
    for _ in range(inner):  # warm-up: kernel selection, and GPU clocks ramping up
        torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * inner / best


def cpu_description() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model (which tell e.g. Zen 3 from Zen 4 where the name
    is just "AMD EPYC") and whether it has bf16 instructions, which decide whether bf16 autocast pays."""
    fields = cpu_info()
    if fields is None:
        return platform.processor() or platform.machine()
    flags = cpu_flags(fields)
    bf16 = "bf16 instructions" if flags & BF16_CPU_FLAGS else "no bf16 instructions"
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "other ISA"
    name = fields.get("model name", platform.machine())
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; {isa}, {bf16})"


def machine_info(device: torch.device) -> dict:
    """torch's version, the device, the thread count and the processor (the GPU's name, or `cpu_description`)."""
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    info["processor"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    return info


def markdown_table(rows: list[dict]) -> str:
    """`rows` as a markdown table: one column per key, in first-seen order; floats to 4 significant digits; a row
    without a key leaves its cell empty.

        >>> print(markdown_table([{"a": 1, "b": 0.5}, {"a": 2, "c": "x", "b": 0.123456}]))
        | a | b | c |
        |---|---|---|
        | 1 | 0.5 |  |
        | 2 | 0.1235 | x |
    """
    if not rows:
        return ""
    keys = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys, in first-seen order
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:  # a row without a key leaves its cell empty, so the columns stay aligned
        cells = [f"{row[k]:.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str | None, payload: dict) -> None:
    """Write `payload` to `path` as indented JSON (creating its folder) and say so; nothing if `path` is None."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")
