r"""A DiTo teacher and its distilled student(s) on held-out images: the table, figures and checks of distillation.md.

Rows: the teacher at 50 steps, at its default and at 1 step, and each student at its own default, each with its
decoder's shape (`decoder`: decoder_block_out_channels x decoder_layers_per_block, e.g. `(16,32,64)x1`) and size
(`decoder_params_m`). Columns: PSNR, SSIM, SWD and high-frequency ratio (`training/evaluate_dito.py`, image i decoded
from the noise of seed + i, so every row sees the same noise), and the decode time per image with its ratio to an
AutoencoderKL decode of the teacher's decoder size class, timed interleaved in the same run (`bench_decode.py`'s
`--student` comparison) at the held-out images' resolution. The figure decodes.png shows original | teacher
(default) | teacher (1 step) | student(s) (1 step) for the first images; frontier.png plots each student's and the
teacher's PSNR against its decode time over the AutoencoderKL's. The distillation targets (docs/benchmarks.md,
"Distilled students") are printed with their verdicts.

    python training/demo.py --distill --output_dir dito-demo
    python benchmarks/distillation_report.py --teacher dito-demo/pipeline --student dito-demo/student \
        --data_dir dito-demo/data/held_out --output_dir dito-demo/distillation

`--decode_speed_options eager channels_last compile` adds the decode check with both sides in NHWC, and compiled
(`bench_decode.py --student_speed_options`). `--timing_resolutions 128` also times each student's decode against the
same AutoencoderKL at 128² (`time_over_kl_128`, and `time_over_kl_128_<option>` for each speed option), interleaved in
one run per student; the teacher is not timed there. The decode checks on the best student (the fastest whose PSNR
is within 0.5 dB of the teacher's default and whose high-frequency ratio is in [0.7, 1.4]) are made at every timed
resolution. `--figure_only` draws decodes.png again (seconds: 8 images) without scoring or timing anything, e.g.
after a change to how it is labelled; the decodes are the same, image i from the noise of seed + i.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

import bench_decode
from diffusers_dito.benchmarking import machine_info, markdown_table, run_script, write_json
from diffusers_dito.metrics import psnr
from diffusers_dito.metrics.swd import laplacian_pyramid
from diffusers_dito.pipelines.loading import load_reconstruction_pipeline
from diffusers_dito.training.evaluation import labelled_grid, list_image_files, load_image, load_images

TRAINING_SCRIPTS = Path(__file__).resolve().parents[1] / "training"  # run as a user runs them

TEACHER_MANY_STEPS = 50  # the paper's decoding steps
FIGURE_CELL = 96  # px: smaller images are enlarged to at least this in the figure
PSNR_FLOOR_DB = 0.5  # a student worth choosing loses at most this much PSNR to the teacher's default decode
HF_RATIO_RANGE = (0.7, 1.4)  # high-frequency energy over the originals': neither blurred nor over-sharpened


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The teacher's DiToPipeline (or AutoencoderDiTo) folder.")
    parser.add_argument("--student", required=True, nargs="+", help="Distilled student folder(s).")
    parser.add_argument("--data_dir", required=True, help="Held-out images.")
    parser.add_argument("--output_dir", default="distillation-report")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure_images", type=int, default=8)
    parser.add_argument("--timing_batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--spread_seeds",
        type=int,
        nargs="*",
        default=[],
        help="More noise seeds: the teacher at its default and each student are scored again from each, and the "
        "spread over all seeds is reported (the checks stay on --seed).",
    )
    parser.add_argument("--json", default=None, help="Also write the result here (default: output_dir/report.json).")
    parser.add_argument(
        "--decode_speed_options",
        nargs="+",
        choices=bench_decode.STUDENT_SPEED_OPTIONS,
        default=["eager"],
        help="Also time each student against the AutoencoderKL with these options applied to both sides alike "
        "(bench_decode.py's --student_speed_options), adding a decode check per option other than eager.",
    )
    parser.add_argument("--compile_backend", default="inductor", help="torch.compile's backend for `compile`.")
    parser.add_argument(
        "--timing_resolutions",
        type=int,
        nargs="*",
        default=[],
        help="More square resolutions (multiples of the teacher's down-sampling factor) at which each student's "
        "decode is timed against the AutoencoderKL, eager and under each --decode_speed_options entry "
        "(time_over_kl_<res>[_<option>]); the held-out images' resolution is always timed.",
    )
    parser.add_argument(
        "--figure_only",
        action="store_true",
        help="Only draw output_dir/decodes.png (no metrics, no timing, no JSON).",
    )
    return parser.parse_args(argv)


def evaluate(model: str, steps: int, args, name: str) -> dict:
    """evaluate_dito.py's metrics of `model` decoded with `steps` Euler steps (no sweep), run as a user runs it."""
    output_dir = Path(args.output_dir) / name
    argv = ["--model", str(model), "--data_dir", str(args.data_dir), "--steps", str(steps), "--skip_sweep"]
    argv += ["--seed", str(args.seed), "--output_dir", str(output_dir)]
    run_script(TRAINING_SCRIPTS / "evaluate_dito.py", argv)
    result = json.loads((output_dir / "metrics.json").read_text())
    levels = sorted((k for k in result if k.startswith("swd_")), key=lambda k: -int(k.split("_")[1]))  # finest first
    return {key: result.get(key) for key in ("psnr", "ssim", "swd", *levels, "hf_energy_ratio")}


def decode_times(args, teacher_default: int, resolution: int) -> dict:
    """Seconds per image, one `bench_decode.py` run per student: {student: {"student", "kl", "teacher": {steps: s}}}.
    Each student's ratios must come from its own run, where it was timed interleaved with the KL and teacher decodes;
    the teacher's rows use the first run."""
    times = {}
    for student in args.student:
        steps = sorted({1, teacher_default, TEACHER_MANY_STEPS})
        result = bench_decode.main(
            bench_decode.parse_args(
                [
                    "--model",
                    args.teacher,
                    "--student",
                    student,
                    "--resolution",
                    str(resolution),
                    "--batch_size",
                    str(args.timing_batch_size),
                    "--steps",
                    *map(str, steps),
                    "--repeats",
                    str(args.repeats),
                    "--compare_steps",
                    str(teacher_default),
                    "--no-speed_flags",  # the report needs the fp32 times only
                    "--student_speed_options",
                    *args.decode_speed_options,
                    "--compile_backend",
                    args.compile_backend,
                ]
            )  # fmt: skip
        )
        rows = [r for r in result["comparisons"] if r["comparison"].startswith("student")]
        times[student] = {
            "student": rows[0]["student_s_per_image"],
            "kl": rows[0]["kl_s_per_image"],
            "teacher": {n: r["teacher_s_per_image"] for n, r in zip(steps, rows[1:])},
            # student / KL with both sides alike under each option but eager, timed in one more interleaved call
            "over_kl": {r["speed_option"]: r["ratio"] for r in rows if r.get("speed_option", "eager") != "eager"},
        }
    return times


def decoder_shape(vae) -> str:
    """The decoder UNet's widths and ResNets per level, e.g. `(16,32,64)x1`: what tells the students apart."""
    widths = ",".join(str(width) for width in vae.config.decoder_block_out_channels)
    return f"({widths})x{vae.config.decoder_layers_per_block}"


def decoder_columns(vae) -> dict:
    """A row's decoder: its shape and its parameter count in millions (what the AutoencoderKL is sized against)."""
    return {"decoder": decoder_shape(vae), "decoder_params_m": bench_decode.count(vae.decoder_unet) / 1e6}


def decode_times_at(args, teacher, resolutions: list[int]) -> dict:
    """Each student's decode over the AutoencoderKL decode at each of `resolutions`, eager and under each
    --decode_speed_options entry, both sides alike: {student: {"time_over_kl_<res>[_<option>]": ratio}}.

    The KL is the one of `decode_times` (the teacher's decoder size class), so the ratios read alike at every
    resolution. Only the pairs the ratios need are timed, all options of one student interleaved in one call
    (`bench_decode.speed_option_comparisons`); not the teacher's many-step decodes, which cost most at large sizes.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as bench_decode.py times the rest
    options = ["eager", *(option for option in args.decode_speed_options if option != "eager")]
    timing = argparse.Namespace(
        student_speed_options=options,
        repeats=args.repeats,
        batch_size=args.timing_batch_size,
        compile_backend=args.compile_backend,
    )
    f, c = teacher.downsample_factor, teacher.config.latent_channels
    decoder_params = bench_decode.count(teacher.decoder_unet)
    kls, latents = {}, {}
    for resolution in resolutions:
        torch.manual_seed(0)  # the KL's random weights and z: the same for every student
        kls[resolution] = bench_decode.comparable_kl(decoder_params, c, len(teacher.config.block_out_channels))
        kls[resolution].to(device).eval()
        latents[resolution] = torch.randn(args.timing_batch_size, c, resolution // f, resolution // f, device=device)
    ratios = {}
    for folder in args.student:
        student = load_reconstruction_pipeline(folder).vae.to(device).eval()  # a copy: the report's stays on the CPU
        ratios[folder] = {}
        for resolution in resolutions:
            rows = bench_decode.speed_option_comparisons(timing, student, kls[resolution], latents[resolution], device)
            for row in rows:
                suffix = "" if row["speed_option"] == "eager" else f"_{row['speed_option']}"
                ratios[folder][f"time_over_kl_{resolution}{suffix}"] = row["ratio"]
    return ratios


@torch.no_grad()
def figure(args, teacher, students: list, teacher_default: int, path: Path) -> None:
    """original | teacher (default) | teacher (1 step) | student(s) for the first images, same noise per image."""
    images = load_images(list_image_files(args.data_dir, args.figure_images))
    z = teacher.encode(images).latents  # images in [-1, 1]

    def decode(vae, steps):
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(images))]
        return ((vae.decode(z, generator=generators, num_inference_steps=steps).sample + 1) / 2).clamp(0, 1)

    columns = [(images + 1) / 2, decode(teacher, teacher_default), decode(teacher, 1)]
    columns += [decode(student, student.config.num_inference_steps) for student in students]
    scale = max(1, FIGURE_CELL // images.shape[-1])  # small crops enlarged, nearest neighbour, by a whole factor

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        pixels = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
        return pixels.repeat(scale, axis=0).repeat(scale, axis=1)

    rows = [[to_uint8(column[i]) for column in columns] for i in range(len(images))]
    labels = ["original", f"teacher ({teacher_default} steps)", "teacher (1 step)"]
    names = [Path(folder).name for folder in args.student]  # the folders tell two students apart
    # the decoder's shape on a line of its own: a 96 px column holds about 15 characters
    labels += [f"{name}\n{decoder_shape(s)}\n{s.config.num_inference_steps} step" for name, s in zip(names, students)]
    labelled_grid(rows, labels).save(path)
    print(f"wrote {path}")


@torch.no_grad()
def error_bands(args, teacher, students: list, teacher_default: int) -> dict:
    """Where a 1-step decode differs from the teacher's default decode of the same noise: its PSNR to that decode and
    the share of the squared difference in each Laplacian band (finest first), over all held-out images; and the
    share of the originals' energy in each band."""
    images = load_images(list_image_files(args.data_dir))
    if min(images.shape[-2:]) < 12:
        return {}
    z = teacher.encode(images).latents

    def decode(vae, steps):
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(images))]
        return vae.decode(z, generator=generators, num_inference_steps=steps).sample

    def shares(x: torch.Tensor) -> list[float]:
        energies = [band.pow(2).mean().item() for band in laplacian_pyramid(x, 3)]
        return [e / sum(energies) for e in energies]

    reference = decode(teacher, teacher_default)
    result = {"original_energy_share": shares(images)}
    for name, vae in [("teacher 1 step", teacher)] + [(f"student {k}", s) for k, s in enumerate(students)]:
        decoded = decode(vae, 1 if vae is teacher else vae.config.num_inference_steps)
        result[name] = {"psnr_to_teacher": psnr(decoded, reference), "error_share": shares(decoded - reference)}
    return result


def teacher_row(rows: list[dict], steps: int) -> dict:
    """The teacher's row at `steps` decoding steps."""
    return next(r for r in rows if r["model"] == "teacher" and r["steps"] == steps)


def row_label(row: dict) -> str:
    """A row's name in the figures: `student 1 (16,32,64)x1`, or the teacher's decoder and steps."""
    if row["model"] == "teacher":
        return f"teacher {row['decoder']}, {row['steps']} step{'s' if row['steps'] > 1 else ''}"
    return f"{row['model']} {row['decoder']}"


def plot_frontier(rows: list[dict], teacher_default: int, timed: dict[int, str], machine: dict, path: Path) -> None:
    """Held-out PSNR against eager decode time over the AutoencoderKL's: the teacher at 1 step and at its default and
    each student at the held-out images' resolution (the first of `timed`, {resolution: its time_over_kl column};
    filled), and the students again at each further timed resolution (same PSNR, hollow, another marker). Dashed: the
    KL's time (x = 1) and the quality floor (the teacher's default PSNR - PSNR_FLOOR_DB). Each point has a short
    tag; the legend spells out the decoders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5), constrained_layout=True)
    for steps, colour in ((teacher_default, "black"), (1, "grey")):
        row = teacher_row(rows, steps)
        ax.scatter(row["time_over_kl"], row["psnr"], marker="s", color=colour, label=frontier_legend(row))
        tag = f"teacher, {steps} step{'s' if steps > 1 else ''}"  # left of the point: the default is rightmost
        ax.annotate(tag, (row["time_over_kl"], row["psnr"]), xytext=(-6, -4), textcoords="offset points", ha="right")
    markers = ["o", "^", "v", "P", "X", "*"]
    students = [r for r in rows if r["model"] != "teacher"]
    for k, row in enumerate(students):
        colour, xs = f"C{k % 10}", [row.get(column) for column in timed.values()]
        points = [(j, x) for j, x in enumerate(xs) if x is not None]
        ax.plot([x for _, x in points], [row["psnr"]] * len(points), color=colour, alpha=0.3, linewidth=1)  # pairs
        for j, x in points:
            style = {"color": colour} if j == 0 else {"facecolors": "none", "edgecolors": colour}
            label = frontier_legend(row) if j == 0 else None
            ax.scatter(x, row["psnr"], marker=markers[j % len(markers)], label=label, **style)
        # one tag per student, at the data's resolution; its other points share its colour and PSNR
        ax.annotate(row["model"], (xs[0], row["psnr"]), xytext=(5, 5), textcoords="offset points", color=colour)
    for j, resolution in enumerate(timed):  # what each marker means, in the legend
        style = {"color": "black"} if j == 0 else {"facecolors": "none", "edgecolors": "black"}
        ax.scatter([], [], marker=markers[j % len(markers)], label=f"students at {resolution}²", **style)
    teacher = teacher_row(rows, teacher_default)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="AutoencoderKL decode (x = 1)")
    floor = f"teacher default - {PSNR_FLOOR_DB} dB (quality floor)"
    ax.axhline(teacher["psnr"] - PSNR_FLOOR_DB, color="red", linestyle="--", linewidth=1, label=floor)
    ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the tags of the outermost points
    ax.set_xlabel("decode time / AutoencoderKL decode (eager, same resolution; log scale)")
    ax.set_ylabel("held-out PSNR (dB), higher is better")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    processor = f"{machine['processor']} ({machine['device']}, {machine['threads']} threads)"
    ax.set_title(f"Distilled students: quality against decode time\n{processor}")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def frontier_legend(row: dict) -> str:
    """A point's legend entry: its label and its decoder's size."""
    return f"{row_label(row)}, {row['decoder_params_m']:.2f}M decoder params"


def spread(args, rows: list[dict], teacher_default: int) -> list[dict]:
    """PSNR and SWD of the teacher at its default and of each student from --seed and every --spread_seeds: each
    seed's values, their mean and standard deviation, and the student's SWD over the teacher's from the same seed."""
    scored = [r for r in rows if r["model"] != "teacher" or r["steps"] == teacher_default]
    per_seed = {(r["model"], args.seed): r for r in scored}
    for seed in args.spread_seeds:
        seeded = argparse.Namespace(**{**vars(args), "seed": seed})
        for row in scored:
            name = f"spread-{row['model'].replace(' ', '')}-seed{seed}"
            per_seed[(row["model"], seed)] = evaluate(row["folder"], row["steps"], seeded, name)
    seeds = [args.seed, *args.spread_seeds]
    summary = []
    for row in scored:
        entry = {"model": row["model"], "steps": row["steps"], "seeds": seeds}
        for metric in ("psnr", "swd"):
            entry[metric] = [per_seed[(row["model"], seed)][metric] for seed in seeds]
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_and_std(entry[metric])
        if row["model"] != "teacher" and None not in entry["swd"] + [per_seed[("teacher", s)]["swd"] for s in seeds]:
            entry["swd_over_teacher"] = [
                per_seed[(row["model"], s)]["swd"] / per_seed[("teacher", s)]["swd"] for s in seeds
            ]
            entry["swd_over_teacher_mean"] = float(np.mean(entry["swd_over_teacher"]))
        summary.append(entry)
    return summary


def mean_and_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; None where a value is missing (too few images for the metric)."""
    if None in values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def verdicts(
    rows: list[dict], teacher_default: int, speed_options: list[str] = ("eager",), timed: dict[int, str] | None = None
) -> list[dict]:
    """The distillation targets, checked on the first student; `holds` is None where a metric could not
    be computed (SWD and the high-frequency ratio need enough images of one size). The decode check is made in
    eager mode, and again for each other `speed_options` entry, both sides treated alike. Then, on the best student
    (`best_student`; None if no student qualifies), the eager decode against the AutoencoderKL's at each resolution
    of `timed` ({resolution: its time_over_kl column})."""
    teacher, teacher_one = teacher_row(rows, teacher_default), teacher_row(rows, 1)
    student = next(r for r in rows if r["model"].startswith("student"))
    low, high = HF_RATIO_RANGE
    checks = [
        ("PSNR >= teacher default - 0.3 dB", lambda: student["psnr"] >= teacher["psnr"] - 0.3),
        ("PSNR >= teacher 1 step + 1 dB", lambda: student["psnr"] >= teacher_one["psnr"] + 1.0),
        ("SWD <= 1.05 x teacher default", lambda: student["swd"] <= 1.05 * teacher["swd"]),
        (f"HF ratio in {list(HF_RATIO_RANGE)}", lambda: low <= student["hf_energy_ratio"] <= high),
        ("decode <= 1.3 x AutoencoderKL", lambda: student["time_over_kl"] <= 1.3),
        *[
            (f"decode <= 1.3 x AutoencoderKL, both {option}", lambda o=option: student[f"time_over_kl_{o}"] <= 1.3)
            for option in speed_options
            if option != "eager"
        ],
        (f"decode = 1/{teacher_default} of the teacher's ±10%", lambda: abs(student["time_vs_1_over_n"] - 1) <= 0.1),
    ]
    results = []
    for name, check in checks:
        try:
            holds = bool(check())
        except TypeError:  # a metric is None
            holds = None
        results.append({"check": name, "student": student["model"], "holds": holds})
    best = best_student(rows, teacher_default)
    for resolution, column in (timed or {}).items():
        ratio = None if best is None else best.get(column)
        results.append(
            {
                "check": f"decode <= 1.0 x AutoencoderKL at {resolution}², best student",
                "student": None if best is None else best["model"],
                "holds": None if ratio is None else bool(ratio <= 1.0),
            }
        )
    return results


def best_student(rows: list[dict], teacher_default: int) -> dict | None:
    """The student row with the fastest eager decode (over the AutoencoderKL's, at the held-out images' resolution)
    among those within PSNR_FLOOR_DB of the teacher's default PSNR and with a high-frequency ratio in HF_RATIO_RANGE;
    None if no student is, or a metric is missing."""
    teacher = teacher_row(rows, teacher_default)
    if teacher["psnr"] is None:
        return None
    low, high = HF_RATIO_RANGE
    qualified = [
        r
        for r in rows
        if r["model"].startswith("student")
        and r["psnr"] is not None
        and r["psnr"] >= teacher["psnr"] - PSNR_FLOOR_DB
        and r["hf_energy_ratio"] is not None
        and low <= r["hf_energy_ratio"] <= high
    ]
    return min(qualified, key=lambda r: r["time_over_kl"], default=None)


def main(args) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_reconstruction_pipeline(args.teacher).vae.eval()
    students = [load_reconstruction_pipeline(s).vae.eval() for s in args.student]
    teacher_default = int(teacher.config.num_inference_steps)
    if args.figure_only:
        figure(args, teacher, students, teacher_default, output_dir / "decodes.png")
        return {"figure": str(output_dir / "decodes.png")}
    resolution = load_image(list_image_files(args.data_dir, 1)[0]).size[0]
    extra_resolutions = [r for r in dict.fromkeys(args.timing_resolutions) if r != resolution]  # the data's: timed
    f = teacher.downsample_factor
    if any(r <= 0 or r % f for r in extra_resolutions):  # before minutes of scoring, not after
        raise ValueError(f"--timing_resolutions {extra_resolutions} must be positive multiples of {f}.")

    rows = []
    for steps in sorted({TEACHER_MANY_STEPS, teacher_default, 1}, reverse=True):
        metrics = evaluate(args.teacher, steps, args, f"teacher-{steps}")
        rows.append(
            {"model": "teacher", **decoder_columns(teacher), "folder": args.teacher, "steps": steps, **metrics}
        )
    for k, (folder, student) in enumerate(zip(args.student, students)):
        steps = int(student.config.num_inference_steps)
        metrics = evaluate(folder, steps, args, f"student{k}-{steps}")
        rows.append({"model": f"student {k}", **decoder_columns(student), "folder": folder, "steps": steps, **metrics})

    times = decode_times(args, teacher_default, resolution)
    for row in rows:  # every ratio within one timing run; the teacher's rows from the first
        run = times[args.student[0] if row["model"] == "teacher" else row["folder"]]
        row["s_per_image"] = run["teacher"][row["steps"]] if row["model"] == "teacher" else run["student"]
        row["time_over_kl"] = row["s_per_image"] / run["kl"]
        if row["model"] != "teacher":
            row.update({f"time_over_kl_{option}": ratio for option, ratio in run["over_kl"].items()})
        # over 1/N of the teacher's N-step decode (N: the teacher's default), timed in the same run
        row["time_vs_1_over_n"] = row["s_per_image"] / (
            run["teacher"][teacher_default] * row["steps"] / teacher_default
        )
    if extra_resolutions:
        ratios = decode_times_at(args, teacher, extra_resolutions)
        for row in rows:
            if row["model"] != "teacher":
                row.update(ratios[row["folder"]])

    figure(args, teacher, students, teacher_default, output_dir / "decodes.png")
    timed = {resolution: "time_over_kl", **{r: f"time_over_kl_{r}" for r in extra_resolutions}}
    checks = verdicts(rows, teacher_default, args.decode_speed_options, timed)
    best = best_student(rows, teacher_default)
    spreads = spread(args, rows, teacher_default) if args.spread_seeds else []
    bands = error_bands(args, teacher, students, teacher_default)
    machine = machine_info(torch.device("cpu"))
    plot_frontier(rows, teacher_default, timed, machine, output_dir / "frontier.png")
    print(f"\n## distillation: teacher {args.teacher} (default {teacher_default} steps), {machine}\n")
    print(markdown_table([{k: v for k, v in row.items() if k != "folder"} for row in rows]))
    print()
    print(markdown_table(checks))
    print(
        f"\nbest student: {'none qualifies' if best is None else row_label(best)} (the fastest within "
        f"{PSNR_FLOOR_DB} dB of the teacher's default PSNR, HF ratio in {list(HF_RATIO_RANGE)})"
    )
    if bands:
        print(f"\n### against the teacher's {teacher_default}-step decode, per Laplacian band (finest first)\n")
        table = [
            {"decode": "originals (energy share)", "psnr_to_teacher": None, "share": bands["original_energy_share"]}
        ]
        table += [
            {"decode": name, "psnr_to_teacher": v["psnr_to_teacher"], "share": v["error_share"]}
            for name, v in bands.items()
            if name != "original_energy_share"
        ]
        for row in table:
            row["share"] = " / ".join(f"{100 * x:.1f} %" for x in row["share"])
        print(markdown_table(table))
    if spreads:
        print(f"\n### spread over noise seeds {spreads[0]['seeds']}\n")
        columns = ("model", "steps", "psnr_mean", "psnr_std", "swd_mean", "swd_std", "swd_over_teacher_mean")
        print(markdown_table([{key: entry.get(key) for key in columns} for entry in spreads]))
    result = {
        "args": vars(args),
        "machine": machine,
        "kl_s_per_image": {student: run["kl"] for student, run in times.items()},
        "rows": rows,
        "best_student": None if best is None else best["model"],
        "checks": checks,
        "spread": spreads,
        "error_bands": bands,
    }
    write_json(args.json or str(output_dir / "report.json"), result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(parse_args())
