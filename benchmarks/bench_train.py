"""Training-throughput benchmark for `training/train_dito.py`.

Reports, measured in one run on the same machine:
- training images/s of the real script (data loading, augmentation, loss, backward, clipping, AdamW, EMA);
- its per-step time over a bare forward+backward of `dito_flow_matching_loss` on the same batch size (target
  <= 1.10): the cost of everything around the network;
- achieved FLOP/s of the forward+backward (counted with `torch.utils.flop_counter`) as a fraction of a dense
  matmul peak measured here.

The script's per-step time is the difference of two runs with `--short` and `--short + --steps` steps, so start-up
and the final save cancel out.

    python benchmarks/bench_train.py --preset dito-tiny --resolution 32 --batch_size 16 --steps 30
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import interleaved_medians, machine_info, markdown_table, write_json
from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, dito_flow_matching_loss
from diffusers_dito.sample_data import write_photo_crops

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from training import train_dito  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dito-tiny", choices=sorted(DITO_PRESETS))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="Steps timed in the training script.")
    parser.add_argument("--short", type=int, default=5, help="Steps of the reference run (start-up cancels out).")
    parser.add_argument("--repeats", type=int, default=5, help="Bare forward+backward repeats.")
    parser.add_argument("--matmul_size", type=int, default=1024)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def script_seconds(data_dir: Path, out_dir: Path, steps: int, args) -> float:
    argv = [
        "--train_data_dir", str(data_dir), "--model_preset", args.preset, "--resolution", str(args.resolution),
        "--train_batch_size", str(args.batch_size), "--max_train_steps", str(steps), "--use_ema",
        "--checkpointing_steps", "1000000", "--validation_steps", "1000000", "--output_dir", str(out_dir),
        "--dataloader_num_workers", "0", "--seed", "0",
    ]  # fmt: skip
    start = time.perf_counter()
    train_dito.main(train_dito.parse_args(argv))
    return time.perf_counter() - start


def main(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    vae = AutoencoderDiTo.from_config(DITO_PRESETS[args.preset]).to(device).train()
    x = torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=device) * 2 - 1
    g = torch.Generator(device).manual_seed(0)

    def forward_backward():
        vae.zero_grad(set_to_none=True)
        dito_flow_matching_loss(vae, x, noise_sync_prob=0.1, generator=g).loss.backward()

    with FlopCounterMode(display=False) as counter:
        forward_backward()
    flops = counter.get_total_flops()
    a = torch.randn(args.matmul_size, args.matmul_size, device=device)

    def matmul():
        a @ a

    before = interleaved_medians({"raw": forward_backward, "matmul": matmul}, device, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_photo_crops(tmp / "data", max(64, args.batch_size * 4), args.resolution)
        short = script_seconds(tmp / "data", tmp / "short", args.short, args)
        long = script_seconds(tmp / "data", tmp / "long", args.short + args.steps, args)
    after = interleaved_medians({"raw": forward_backward, "matmul": matmul}, device, args.repeats)

    raw = (before["raw"] + after["raw"]) / 2  # bracket the script runs, so drift in machine load averages out
    peak = 2 * args.matmul_size**3 / min(before["matmul"], after["matmul"])
    step = (long - short) / args.steps
    row = {
        "train_images_per_s": args.batch_size / step,
        "script_step_s": step,
        "raw_fwd_bwd_s": raw,
        "step_over_raw": step / raw,
        "achieved_gflops": flops / raw / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "fraction_of_peak": flops / raw / peak,
    }
    print(f"\n## bench_train: {args.preset}, {args.resolution}², batch {args.batch_size}, {machine_info(device)}\n")
    print(markdown_table([row]))
    result = {"args": vars(args), "machine": machine_info(device), "flops_per_step": flops, **row}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
