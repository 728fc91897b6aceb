r"""A toy run of the DiTo+LPIPS variant: the main job (`training/demo.py`) with `--lpips_weight`, next to the same job
without it, on the same held-out crops.

No ImageNet backbone can be downloaded here, so by default the LPIPS network gets a **randomly initialised** AlexNet
(seeded, written by this script): the run checks the variant's mechanics and cost at demo scale, and how a
perceptual-feature term moves the metrics, but it is not the paper's LPIPS. Give `--lpips_backbone` (torchvision's
`alexnet-owt-7be5be79.pth` or, with `--lpips_net vgg`, `vgg16-397923af.pth`) for the real one.

    python experiments/lpips_toy_run/lpips_toy_run.py --output_dir lpips-toy \
        --json experiments/lpips_toy_run/results/lpips_toy_run.json
"""

import argparse
import json
from pathlib import Path

import torch

from diffusers_dito.benchmarking import run_script, write_json
from diffusers_dito.metrics.perceptual import LPIPS_BACKBONE_FILES, _lpips_backbone

TRAINING_SCRIPTS = Path(__file__).resolve().parents[2] / "training"  # run as a user runs them

DEMO_MAX_TRAIN_STEPS = 1000  # training/demo.py's default

METRICS = ("psnr", "ssim", "swd", "hf_energy_ratio")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="lpips-toy")
    parser.add_argument("--lpips_weight", type=float, default=0.5, help="Paper: 0.5.")
    parser.add_argument("--lpips_net", default="alex", choices=sorted(LPIPS_BACKBONE_FILES))
    parser.add_argument("--lpips_backbone", default=None, help="A real torchvision checkpoint (default: random).")
    parser.add_argument("--max_train_steps", type=int, default=DEMO_MAX_TRAIN_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def random_backbone(folder: Path, net_type: str, seed: int) -> Path:
    """torchvision's layout with seeded random weights, under torchvision's file name."""
    torch.manual_seed(seed)
    path = folder / LPIPS_BACKBONE_FILES[net_type]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(_lpips_backbone(net_type).state_dict(), path)
    return path


def run_demo(output_dir: Path, args, lpips: list[str]) -> dict:
    argv = ["--output_dir", str(output_dir), "--max_train_steps", str(args.max_train_steps), "--seed", str(args.seed)]
    run_script(TRAINING_SCRIPTS / "demo.py", argv + lpips)
    metrics = json.loads((output_dir / "evaluation" / "metrics.json").read_text())
    timing = json.loads((output_dir / "evaluation" / "timing.json").read_text())
    return {**{k: metrics[k] for k in METRICS}, "steps": metrics["steps"], **timing}


def main(args) -> dict:
    out = Path(args.output_dir)
    backbone = args.lpips_backbone or str(random_backbone(out / "backbone", args.lpips_net, args.seed))
    lpips = ["--lpips_weight", str(args.lpips_weight), "--lpips_net", args.lpips_net, "--lpips_backbone", backbone]
    rows = {
        "DiTo": run_demo(out / "plain", args, []),
        f"DiTo+LPIPS ({args.lpips_weight})": run_demo(out / "lpips", args, lpips),
    }
    print("\n| run | steps | PSNR | SSIM | SWD | HF ratio | s/step |\n|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['steps']} | {row['psnr']:.2f} | {row['ssim']:.3f} | {row['swd']:.4f} | "
            f"{row['hf_energy_ratio']:.2f} | {row['seconds_per_step']:.3f} |"
        )
    result = {
        "args": vars(args),
        "backbone": "random (seeded)" if args.lpips_backbone is None else backbone,
        "rows": rows,
    }
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
