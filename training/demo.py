"""The main job: train dito-tiny on real photographs, then reconstruct held-out crops and report metrics.

With no arguments it needs no network and no data: it cuts random crops of the colour photos bundled inside
scikit-image into image folders (training photos and held-out photos never share a source), trains with
`training/train_dito.py`, and evaluates with `training/evaluate_dito.py`. Point it at your own folders with
`--train_data_dir` and `--eval_data_dir`.

    python training/demo.py --output_dir dito-demo
    python training/demo.py --train_data_dir my_photos/ --eval_data_dir my_held_out/ --output_dir my-run

Outputs under `--output_dir`: `pipeline/` (the trained DiToPipeline, loadable with `DiToPipeline.from_pretrained`),
`evaluation/metrics.json`, `evaluation/reconstructions.png` (original | reconstruction | error),
`evaluation/sweep.png` (PSNR and SWD against decoding steps), and `data/` when the bundled photos are used.
"""

import argparse
import os
import sys
import time
from pathlib import Path

# Run as a file, this script has training/ on sys.path, not the repository root: add the root for `training.*`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from diffusers_dito.sample_data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, write_photo_crops  # noqa: E402
from training import evaluate_dito, train_dito  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="dito-demo")
    parser.add_argument("--train_data_dir", default=None, help="Your image folder (default: bundled photo crops).")
    parser.add_argument("--eval_data_dir", default=None, help="Held-out images (default: bundled photo crops).")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num_train_crops", type=int, default=512)
    parser.add_argument("--num_eval_crops", type=int, default=16)
    parser.add_argument("--max_train_steps", type=int, default=400)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Higher than the paper's 1e-4: tiny model.")
    parser.add_argument("--noise_sync_prob", type=float, default=0.1)
    parser.add_argument("--eval_steps", type=int, default=25, help="Euler steps for the reconstructions.")
    parser.add_argument("--sweep_steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 25, 50])
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(args) -> Path:
    start = time.time()
    out = Path(args.output_dir)
    train_dir, eval_dir = args.train_data_dir, args.eval_data_dir
    if train_dir is None:
        train_dir = out / "data" / "train"
        write_photo_crops(train_dir, args.num_train_crops, args.resolution, TRAIN_PHOTOS, seed=args.seed)
        print(f"wrote {args.num_train_crops} crops of {', '.join(TRAIN_PHOTOS)} to {train_dir}")
    if eval_dir is None:
        eval_dir = out / "data" / "held_out"
        write_photo_crops(eval_dir, args.num_eval_crops, args.resolution, HELD_OUT_PHOTOS, seed=args.seed + 1)
        print(f"wrote {args.num_eval_crops} held-out crops of {', '.join(HELD_OUT_PHOTOS)} to {eval_dir}")

    pipeline_dir = out / "pipeline"
    train_dito.main(
        train_dito.parse_args(
            [
                "--train_data_dir", str(train_dir),
                "--model_preset", "dito-tiny",
                "--resolution", str(args.resolution),
                "--train_batch_size", str(args.train_batch_size),
                "--max_train_steps", str(args.max_train_steps),
                "--learning_rate", str(args.learning_rate),
                "--noise_sync_prob", str(args.noise_sync_prob),
                "--checkpointing_steps", str(max(args.max_train_steps // 2, 1)),
                "--checkpoints_total_limit", "1",
                "--validation_steps", str(args.max_train_steps),
                "--seed", str(args.seed),
                "--output_dir", str(pipeline_dir),
            ]
        )
    )  # fmt: skip
    evaluate_dito.main(
        evaluate_dito.parse_args(
            [
                "--model", str(pipeline_dir),
                "--data_dir", str(eval_dir),
                "--steps", str(args.eval_steps),
                "--sweep_steps", *map(str, args.sweep_steps),
                "--seed", str(args.seed),
                "--output_dir", str(out / "evaluation"),
            ]
        )
    )  # fmt: skip
    print(f"\ndone in {time.time() - start:.0f}s. Outputs in {out}/:")
    print(f"  pipeline/                      trained DiToPipeline (DiToPipeline.from_pretrained('{pipeline_dir}'))")
    print("  evaluation/metrics.json        PSNR, SSIM, SWD, high-frequency ratio, and the steps sweep")
    print("  evaluation/reconstructions.png original | reconstruction | error")
    print("  evaluation/sweep.png           PSNR and SWD against decoding steps (Euler, Heun)")
    return out


if __name__ == "__main__":
    main(parse_args())
