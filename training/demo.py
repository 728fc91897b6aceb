"""The main job: train a CPU-sized DiTo on real photographs, then reconstruct held-out crops and report metrics.

With no arguments it needs no network and no data. It cuts crops of every colour photograph bundled with
scikit-image, scikit-learn and matplotlib into image folders, on the two sides of a sound split
(`diffusers_dito.sample_data`: each photo holds out fixed cells that no training crop touches, so both sides come from
the same photos but share no pixel), trains with `training/train_dito.py`, and evaluates with
`training/evaluate_dito.py` at the model's own default number of decoding steps. Point it at your own folders with
`--train_data_dir` and `--eval_data_dir`.

    python training/demo.py --output_dir dito-demo
    python training/demo.py --train_data_dir my_photos/ --eval_data_dir my_held_out/ --output_dir my-run
    python training/demo.py --distill --output_dir dito-demo   # then distil it into a 1-step decoder

With `--distill` the trained model is then distilled into a 1-step student (`training/distill_dito.py`, recipe
below, docs/distillation.md) and the student is evaluated on the same held-out crops, from the same noise.

The default recipe (preset, crop size, learning rate and schedule, batch, steps) was chosen by measurement to finish
within 10 minutes on an idle 2-core CPU; experiments/demo_recipe/README.md has the runs.

Outputs under `--output_dir`: `pipeline/` (the trained DiToPipeline, loadable with `DiToPipeline.from_pretrained`),
`evaluation/metrics.json`, `evaluation/reconstructions.png` (original | reconstruction | error, enlarged to ≥ 96 px),
`evaluation/sweep.png` (PSNR and SWD against decoding steps), and `data/` when the bundled photos are used; with
`--distill` also `student/` (the 1-step DiToPipeline) and `evaluation-student/`.
"""

import argparse
import importlib.util
import json
import time
from pathlib import Path

from diffusers_dito import DITO_PRESETS, STUDENT_DECODER_PRESETS
from diffusers_dito.cli import OneLineArgumentParser  # one-line usage errors, exit code 2
from diffusers_dito.metrics.perceptual import LPIPS_BACKBONE_FILES
from diffusers_dito.sample_data import write_split_crops
from diffusers_dito.training.objectives import LOSS_TYPES, SWD_NOISES


def _sibling_script(name: str):
    """The training script `name`.py beside this file, imported as a module (the scripts are files, not a package)
    so that the demo runs its stages in this process, without paying the start-up of three more interpreters."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_dito, distill_dito, evaluate_dito = (_sibling_script(n) for n in ("train_dito", "distill_dito", "evaluate_dito"))

# The recipe, in one place (chosen by the runs in experiments/demo_recipe/README.md).
PRESET = "dito-cpu-f4c4"  # f4c4: an 8×8×4 latent for a 32² crop
RESOLUTION = 32
NUM_TRAIN_CROPS = 4096
NUM_EVAL_CROPS = 32
MAX_TRAIN_STEPS = 1000
BATCH_SIZE = 16
LEARNING_RATE = 2e-3  # 20× the paper's 1e-4: a 3M-parameter model and 1000 steps (experiments/demo_recipe/README.md)
LR_WARMUP_STEPS = 50
LR_SCHEDULER = "cosine"
SWEEP_STEPS = [1, 2, 4, 8, 16, 32]
# The distillation recipe (`--distill`; docs/distillation.md, "How the recipe was chosen").
DISTILL_PAIRS = 1024  # training crops whose (z, ε) -> teacher decode pairs are cached and reused
DISTILL_STEPS = 3000
DISTILL_BATCH_SIZE = 16
DISTILL_LEARNING_RATE = 1e-3
DISTILL_LOSS_TYPE = "laplacian"  # the finest band weighted up: the student learns the teacher's grain sooner
DISTILL_FINE_WEIGHT = 4.0
DISTILL_DATA_LOSS_WEIGHT = 0.0  # 0.1 raised PSNR but blurred the student below the 0.7 high-frequency floor
# The patch SWD term to the teacher's decodes (`--swd_loss_weight`): off by default. With the data term, 20 on fresh
# noise for 5000 steps brings the SWD within 1.05x the teacher's at 5-6x this distillation's time; on paired noise,
# 5000 steps miss it (experiments/distill_recipes/README.md).
DISTILL_SWD_LOSS_WEIGHT = 0.0
DISTILL_SWD_NOISE = "fresh"
# The student's decoder (`--student_config`): the teacher's shape. `lite` decodes in 0.52x an AutoencoderKL's time
# (the teacher-shaped student: 1.8x) at 0.4 dB less, but its high-frequency ratio lies on the 0.7 floor (0.69-0.71
# over two runs), so it is not the default (docs/distillation.md, "Four student sizes").
DISTILL_STUDENT_CONFIG = "teacher"


def parse_args(argv=None):
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="dito-demo")
    parser.add_argument("--train_data_dir", default=None, help="Your image folder (default: bundled photo crops).")
    parser.add_argument("--eval_data_dir", default=None, help="Held-out images (default: bundled photo crops).")
    parser.add_argument("--model_preset", default=PRESET, choices=sorted(DITO_PRESETS))
    parser.add_argument(
        "--model_config", default=None, help="Train this AutoencoderDiTo config.json (file or folder) instead."
    )
    parser.add_argument("--resolution", type=int, default=RESOLUTION)
    parser.add_argument("--num_train_crops", type=int, default=NUM_TRAIN_CROPS)
    parser.add_argument("--num_eval_crops", type=int, default=NUM_EVAL_CROPS)
    parser.add_argument("--max_train_steps", type=int, default=MAX_TRAIN_STEPS)
    parser.add_argument("--train_batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--learning_rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--lr_warmup_steps", type=int, default=LR_WARMUP_STEPS)
    parser.add_argument("--lr_scheduler", default=LR_SCHEDULER, choices=["constant", "cosine"])
    parser.add_argument("--noise_sync_prob", type=float, default=0.1)
    parser.add_argument("--eval_steps", type=int, default=None, help="Euler steps (default: the model's own).")
    parser.add_argument("--sweep_steps", type=int, nargs="+", default=SWEEP_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    perceptual = parser.add_argument_group("DiTo+LPIPS (train_dito.py's flags, passed on)")
    perceptual.add_argument("--lpips_weight", type=float, default=0.0, help="Paper: 0.5. Default 0: plain DiTo.")
    perceptual.add_argument("--lpips_backbone", default=None, help="torchvision's vgg16/alexnet checkpoint file.")
    perceptual.add_argument("--lpips_net", default="vgg", choices=sorted(LPIPS_BACKBONE_FILES))
    distill = parser.add_argument_group("distillation (--distill)")
    distill.add_argument("--distill", action="store_true", help="Then distil the model into a 1-step decoder.")
    distill.add_argument("--distill_pairs", type=int, default=DISTILL_PAIRS)
    distill.add_argument("--distill_steps", type=int, default=DISTILL_STEPS)
    distill.add_argument("--distill_batch_size", type=int, default=DISTILL_BATCH_SIZE)
    distill.add_argument("--distill_learning_rate", type=float, default=DISTILL_LEARNING_RATE)
    distill.add_argument("--distill_loss_type", default=DISTILL_LOSS_TYPE, choices=LOSS_TYPES)
    distill.add_argument(
        "--distill_fine_weight", type=float, default=DISTILL_FINE_WEIGHT, help="--loss_type laplacian."
    )
    distill.add_argument("--distill_data_loss_weight", type=float, default=DISTILL_DATA_LOSS_WEIGHT)
    distill.add_argument("--distill_swd_loss_weight", type=float, default=DISTILL_SWD_LOSS_WEIGHT)
    distill.add_argument("--distill_swd_noise", default=DISTILL_SWD_NOISE, choices=SWD_NOISES)
    distill.add_argument(
        "--distill_student_config",
        default=DISTILL_STUDENT_CONFIG,
        help=f"distill_dito.py's --student_config: a preset ({', '.join(STUDENT_DECODER_PRESETS)}), a JSON file or a "
        "JSON object of decoder settings.",
    )
    distill.add_argument("--teacher_steps", type=int, default=None, help="Default: the model's own steps.")
    return parser.parse_args(argv)


def model_source_arguments(args) -> list[str]:
    """train_dito.py's model flag: `--model_config` where one is given, else the preset."""
    if args.model_config is not None:
        return ["--model_config", args.model_config]
    return ["--model_preset", args.model_preset]


def lpips_arguments(args) -> list[str]:
    if args.lpips_weight == 0:
        return []
    backbone = ["--lpips_backbone", args.lpips_backbone] if args.lpips_backbone else []
    return ["--lpips_weight", str(args.lpips_weight), "--lpips_net", args.lpips_net, *backbone]


def main(args) -> Path:
    start = time.time()
    out = Path(args.output_dir)
    train_dir, eval_dir = args.train_data_dir, args.eval_data_dir
    if train_dir is None:
        train_dir = out / "data" / "train"
        write_split_crops(train_dir, "train", args.num_train_crops, args.resolution, seed=args.seed)
        print(f"wrote {args.num_train_crops} training crops (training side of the bundled photos) to {train_dir}")
    if eval_dir is None:
        eval_dir = out / "data" / "held_out"
        write_split_crops(eval_dir, "held_out", args.num_eval_crops, args.resolution, seed=args.seed + 1)
        print(f"wrote {args.num_eval_crops} held-out crops (held-out cells of the same photos) to {eval_dir}")

    pipeline_dir = out / "pipeline"
    train_start = time.time()
    train_dito.main(
        train_dito.parse_args(
            [
                "--train_data_dir", str(train_dir),
                *model_source_arguments(args),
                "--resolution", str(args.resolution),
                "--train_batch_size", str(args.train_batch_size),
                "--max_train_steps", str(args.max_train_steps),
                "--learning_rate", str(args.learning_rate),
                "--lr_warmup_steps", str(args.lr_warmup_steps),
                "--lr_scheduler", args.lr_scheduler,
                "--noise_sync_prob", str(args.noise_sync_prob),
                "--checkpointing_steps", str(max(args.max_train_steps // 2, 1)),
                "--checkpoints_total_limit", "1",
                "--validation_steps", str(args.max_train_steps),
                "--seed", str(args.seed),
                "--output_dir", str(pipeline_dir),
                *lpips_arguments(args),
            ]
        )
    )  # fmt: skip
    train_seconds = time.time() - train_start
    evaluate_args = [
        "--model", str(pipeline_dir),
        "--data_dir", str(eval_dir),
        "--sweep_steps", *map(str, args.sweep_steps),
        "--samplers", "euler",
        "--seed", str(args.seed),
        "--output_dir", str(out / "evaluation"),
    ]  # fmt: skip
    if args.eval_steps is not None:
        evaluate_args += ["--steps", str(args.eval_steps)]
    result = evaluate_dito.main(evaluate_dito.parse_args(evaluate_args))
    elapsed = time.time() - start
    timing = {
        "elapsed_seconds": round(elapsed, 1),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / args.max_train_steps, 3),
    }
    (out / "evaluation" / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(
        f"\nheld-out, {result['steps']} {result['sampler']} steps: PSNR {result['psnr']:.2f} dB, "
        f"SSIM {result['ssim']:.3f}, SWD {result.get('swd', float('nan')):.4f}, "
        f"high-frequency ratio {result.get('hf_energy_ratio', float('nan')):.2f}"
    )
    print(
        f"done in {elapsed:.0f} s ({timing['seconds_per_step']:.2f} s/step over {args.max_train_steps} training "
        f"steps, {train_seconds:.0f} s of training). Outputs in {out}/:"
    )
    print(f"  pipeline/                      trained DiToPipeline (DiToPipeline.from_pretrained('{pipeline_dir}'))")
    print("  evaluation/metrics.json        PSNR, SSIM, SWD, high-frequency ratio, and the steps sweep")
    print("  evaluation/reconstructions.png original | reconstruction | error")
    print("  evaluation/sweep.png           PSNR and SWD against decoding steps")
    if args.distill:
        distill(args, pipeline_dir, train_dir, eval_dir, out)
        print(f"the whole job (training, distillation and both evaluations) took {time.time() - start:.0f} s")
    return out


def distill_arguments(args, pipeline_dir: Path, train_dir, student_dir: Path) -> list[str]:
    """`training/distill_dito.py`'s command line for the demo's recipe (the `--distill_*` flags)."""
    distill_args = [
        "--teacher_model_name_or_path", str(pipeline_dir),
        "--train_data_dir", str(train_dir),
        "--resolution", str(args.resolution),
        "--train_batch_size", str(args.distill_batch_size),
        "--max_train_samples", str(args.distill_pairs),
        "--cache_teacher_targets", "--no-random_flip",
        "--max_train_steps", str(args.distill_steps),
        "--learning_rate", str(args.distill_learning_rate),
        "--lr_warmup_steps", str(min(10, args.distill_steps)),
        "--lr_scheduler", "cosine",
        "--loss_type", args.distill_loss_type, "--laplacian_fine_weight", str(args.distill_fine_weight),
        "--data_loss_weight", str(args.distill_data_loss_weight),
        "--swd_loss_weight", str(args.distill_swd_loss_weight), "--swd_noise", args.distill_swd_noise,
        "--student_config", args.distill_student_config,
        "--checkpointing_steps", str(args.distill_steps),
        "--checkpoints_total_limit", "1",
        "--validation_steps", str(args.distill_steps),
        "--seed", str(args.seed),
        "--output_dir", str(student_dir),
    ]  # fmt: skip
    if args.teacher_steps is not None:
        distill_args += ["--teacher_steps", str(args.teacher_steps)]
    return distill_args


def distill(args, pipeline_dir: Path, train_dir, eval_dir, out: Path) -> dict:
    """Distil the trained model into a 1-step student, then evaluate it on the held-out crops (same noise)."""
    start = time.time()
    student_dir = out / "student"
    distill_dito.main(distill_dito.parse_args(distill_arguments(args, pipeline_dir, train_dir, student_dir)))
    distill_seconds = time.time() - start
    result = evaluate_dito.main(
        evaluate_dito.parse_args(
            [
                "--model",
                str(student_dir),
                "--data_dir",
                str(eval_dir),
                "--sweep_steps",
                "1",
                "2",
                "--samplers",
                "euler",
                "--seed",
                str(args.seed),
                "--output_dir",
                str(out / "evaluation-student"),
            ]
        )  # fmt: skip
    )
    print(
        f"\nstudent, held-out, {result['steps']} step: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.3f}, "
        f"SWD {result.get('swd', float('nan')):.4f}, "
        f"high-frequency ratio {result.get('hf_energy_ratio', float('nan')):.2f}"
    )
    print(f"distilled in {distill_seconds:.0f} s ({args.distill_steps} steps). Outputs in {out}/:")
    print(f"  student/                       the 1-step DiToPipeline (DiToPipeline.from_pretrained('{student_dir}'))")
    print("  evaluation-student/            its metrics.json and reconstructions.png")
    timing = json.loads((out / "evaluation" / "timing.json").read_text())
    timing["distill_seconds"] = round(distill_seconds, 1)
    timing["distill_and_evaluation_seconds"] = round(time.time() - start, 1)
    (out / "evaluation" / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(parse_args())
