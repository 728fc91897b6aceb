"""One prepared, time-bounded GPU check: correctness on CUDA, then training and decode throughput.

Sections, each run under its own time budget (a section that fails or overruns records its error and the run goes
on), written to `--output_dir` as `gpu_check.json` and `gpu_check.md` after every result, so that a run stopped
from outside still leaves what it measured:

- `correctness`: 20 training steps of dito-tiny in bf16 and in fp16 with a `GradScaler` (the losses are finite and
  a fixed-noise loss falls); seeded DiTo-B decodes are bit-identical; `torch.cuda.max_memory_allocated` of a tiled
  2048² decode against an untiled 256² decode.
- `matmul_peak`: the bf16 dense matmul FLOP/s of this GPU, which MFU is quoted against.
- `train_dito_b`: DiTo-B (f8c4) training at 256² in bf16 at the largest batch that fits (64, halved on
  out-of-memory): eager, then + channels_last, then + fused AdamW. `train_dito_b_compiled` adds `torch.compile`
  (run last, as its compilation is what most likely overruns). Images/s, MFU (forward+backward FLOPs counted by
  `torch.utils.flop_counter`, no recomputation) and peak memory.
- `train_dito_xl`: DiTo-XL with gradient checkpointing, channels_last and fused AdamW at a batch that fits.
- `decode`: DiTo-B decode throughput at 256² with 1, 4 and 50 Euler steps (bf16 autocast), over an AutoencoderKL
  decode in the SD-VAE layout (widths 128-256-512-512, 4 latent channels) timed interleaved in the same run.

Each training step is the bare one (loss, backward, AdamW step), not `training/train_dito.py`: no data loading, EMA
or clipping. `torch.compile` compiles the encoder and the decoder UNet, which trace without a graph break; the
script's `--torch_compile` compiles its whole training objective, whose generator calls split the graph in a few
places. The exit status is 1 when a section did not finish or a correctness check failed.

    python benchmarks/gpu_check.py --output_dir gpu_check                       # one GPU, about 7 minutes
    python benchmarks/gpu_check.py --output_dir gpu_check_rerun --sections train_dito_b_compiled
    python benchmarks/gpu_check.py --dry_run --output_dir /tmp/gpu_check        # CPU, toy sizes, under a minute
"""

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import math
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import diffusers
import torch
import torch.nn.functional as F

from bench_decode import count, sd_vae_layout_kl
from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, dito_flow_matching_loss
from diffusers_dito.benchmarking import (
    count_flops,
    interleaved_medians,
    machine_info,
    markdown_table,
    matmul_peak_flops,
    sync,
)


# ------------------------------------------------------------------------------------------------------------ sizes
@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything in which the GPU run and the CPU dry run differ."""

    device: str
    check_preset: str  # the short correctness trainings
    check_resolution: int
    check_batch: int
    check_steps: int
    preset: str  # determinism, tiling, decode and the training throughput (DiTo-B)
    xl_preset: str
    resolution: int
    tiled_resolution: int
    tile_size: int
    tile_overlap: int
    determinism_steps: int
    max_batch: int  # the first training batch tried; halved on out-of-memory
    xl_batch: int
    warmup_steps: int  # the first one runs at the batch that fit, so warm-up is at least 1
    timed_steps: int
    decode_steps: tuple[int, ...]
    decode_batch: int
    decode_repeats: int
    kl_width: int  # 128: the SD-VAE
    matmul_size: int
    compile_backend: str


GPU = Sizes(
    device="cuda", check_preset="dito-tiny", check_resolution=64, check_batch=8, check_steps=20,
    preset="dito-b-f8c4", xl_preset="dito-xl-f8c4", resolution=256, tiled_resolution=2048, tile_size=256,
    tile_overlap=64, determinism_steps=4, max_batch=64, xl_batch=32, warmup_steps=2, timed_steps=6,
    decode_steps=(1, 4, 50), decode_batch=8, decode_repeats=3, kl_width=128, matmul_size=8192,
    compile_backend="inductor",
)  # fmt: skip
# The dry run checks the script, not the hardware: dito-tiny stands in for DiTo-B and XL, and dynamo traces with the
# eager backend, since inductor's C++ compile of even a tiny model takes minutes on two shared cores. 16² images (2×2
# latents): the whole dry run has to stay under a minute on two loaded cores, where fp16 autocast is slow.
DRY_RUN = Sizes(
    device="cpu", check_preset="dito-tiny", check_resolution=16, check_batch=2, check_steps=2,
    preset="dito-tiny", xl_preset="dito-tiny", resolution=16, tiled_resolution=32, tile_size=16, tile_overlap=8,
    determinism_steps=1, max_batch=4, xl_batch=2, warmup_steps=1, timed_steps=1, decode_steps=(1, 2),
    decode_batch=2, decode_repeats=1, kl_width=32, matmul_size=128, compile_backend="eager",
)  # fmt: skip

CHECK_LEARNING_RATE = 5e-4  # high enough that 20 steps on one fixed batch visibly lower its loss
LEARNING_RATE = 1e-4  # the paper's; it does not change the throughput
WEIGHT_DECAY = 0.01
NOISE_SYNC_PROB = 0.1
# A tiled decode holds one tile's activations plus a few image-sized buffers (the sample, the blended velocity: 48 MiB
# each at 2048² in fp32), against one 256² decode of DiTo-B of a few hundred MiB.
TILED_MEMORY_BOUND = 2.0
MIN_SECTION_S = 5.0  # a section with less time than this left is skipped, not started


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    channels_last: bool = False
    fused_adamw: bool = False
    compile: bool = False
    gradient_checkpointing: bool = False


# Cumulative: each variant adds one change to the one before, so each row's gain is that change's.
DITO_B_VARIANTS = {
    "eager": TrainOptions(),
    "+ channels_last": TrainOptions(channels_last=True),
    "+ fused AdamW": TrainOptions(channels_last=True, fused_adamw=True),
}
DITO_B_COMPILED = {"+ torch.compile": TrainOptions(channels_last=True, fused_adamw=True, compile=True)}
DITO_XL = {"gradient checkpointing": TrainOptions(channels_last=True, fused_adamw=True, gradient_checkpointing=True)}


# ---------------------------------------------------------------------------------------------------------- helpers
class SectionTimeout(BaseException):
    """Raised by the alarm when a section overruns its budget. A `BaseException`, so that no `except Exception`
    on the way (in dynamo's compile, say) can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def alarm(signum, frame):
        raise SectionTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast, or nothing for `dtype=None` (fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def peak_memory_mib(device: torch.device, fn: Callable[[], object]) -> float | None:
    """`torch.cuda.max_memory_allocated` during `fn` above what was allocated before it; None on CPU, which keeps no
    such counter (benchmarks/bench_memory.py measures CPU peaks in subprocesses)."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def build_vae(preset: str, device: torch.device) -> AutoencoderDiTo:
    torch.manual_seed(0)
    with device:  # initialised where it runs: a CPU init of DiTo-XL's 0.65B weights alone would take many seconds
        return AutoencoderDiTo.from_config(DITO_PRESETS[preset])


def smooth_images(batch_size: int, resolution: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Images in [-1, 1] with structure at every scale (bicubic up-sampled noise), the same for a given seed."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch_size, 3, resolution // 8, resolution // 8, generator=g) * 2 - 1
    images = F.interpolate(coarse, size=resolution, mode="bicubic", align_corners=False).clamp(-1, 1)
    return images.to(device)  # (B, 3, R, R)


def train_step(vae, optimizer, images, generator, dtype: torch.dtype, scaler=None) -> torch.Tensor:
    """One bare step: the DiTo loss under autocast, backward, AdamW. No `.item()`, so it never waits for the GPU."""
    optimizer.zero_grad(set_to_none=True)  # first, so that a step that ran out of memory leaves no gradients behind
    with autocast(images.device, dtype):
        loss = dito_flow_matching_loss(vae, images, noise_sync_prob=NOISE_SYNC_PROB, generator=generator).loss
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()


def fit_batch(step: Callable[[int], object], batch_size: int, device: torch.device) -> int:
    """The largest of batch_size, batch_size / 2, ... at which `step(batch)` runs without running out of memory."""
    while True:
        try:
            step(batch_size)
            return batch_size
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
        free_memory(device)  # after the except block, whose traceback held the failed step's tensors
        batch_size //= 2


# ------------------------------------------------------------------------------------------------------ correctness
def short_training(ctx, name: str, dtype: torch.dtype) -> dict:
    """`check_steps` steps on one fixed batch; the loss at fixed noise must be finite and lower afterwards."""
    s, device = ctx.sizes, ctx.device
    vae = build_vae(s.check_preset, device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=CHECK_LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    images = smooth_images(s.check_batch, s.check_resolution, device)
    generator = torch.Generator(device).manual_seed(0)

    def fixed_noise_loss() -> float:
        with torch.no_grad(), autocast(device, dtype):
            fixed = torch.Generator(device).manual_seed(1)
            return dito_flow_matching_loss(vae, images, NOISE_SYNC_PROB, generator=fixed).loss.item()

    before, losses, scales = fixed_noise_loss(), [], []
    initial_scale = scaler.get_scale() if scaler is not None else None
    for _ in range(s.check_steps):
        losses.append(train_step(vae, optimizer, images, generator, dtype, scaler))
        if scaler is not None:
            scales.append(scaler.get_scale())
    after = fixed_noise_loss()
    losses = torch.stack(losses).float().cpu()
    finite = bool(torch.isfinite(losses).all()) and math.isfinite(before) and math.isfinite(after)
    detail = f"fixed-noise loss {before:.4f} -> {after:.4f}; step losses {losses[0]:.4f} ... {losses[-1]:.4f}"
    if scaler is not None:  # the scaler lowers its scale exactly when it skips a step for inf/NaN gradients
        skipped = sum(later < earlier for earlier, later in zip([initial_scale] + scales, scales))
        detail += f"; {skipped} steps skipped by the scaler, final scale {scales[-1]:g}"
    return {
        "check": f"{s.check_steps} training steps, {s.check_preset} {s.check_resolution}², {name}",
        "passed": finite and after < before,
        "value": after / before,
        "detail": detail,
    }


def decode_determinism(ctx, vae: AutoencoderDiTo, name: str, dtype: torch.dtype | None) -> dict:
    """The same seed twice gives bit-identical images, another seed other images."""
    s, device = ctx.sizes, ctx.device
    side = s.resolution // vae.downsample_factor
    z = torch.randn(2, vae.config.latent_channels, side, side, generator=torch.Generator().manual_seed(0)).to(device)

    def decode(seed: int) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(seed)
        with torch.no_grad(), autocast(device, dtype):
            return vae.decode(z, num_inference_steps=s.determinism_steps, generator=generator).sample.float()

    first, again, other = decode(0), decode(0), decode(1)
    repeat_diff = (first - again).abs().max().item()
    other_diff = (first - other).abs().max().item()
    return {
        "check": f"seeded {s.determinism_steps}-step decode determinism, {s.preset} {s.resolution}², {name}",
        "passed": repeat_diff == 0 and other_diff > 0,
        "value": repeat_diff,
        "detail": f"max abs difference: same seed {repeat_diff:.3g}, other seed {other_diff:.3g}",
    }


def tiled_decode_memory(ctx, vae: AutoencoderDiTo) -> dict:
    """Peak memory of a tiled `tiled_resolution`² decode over that of one untiled tile-sized decode (fp32, 1 step)."""
    s, device = ctx.sizes, ctx.device
    f, c = vae.downsample_factor, vae.config.latent_channels

    def peak(resolution: int, tiled: bool) -> float | None:
        z = torch.randn(1, c, resolution // f, resolution // f, device=device)
        if tiled:
            vae.enable_tiling(s.tile_size, s.tile_overlap)
        else:
            vae.disable_tiling()
        with torch.no_grad():
            return peak_memory_mib(device, lambda: vae.decode(z, num_inference_steps=1))

    one_tile = peak(s.tile_size, tiled=False)
    tiled = peak(s.tiled_resolution, tiled=True)
    vae.disable_tiling()
    try:  # context only: how much the tiling saves
        untiled = peak(s.tiled_resolution, tiled=False)
    except torch.OutOfMemoryError:
        untiled = "out of memory"
    ratio = tiled / one_tile if tiled is not None else None
    return {
        "check": f"peak memory: tiled {s.tiled_resolution}² decode / untiled {s.tile_size}² (<= {TILED_MEMORY_BOUND})",
        "passed": None if ratio is None else ratio <= TILED_MEMORY_BOUND,
        "value": ratio,
        "detail": f"tiled {s.tiled_resolution}² (tiles {s.tile_size}, overlap {s.tile_overlap}): {_mib(tiled)}; "
        f"untiled {s.tile_size}²: {_mib(one_tile)}; untiled {s.tiled_resolution}²: {_mib(untiled)}"
        + ("" if device.type == "cuda" else " (no peak-memory counter on CPU)"),
    }


def _mib(value) -> str:
    return f"{value:.0f} MiB" if isinstance(value, float) else "n/a" if value is None else str(value)


def check_correctness(ctx, add_row) -> None:
    torch.backends.cudnn.benchmark = False  # one algorithm per convolution, whatever the timing noise
    add_row(short_training(ctx, "bf16 autocast", torch.bfloat16))
    add_row(short_training(ctx, "fp16 autocast + GradScaler", torch.float16))
    vae = build_vae(ctx.sizes.preset, ctx.device).eval()
    add_row(decode_determinism(ctx, vae, "fp32", None))
    add_row(decode_determinism(ctx, vae, "bf16 autocast", torch.bfloat16))
    add_row(tiled_decode_memory(ctx, vae))


def check_matmul_peak(ctx, add_row) -> None:
    # 200 products (about 0.3 s at 8192² on an H200), so that the clocks have ramped up before the best timing
    peak = matmul_peak_flops(ctx.device, torch.bfloat16, ctx.sizes.matmul_size, repeats=10, inner=20)
    ctx.peak_flops = peak
    add_row({"dtype": "bf16", "size": ctx.sizes.matmul_size, "tflops_per_s": peak / 1e12})


# ---------------------------------------------------------------------------------------------------------- training
def training_flops_per_image(ctx, vae: AutoencoderDiTo) -> float:
    """Forward+backward FLOPs of one training image, counted once on the eager model before any option is applied
    (so without the recomputation of gradient checkpointing: model FLOPs, as MFU counts them)."""
    images = smooth_images(1, ctx.sizes.resolution, ctx.device)
    generator = torch.Generator(ctx.device).manual_seed(0)

    def forward_backward():
        with autocast(ctx.device, torch.bfloat16):
            loss = dito_flow_matching_loss(vae, images, NOISE_SYNC_PROB, generator=generator).loss
        loss.backward()

    flops = count_flops(forward_backward)
    vae.zero_grad(set_to_none=True)
    return flops


def prepare_training(ctx, vae: AutoencoderDiTo, options: TrainOptions) -> torch.optim.Optimizer:
    """Apply `options` to `vae` in place; return its AdamW (foreach, PyTorch's default on GPU, unless fused)."""
    if options.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    if options.channels_last:
        vae.to(memory_format=torch.channels_last)
    if options.compile:
        # The loss calls `encode` and `predict_velocity`, not `forward`: compile the two networks themselves.
        for module in (vae.encoder, vae.decoder_unet):
            module.compile(backend=ctx.sizes.compile_backend, mode=ctx.args.compile_mode)
    fused = True if options.fused_adamw else None  # None: PyTorch picks foreach on GPU
    return torch.optim.AdamW(vae.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=fused)


def time_training(ctx, vae, optimizer, options: TrainOptions, batch_size: int, soft_end: float) -> dict:
    """Fit the batch, warm up, then time up to `timed_steps` steps (at least one; no new one after `soft_end`)."""
    s, device = ctx.sizes, ctx.device
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    generator = torch.Generator(device).manual_seed(0)

    def images_of(batch: int) -> torch.Tensor:
        return smooth_images(batch, s.resolution, device).contiguous(memory_format=memory_format)

    def step(batch: int) -> torch.Tensor:
        return train_step(vae, optimizer, images_of(batch), generator, torch.bfloat16)

    batch_size = fit_batch(step, batch_size, device)  # its successful step is the first warm-up step
    images = images_of(batch_size)
    for _ in range(s.warmup_steps - 1):
        train_step(vae, optimizer, images, generator, torch.bfloat16)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, start = [], time.perf_counter()
    while len(losses) < s.timed_steps and (not losses or time.monotonic() < soft_end):
        losses.append(train_step(vae, optimizer, images, generator, torch.bfloat16))
    sync(device)
    seconds = (time.perf_counter() - start) / len(losses)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"batch_size": batch_size, "step_s": seconds, "images_per_s": batch_size / seconds, "peak_memory_gib": peak,
            "timed_steps": len(losses), "last_loss": torch.stack(losses)[-1].item()}  # fmt: skip


def train_variants(ctx, add_row, preset: str, variants: dict[str, TrainOptions], batch_size: int) -> int:
    """One row per variant, each on a fresh model, sharing the section's time left equally; returns the batch size
    that fitted the last one."""
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolution algorithms
    for i, (name, options) in enumerate(variants.items()):
        vae = build_vae(preset, ctx.device).train()
        if preset not in ctx.flops_per_image:
            ctx.flops_per_image[preset] = training_flops_per_image(ctx, vae)
        optimizer = prepare_training(ctx, vae, options)
        soft_end = time.monotonic() + (ctx.section_end - time.monotonic()) / (len(variants) - i) * 0.8
        graph_breaks = _graph_breaks() if options.compile else None
        row = time_training(ctx, vae, optimizer, options, batch_size, soft_end)
        batch_size = row["batch_size"]  # the next variants start at the batch that fitted
        flops = ctx.flops_per_image[preset] * row["images_per_s"]
        row = {"model": preset, "variant": name, **row, "tflops_per_s": flops / 1e12}
        row["mfu"] = flops / ctx.peak_flops if ctx.peak_flops else None
        if options.compile:
            row["graph_breaks"] = _graph_breaks() - graph_breaks  # each one splits the compiled graph
        add_row(row)
        del vae, optimizer
        free_memory(ctx.device)
    return batch_size


def _graph_breaks() -> int:
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def check_train_dito_b(ctx, add_row) -> None:
    ctx.dito_b_batch = train_variants(ctx, add_row, ctx.sizes.preset, DITO_B_VARIANTS, ctx.sizes.max_batch)


def check_train_dito_b_compiled(ctx, add_row) -> None:
    batch = ctx.dito_b_batch or ctx.sizes.max_batch  # the eager batch: each batch tried would compile anew
    try:
        train_variants(ctx, add_row, ctx.sizes.preset, DITO_B_COMPILED, batch)
    finally:
        torch._dynamo.reset()  # drop the compiled graphs (and their memory) whether or not it finished


def check_train_dito_xl(ctx, add_row) -> None:
    train_variants(ctx, add_row, ctx.sizes.xl_preset, DITO_XL, ctx.sizes.xl_batch)


# ------------------------------------------------------------------------------------------------------------ decode
def check_decode(ctx, add_row) -> None:
    """Images/s of DiTo decodes at each step count and of an SD-VAE-layout AutoencoderKL decode, interleaved."""
    torch.backends.cudnn.benchmark = True
    s, device = ctx.sizes, ctx.device
    vae = build_vae(s.preset, device).eval()
    c, f = vae.config.latent_channels, vae.downsample_factor
    with device:
        kl = sd_vae_layout_kl(s.kl_width, c, num_blocks=len(vae.config.block_out_channels)).eval()
    z = torch.randn(s.decode_batch, c, s.resolution // f, s.resolution // f, device=device)
    generator = torch.Generator(device)

    def kl_decode():
        with torch.no_grad(), autocast(device, torch.bfloat16):
            kl.decode(z)

    def dito_decode(steps: int):
        def run():
            with torch.no_grad(), autocast(device, torch.bfloat16):
                vae.decode(z, num_inference_steps=steps, generator=generator.manual_seed(0))

        return run

    fns = {"kl": kl_decode, **{steps: dito_decode(steps) for steps in s.decode_steps}}
    seconds = interleaved_medians(fns, device, s.decode_repeats)
    rows = [{"decoder": f"AutoencoderKL, SD-VAE layout (width {s.kl_width})", "steps": None,
             "params_m": count(kl.decoder) / 1e6, "key": "kl"}]  # fmt: skip
    rows += [{"decoder": s.preset, "steps": n, "params_m": count(vae.decoder_unet) / 1e6, "key": n}
             for n in s.decode_steps]  # fmt: skip
    for row in rows:
        key = row.pop("key")
        add_row({**row, "batch_size": s.decode_batch, "resolution": s.resolution,
                 "images_per_s": s.decode_batch / seconds[key], "ms_per_image": 1e3 * seconds[key] / s.decode_batch,
                 "time_over_kl": seconds[key] / seconds["kl"]})  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- sections
class Section(NamedTuple):
    function: Callable
    title: str
    budget_s: float


SECTIONS = {  # in the order they run: the compiled training last, as its compilation is the likeliest to overrun
    "correctness": Section(check_correctness, "Correctness", 50),
    "matmul_peak": Section(check_matmul_peak, "bf16 matmul peak", 10),
    "train_dito_b": Section(check_train_dito_b, "Training throughput, DiTo-B, bf16", 90),
    "train_dito_xl": Section(check_train_dito_xl, "Training throughput, DiTo-XL, bf16", 75),
    "decode": Section(check_decode, "Decode throughput, bf16 autocast", 45),
    "train_dito_b_compiled": Section(check_train_dito_b_compiled, "DiTo-B, bf16, torch.compile", 150),
}
REPORT_ORDER = ["correctness", "matmul_peak", "train_dito_b", "train_dito_b_compiled", "train_dito_xl", "decode"]


class Report:
    """The JSON and markdown files, rewritten after every row, so that a run killed from outside keeps its rows."""

    def __init__(self, output_dir: Path, environment: dict, args: dict):
        self.output_dir = output_dir
        self.data = {"environment": environment, "args": args, "sections": {}}

    def start(self, name: str) -> None:
        self.data["sections"][name] = {"title": SECTIONS[name].title, "status": "running", "seconds": None,
                                       "error": None, "rows": []}  # fmt: skip
        self.save()

    def add_row(self, name: str, row: dict) -> None:
        self.data["sections"][name]["rows"].append(row)
        self.save()

    def finish(self, name: str, status: str, seconds: float, error: str | None = None) -> None:
        self.data["sections"][name].update(status=status, seconds=seconds, error=error)
        self.save()

    def save(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.output_dir / "gpu_check.md").write_text(self.markdown())

    def markdown(self) -> str:
        env = self.data["environment"]
        lines = [f"# GPU check: {env['processor'] or platform.machine()}", ""]
        lines.append(f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, diffusers {env['diffusers']}, "
                     f"commit {env['git_commit']}.")  # fmt: skip
        if self.data["args"]["dry_run"]:
            lines.append("**Dry run** on CPU at toy sizes: the numbers check the script, not the hardware.")
        for name in REPORT_ORDER:
            if name not in self.data["sections"]:
                continue
            section = self.data["sections"][name]
            seconds = "" if section["seconds"] is None else f", {section['seconds']:.1f} s"
            lines += ["", f"## {section['title']} (`{name}`): {section['status']}{seconds}", ""]
            if section["error"]:
                lines += ["```", section["error"].strip().splitlines()[-1], "```", ""]
            rows = [{k: "n/a" if v is None else v for k, v in row.items()} for row in section["rows"]]
            lines.append(markdown_table(rows))
        return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    report: Report
    section_end: float = 0.0
    peak_flops: float | None = None
    flops_per_image: dict = dataclasses.field(default_factory=dict)
    dito_b_batch: int | None = None  # the batch that fitted the eager DiTo-B runs


def run_section(ctx: Context, name: str, deadline: float) -> str:
    """Run one section under min(its budget, the time left); record its status, and its error if any."""
    budget = min(getattr(ctx.args, f"{name}_budget_s"), deadline - time.monotonic())
    ctx.report.start(name)
    if budget < MIN_SECTION_S:
        ctx.report.finish(name, "skipped", 0.0, "the run's --time_budget_s was spent")
        return "skipped"
    start = time.monotonic()
    ctx.section_end = start + budget
    status, error = "ok", None
    try:
        with time_limit(budget):
            SECTIONS[name].function(ctx, functools.partial(ctx.report.add_row, name))
    except SectionTimeout:
        status, error = "timeout", f"stopped at its budget of {budget:.0f} s (--{name}_budget_s)"
    except Exception:  # recorded, and the next section runs
        status, error = "failed", traceback.format_exc()[-4000:]
        print(error, file=sys.stderr)
    free_memory(ctx.device)
    ctx.report.finish(name, status, time.monotonic() - start, error)
    print(f"{name}: {status} in {time.monotonic() - start:.1f} s", flush=True)
    return status


# -------------------------------------------------------------------------------------------------------------- main
def environment(device: torch.device) -> dict:
    info = machine_info(device)
    info.update(python=platform.python_version(), diffusers=diffusers.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), git_commit=git_commit())  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count)  # fmt: skip
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None  # a copy of the tree without .git has none


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="gpu_check", help="Gets gpu_check.json and gpu_check.md.")
    parser.add_argument("--dry_run", action="store_true", help="CPU, toy sizes: checks the script in under a minute.")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--time_budget_s", type=float, default=420, help="For the whole run; sections left skip.")
    for name, section in SECTIONS.items():
        parser.add_argument(f"--{name}_budget_s", type=float, default=section.budget_s, help=f"{section.title}.")
    parser.add_argument("--max_batch_size", type=int, default=None, help="First DiTo-B batch tried (default 64).")
    parser.add_argument("--xl_batch_size", type=int, default=None, help="First DiTo-XL batch tried (default 32).")
    parser.add_argument("--compile_mode", default=None, help="torch.compile mode (default: inductor's default).")
    return parser.parse_args(argv)


def main(args) -> dict:
    deadline = time.monotonic() + args.time_budget_s
    sizes = DRY_RUN if args.dry_run else GPU
    sizes = dataclasses.replace(sizes, max_batch=args.max_batch_size or sizes.max_batch,
                                xl_batch=args.xl_batch_size or sizes.xl_batch)  # fmt: skip
    device = torch.device(sizes.device)
    if args.dry_run:  # toy models gain nothing from a second thread, and lose a lot when the cores are shared
        torch.set_num_threads(1)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device here; --dry_run runs the same code on CPU at toy sizes.")
    report = Report(Path(args.output_dir), environment(device), vars(args) | {"sizes": dataclasses.asdict(sizes)})
    ctx = Context(args=args, sizes=sizes, device=device, report=report)
    statuses = [run_section(ctx, name, deadline) for name in SECTIONS if name in args.sections]
    rows = [row for section in report.data["sections"].values() for row in section["rows"]]
    report.data["all_ok"] = all(s == "ok" for s in statuses) and all(row.get("passed") is not False for row in rows)
    report.save()
    print(report.markdown())
    print(f"wrote {Path(args.output_dir) / 'gpu_check.json'} and gpu_check.md")
    return report.data


if __name__ == "__main__":
    sys.exit(0 if main(parse_args())["all_ok"] else 1)
