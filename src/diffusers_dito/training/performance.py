"""Speed switches shared by the training scripts: `--torch_compile`, `--channels_last`, `--allow_tf32` and the AdamW
implementation (`--optimizer_implementation`). docs/training.md ("Speed") gives each one's measured effect.

Each switch is torch's or accelerate's own mechanism; this module only maps the flags onto them:
- compilation is accelerate's `TorchDynamoPlugin`, so `accelerator.prepare` compiles the module that runs every
  step (the training objective: encoder, decoder and loss) exactly as `accelerate launch --dynamo_backend` would;
- channels_last is `Module.to(memory_format=...)` plus the same layout for each batch;
- TF32 is torch's fp32-precision setting for CUDA matmuls and cuDNN convolutions (ignored on CPU);
- the AdamW implementation is `torch.optim.AdamW`'s `fused` / `foreach` arguments.
"""

import argparse

import torch
from accelerate.utils import TorchDynamoPlugin

BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # /proc/cpuinfo flags of bf16 matrix instructions
OPTIMIZER_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_performance_arguments(parser: argparse.ArgumentParser) -> None:
    speed = parser.add_argument_group("speed (docs/training.md#speed has each flag's measured effect)")
    speed.add_argument(
        "--torch_compile",
        action="store_true",
        help="torch.compile the training objective (encoder, decoder and loss) through accelerate's dynamo plugin.",
    )
    speed.add_argument("--torch_compile_mode", choices=COMPILE_MODES, default="default", help="torch.compile's mode.")
    speed.add_argument(
        "--torch_compile_backend", default="inductor", help="torch.compile's backend (aot_eager: no code generation)."
    )
    speed.add_argument(
        "--channels_last", action="store_true", help="Keep conv weights and batches in channels_last (NHWC) layout."
    )
    speed.add_argument(
        "--allow_tf32",
        action="store_true",
        help="TF32 for fp32 matmuls and convolutions on Ampere+ GPUs (no effect on CPU).",
    )
    speed.add_argument(
        "--optimizer_implementation",
        choices=OPTIMIZER_IMPLEMENTATIONS,
        default="auto",
        help="AdamW's kernel. auto: fused on CUDA, torch's own default elsewhere (see docs/training.md#speed).",
    )


def dynamo_plugin(args: argparse.Namespace) -> TorchDynamoPlugin | None:
    """With `--torch_compile`, the plugin that makes `accelerator.prepare` compile the model; otherwise None, which
    leaves accelerate's own default (the `ACCELERATE_DYNAMO_*` variables that `accelerate launch` sets)."""
    if not args.torch_compile:
        return None
    mode = None if args.torch_compile_mode == "default" else args.torch_compile_mode
    return TorchDynamoPlugin(backend=args.torch_compile_backend.upper(), mode=mode)


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA fp32 matmuls and cuDNN convolutions, through torch's fp32-precision setting."""
    precision = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:  # the older switches
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def memory_format(args: argparse.Namespace) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def optimizer_kwargs(implementation: str, params: list[torch.nn.Parameter]) -> dict:
    """`torch.optim.AdamW` keyword arguments for `--optimizer_implementation`. `auto` picks the fused kernel where
    every parameter is a CUDA float tensor (one kernel for all parameters, the fastest there); elsewhere it leaves
    torch's own choice, so a CPU run's numerics do not depend on this flag."""
    if implementation == "auto":
        on_cuda = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
        return {"fused": True} if on_cuda else {}
    if implementation == "fused":
        return {"fused": True}
    return {"foreach": implementation == "foreach"}


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU has bf16 matrix instructions (x86 `avx512_bf16`/`amx_bf16`, Arm `bf16`), from
    /proc/cpuinfo; None where that cannot be read. Without them bf16 autocast was measured 10.6x slower than fp32
    (AVX2 AMD EPYC, Zen 3; docs/benchmarks.md), so the training scripts warn instead of assuming it pays."""
    info = cpu_info()
    return None if info is None else bool(cpu_flags(info) & BF16_CPU_FLAGS)


def cpu_info() -> dict[str, str] | None:
    """The first processor's fields in /proc/cpuinfo (`model name`, `cpu family`, `flags`, ...); None where that
    file cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n")[0]
    except OSError:
        return None
    fields = (line.split(":", 1) for line in first.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields}


def cpu_flags(info: dict[str, str]) -> set[str]:
    """The instruction-set flags of `cpu_info()` (`flags` on x86, `Features` on Arm)."""
    return set(info.get("flags", info.get("Features", "")).split())


def warn_if_slow_precision(accelerator, logger) -> None:
    """bf16 mixed precision on a CPU without bf16 instructions: say so once, with the measured cost."""
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16" and cpu_has_native_bf16() is False:
        logger.warning(
            "--mixed_precision bf16 on a CPU without bf16 instructions (no avx512_bf16/amx_bf16): bf16 autocast was "
            "measured 10.6x slower than fp32 on such a CPU. Prefer --mixed_precision no here, or measure it with "
            "benchmarks/bench_train.py."
        )
