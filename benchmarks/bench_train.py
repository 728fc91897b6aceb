"""Training-throughput benchmark for `training/train_dito.py`, and the effect of each speed flag.

Reports, measured in one run on the same machine:
- training images/s of the real script (data loading, augmentation, loss, backward, clipping, AdamW, EMA);
- its per-step time over a bare forward+backward of `dito_flow_matching_loss` on the same batch size (target
  <= 1.10): the cost of everything around the network;
- achieved FLOP/s of the forward+backward (counted with `torch.utils.flop_counter`) as a fraction of a dense fp32
  matmul peak measured here, with the bf16 matmul peak beside it;
- a bare training step (loss, backward, AdamW) under each speed setting of the training scripts, timed interleaved
  and given as a ratio to the plain fp32 step: `--channels_last`, `--optimizer_implementation foreach|fused`,
  `--mixed_precision bf16` (autocast) and `--torch_compile` (its one-time compile apart). Whether bf16 pays depends
  on the CPU (native bf16 units or not), so it is measured here, never assumed;
- with `--profile`, where the time of the plain step goes, by kind of operator.

The script's per-step time is the difference of two runs with `--short` and `--short + --steps` steps, so start-up
and the final save cancel out.

    python benchmarks/bench_train.py --preset dito-tiny --resolution 32 --batch_size 16 --steps 30 --profile
"""

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, dito_flow_matching_loss
from diffusers_dito.benchmarking import (
    count_flops,
    interleaved_medians,
    machine_info,
    markdown_table,
    matmul_peak_flops,
    run_script,
    write_json,
)
from diffusers_dito.sample_data import write_photo_crops
from diffusers_dito.training.objectives import DiToTrainingObjective
from diffusers_dito.training.performance import optimizer_kwargs

TRAINING_SCRIPTS = Path(__file__).resolve().parents[1] / "training"  # run as a user runs them

VARIANTS = ("fp32", "channels_last", "adamw_foreach", "adamw_fused", "bf16_autocast", "compile")
# Operator kinds of the profile: the first kind with a pattern inside the operator's name wins.
OP_KINDS = {
    "convolution": ("conv",),
    "matmul": ("addmm", "bmm", "::mm", "linear", "matmul"),
    "group/layer norm": ("group_norm", "layer_norm"),
    "SiLU": ("silu",),
    "optimizer": ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt"),
    "copies and layout": ("copy", "contiguous", "cat", "clone", "upsample", "pad", "empty", "as_strided"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dito-tiny", choices=sorted(DITO_PRESETS))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="Steps timed in the training script.")
    parser.add_argument("--short", type=int, default=5, help="Steps of the reference run (start-up cancels out).")
    parser.add_argument("--repeats", type=int, default=5, help="Repeats of each bare step.")
    parser.add_argument("--matmul_size", type=int, default=1024)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS, help="Speed settings.")
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile backend of the compile variant.")
    parser.add_argument("--profile", action="store_true", help="Also profile the plain step by operator kind.")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def script_seconds(data_dir: Path, out_dir: Path, steps: int, args) -> float:
    argv = [
        "--train_data_dir", str(data_dir), "--model_preset", args.preset, "--resolution", str(args.resolution),
        "--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps), "--use_ema",
        "--checkpointing_steps", "1000000", "--validation_steps", "1000000", "--output_dir", str(out_dir),
        "--dataloader_num_workers", "0", "--seed", "0",
    ]  # fmt: skip
    return run_script(TRAINING_SCRIPTS / "train_dito.py", argv, threads=torch.get_num_threads())


def training_step(args, device: torch.device, variant: str) -> Callable[[], None]:
    """One bare step (loss, backward, AdamW) of a fresh model under `variant`, set up the way the training scripts
    set up the matching flag."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if variant == "channels_last" else torch.contiguous_format
    vae = AutoencoderDiTo.from_config(DITO_PRESETS[args.preset]).to(device, memory_format=memory_format).train()
    params = list(vae.parameters())
    implementation = {"adamw_foreach": "foreach", "adamw_fused": "fused"}.get(variant, "auto")
    optimizer = torch.optim.AdamW(params, lr=1e-4, **optimizer_kwargs(implementation, params))
    objective = DiToTrainingObjective(vae, 0.1, memory_format=memory_format)
    if variant == "compile":
        objective = torch.compile(objective, backend=args.compile_backend)
    x = torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=device) * 2 - 1
    generator = torch.Generator(device).manual_seed(0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=variant == "bf16_autocast"):
            loss = objective(x, generator)["loss"]
        loss.backward()
        optimizer.step()

    return step


def variant_rows(args, device: torch.device, step_flops: int, fp32_peak: float) -> list[dict]:
    """Each speed setting's bare step, timed interleaved, as a ratio to the plain fp32 step."""
    steps, compile_seconds = {}, None
    for variant in args.variants:
        steps[variant] = training_step(args, device, variant)
        if variant == "compile":  # the first call compiles: timed on its own, then excluded
            start = time.perf_counter()
            steps[variant]()
            compile_seconds = time.perf_counter() - start
    medians = interleaved_medians(steps, device, args.repeats)
    base = medians.get("fp32", next(iter(medians.values())))
    rows = []
    for variant, seconds in medians.items():
        row = {"variant": variant, "step_s": seconds, "images_per_s": args.batch_size / seconds}
        row["time_vs_fp32"] = seconds / base
        row["fraction_of_fp32_peak"] = step_flops / seconds / fp32_peak
        row["compile_s"] = compile_seconds if variant == "compile" else "-"  # the first call, excluded above
        rows.append(row)
    return rows


def profile_by_kind(step: Callable[[], None], repeats: int = 3) -> list[dict]:
    """Self CPU time of the plain step's operators, summed by kind (`OP_KINDS`), as fractions of the total."""
    step()  # warm-up outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, patterns in OP_KINDS.items() if any(p in name for p in patterns)), "other")
        totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total
    everything = sum(totals.values()) or 1.0
    rows = [
        {"kind": kind, "fraction_of_step": us / everything, "ms_per_step": us / 1e3 / repeats}
        for kind, us in totals.items()
    ]
    return sorted(rows, key=lambda row: -row["fraction_of_step"])


def main(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vae = AutoencoderDiTo.from_config(DITO_PRESETS[args.preset]).to(device).train()
    x = torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=device) * 2 - 1
    g = torch.Generator(device).manual_seed(0)

    def forward_backward():
        vae.zero_grad(set_to_none=True)
        dito_flow_matching_loss(vae, x, noise_sync_prob=0.1, generator=g).loss.backward()

    flops = count_flops(forward_backward)
    fp32_peak = matmul_peak_flops(device, torch.float32, args.matmul_size)
    bf16_peak = matmul_peak_flops(device, torch.bfloat16, args.matmul_size)
    before = interleaved_medians({"raw": forward_backward}, device, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_photo_crops(tmp / "data", max(64, args.batch_size * 4), args.resolution)
        short = script_seconds(tmp / "data", tmp / "short", args.short, args)
        long = script_seconds(tmp / "data", tmp / "long", args.short + args.steps, args)
    after = interleaved_medians({"raw": forward_backward}, device, args.repeats)

    raw = (before["raw"] + after["raw"]) / 2  # bracket the script runs, so drift in machine load averages out
    step = (long - short) / args.steps
    row = {
        "train_images_per_s": args.batch_size / step,
        "script_step_s": step,
        "raw_fwd_bwd_s": raw,
        "step_over_raw": step / raw,
        "achieved_gflops": flops / raw / 1e9,
        "matmul_peak_gflops": fp32_peak / 1e9,
        "bf16_matmul_peak_gflops": bf16_peak / 1e9,
        "fraction_of_peak": flops / raw / fp32_peak,
    }
    variants = variant_rows(args, device, flops, fp32_peak) if args.variants else []
    profile = profile_by_kind(training_step(args, device, "fp32")) if args.profile else []
    report(args, device, row, variants, profile)
    result = {"args": vars(args), "machine": machine_info(device), "flops_per_step": flops, **row}
    write_json(args.json, {**result, "variants": variants, "profile": profile})
    return {**result, "variants": variants, "profile": profile}


def report(args, device: torch.device, row: dict, variants: list[dict], profile: list[dict]) -> None:
    print(f"\n## bench_train: {args.preset}, {args.resolution}², batch {args.batch_size}, {machine_info(device)}\n")
    print(markdown_table([row]))
    if variants:
        print("\n### Speed settings: a bare step (loss, backward, AdamW), interleaved\n")
        print(markdown_table(variants))
        bf16 = next((v["time_vs_fp32"] for v in variants if v["variant"] == "bf16_autocast"), None)
        if bf16 is not None:
            verdict = "faster here" if bf16 < 1 else "SLOWER here: keep fp32 (--mixed_precision no)"
            print(f"\nbf16 autocast takes {bf16:.2f}× the fp32 step on this {device.type}: {verdict}.")
    if profile:
        print("\n### Where the plain step's time goes (self CPU time by operator kind)\n")
        print(markdown_table(profile))


if __name__ == "__main__":
    main(parse_args())
