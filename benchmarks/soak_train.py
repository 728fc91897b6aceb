"""Soak test of `training/train_dito.py`: resident memory over many steps, with validation and checkpoints.

The real script trains a tiny DiTo (channels 8-32, 32 px; `--preset` for a real one) for `--steps` steps. It
validates every `--validation_steps` steps and checkpoints every `--checkpointing_steps` steps (at most 2 kept), with
EMA and TensorBoard logging. It runs in this process, and the process's resident set size (/proc/self/statm) is
read after every step (the loop records it when the hidden `--debug_dump_dir` is given). A leak anywhere around the
network shows up as RSS that keeps growing: in data loading, the logs, validation grids, checkpoint writes or EMA
swaps. Until the first validation and checkpoint have run, allocators and caches are still filling up, so the
reference is the RSS `--warmup_steps` after the first of both (the "warm" step). The check: the RSS at the end is at
most `--tolerance` (10%) above the warm RSS.

    python benchmarks/soak_train.py                       # 2000 steps: ~3 min on 2 shared CPU cores
    python benchmarks/soak_train.py --preset dito-tiny --steps 300 --json out/soak.json
"""

import argparse
import json
import tempfile
from pathlib import Path

import torch

from diffusers_dito import DITO_PRESETS
from diffusers_dito.benchmarking import machine_info, markdown_table, run_script, write_json
from diffusers_dito.sample_data import write_photo_crops

TRAINING_SCRIPTS = Path(__file__).resolve().parents[1] / "training"  # run as a user runs them

MIB = 2**20
# The size of the tests' models: the soak is about what surrounds the network, which this keeps cheap.
TINY_CONFIG = {
    "latent_channels": 4,
    "block_out_channels": [8, 16, 16, 16],
    "encoder_layers_per_block": 1,
    "encoder_norm_num_groups": 8,
    "decoder_block_out_channels": [8, 16, 32, 32],
    "decoder_layers_per_block": 1,
    "decoder_norm_num_groups": 8,
    "decoder_time_embedding_dim": 32,
    "num_inference_steps": 4,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, choices=sorted(DITO_PRESETS), help="Default: TINY_CONFIG.")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_images", type=int, default=64, help="Images in the folder (8 steps an epoch).")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--validation_steps", type=int, default=200)
    parser.add_argument("--checkpointing_steps", type=int, default=200)
    parser.add_argument("--warmup_steps", type=int, default=10, help="After the first validation and checkpoint.")
    parser.add_argument("--report_every", type=int, default=200, help="Rows of the RSS table.")
    parser.add_argument("--tolerance", type=float, default=0.10, help="Allowed growth of RSS, end over warm.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine).")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def run_training(data_dir: Path, out_dir: Path, args) -> tuple[list[int], float]:
    """Train with the script, in its own process; returns the RSS after each step (bytes) and the wall time (s)."""
    if args.preset is not None:
        model = ["--model_preset", args.preset]
    else:
        (out_dir / "config.json").write_text(json.dumps(TINY_CONFIG))
        model = ["--model_config", str(out_dir / "config.json")]
    argv = [
        "--train_data_dir", str(data_dir), *model, "--resolution", str(args.resolution),
        "--train_batch_size", str(args.batch_size), "--max_train_steps", str(args.steps), "--use_ema",
        "--checkpointing_steps", str(args.checkpointing_steps), "--checkpoints_total_limit", "2",
        "--validation_steps", str(args.validation_steps), "--validation_inference_steps", "4",
        "--num_validation_images", "4", "--output_dir", str(out_dir / "run"), "--cache_dir", str(out_dir / "cache"),
        "--report_to", "tensorboard", "--seed", "0", "--debug_dump_dir", str(out_dir / "dump"),
    ]  # fmt: skip
    seconds = run_script(TRAINING_SCRIPTS / "train_dito.py", argv, threads=args.threads)
    dump = json.loads((out_dir / "dump" / "rank0.json").read_text())
    return dump["rss_bytes"], seconds


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    warm_step = min(args.validation_steps, args.checkpointing_steps) + args.warmup_steps
    if warm_step >= args.steps:
        raise SystemExit(f"--steps {args.steps} must pass the warm step {warm_step} (first validation + warm-up).")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_photo_crops(tmp / "data", args.num_images, args.resolution)
        rss, seconds = run_training(tmp / "data", tmp, args)

    mib = [value / MIB for value in rss]  # rss[k] is after step k + 1
    warm, end = mib[warm_step - 1], mib[-1]
    growth = end / warm - 1
    steps = sorted({1, warm_step, *range(args.report_every, args.steps + 1, args.report_every), args.steps})
    rows = [{"step": step, "rss_mib": mib[step - 1], "vs_warm": mib[step - 1] / warm - 1} for step in steps]
    passed = growth <= args.tolerance
    device = torch.device("cpu")
    model = args.preset or "tiny config"
    title = f"{model}, {args.resolution}², batch {args.batch_size}, {args.steps} steps, {machine_info(device)}"
    print(f"\n## soak_train: {title}\n")
    print(markdown_table(rows))
    print(
        f"\nRSS warm (step {warm_step}) {warm:.1f} MiB, end {end:.1f} MiB, growth {growth:+.2%} "
        f"(limit {args.tolerance:+.0%}), peak {max(mib):.1f} MiB; {args.steps} steps in {seconds:.0f} s: "
        f"{'PASS' if passed else 'FAIL'}"
    )
    result = {
        "args": vars(args),
        "machine": machine_info(device),
        "warm_step": warm_step,
        "rss_warm_mib": warm,
        "rss_end_mib": end,
        "rss_peak_mib": max(mib),
        "rss_first_step_mib": mib[0],
        "growth_end_over_warm": growth,
        "passed": passed,
        "train_seconds": seconds,
        "rss_mib_by_step": [round(value, 2) for value in mib],
    }
    write_json(args.json, result)
    if not passed:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main(parse_args())
