"""Small-scale reproduction of DiTo's three claims on a CPU, with several seeds, on the sound photo split.

Claims (paper, Sec. 4), each tested on the held-out cells of the bundled photos (`diffusers_dito.sample_data`):

(a) Sharpness at a fidelity cost: DiTo (flow-matching L2, noise sync p = 0.1) against a deterministic L2 autoencoder
    with the same encoder and decoder networks (the decoder gets only z, its image input is zeros, at σ = 1), same
    data, same optimiser and the same number of steps (the measured training seconds are reported beside them).
(b) Scaling: DiTo with three decoder widths, same steps.
(c) Noise synchronisation: p = 0.1 against p = 0; a tiny class-conditional latent DiT (classes = source photo) is
    trained on each tokenizer's latents and its samples are scored with SWD against the training crops.

Every configuration is trained with each of `--seeds` (init, data order and noise), and every number is reported as
mean ± std over seeds. The optimiser is the paper's AdamW without gradient clipping; its learning rate is chosen on
seed 0 by a sweep (`--sweep_learning_rates`), scored on validation crops (held-out cells, another seed than the test
crops), and the sweep is reported. Jobs run in `--workers` processes of one thread each.

    python experiments/reproduce_small_scale/reproduce_small_scale.py   # writes this study's results/

Outputs: `results.json` (every run and the summaries), `report.md` (tables and verdicts), and one figure per claim.
"""

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from diffusers_dito import (
    DIT_PRESETS,
    DITO_PRESETS,
    AutoencoderDiTo,
    DiToDiTTransformer2DModel,
    dito_flow_matching_loss,
    latent_flow_matching_loss,
)
from diffusers_dito.benchmarking import markdown_table
from diffusers_dito.metrics import (
    compute_generation_metrics,
    high_frequency_energy_ratio,
    psnr,
    sliced_wasserstein_distance,
    ssim,
)
from diffusers_dito.sample_data import PHOTOS, split_crop_boxes, split_crops
from diffusers_dito.scheduling import retrieve_flow_match_timesteps
from diffusers_dito.training.evaluation import labelled_grid

BASE_PRESET = "dito-cpu-f4c4"  # the demo's model
# Decoder widths (c0, c1, c2) for claim (b), multiples of the preset's 16 GroupNorm groups; "base" is the demo's.
WIDTHS = {"small": (16, 32, 48), "base": (32, 64, 96), "large": (48, 96, 144)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num_train_crops", type=int, default=4096)
    parser.add_argument("--num_held_out_crops", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="Optimiser steps of every autoencoder.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=None, help="Skip the sweep and use this rate.")
    parser.add_argument("--sweep_learning_rates", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--decode_steps", type=int, default=None, help="Euler steps (default: the preset's own).")
    parser.add_argument("--dit_steps", type=int, default=1500, help="Optimiser steps of each latent DiT.")
    parser.add_argument("--samples_per_class", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="Parallel jobs, one thread each.")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------- models and training
def make_vae(width: tuple[int, int, int], seed: int) -> AutoencoderDiTo:
    torch.manual_seed(seed)
    return AutoencoderDiTo.from_config({**DITO_PRESETS[BASE_PRESET], "decoder_block_out_channels": width})


def deterministic_decode(vae: AutoencoderDiTo, z: torch.Tensor) -> torch.Tensor:
    """Baseline decoder: the DiTo UNet as a plain decoder, x̂ = D(0, σ = 1, z)."""
    cond = vae.upsample_latents(z)
    zeros = torch.zeros(cond.shape[0], vae.config.out_channels, *cond.shape[-2:])
    return vae.predict_velocity(zeros, torch.tensor(1000.0), cond)


def train_autoencoder(job: dict, train: torch.Tensor) -> tuple[AutoencoderDiTo, float]:
    vae = make_vae(WIDTHS[job["width"]], job["seed"])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=job["lr"], weight_decay=0.0)  # no clipping, as in the paper
    g = torch.Generator().manual_seed(job["seed"])
    start = time.time()
    for _ in range(job["steps"]):
        x = train[torch.randint(0, len(train), (job["batch_size"],), generator=g)]
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)
        if job["kind"] == "ae":
            loss = (deterministic_decode(vae, vae.encode(x).latents) - x).pow(2).mean()
        else:
            loss = dito_flow_matching_loss(vae, x, noise_sync_prob=job["noise_sync_prob"], generator=g).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return vae.eval(), time.time() - start


@torch.no_grad()
def reconstruct(job: dict, vae: AutoencoderDiTo, images: torch.Tensor) -> torch.Tensor:
    z = vae.encode(images).latents
    if job["kind"] == "ae":
        return deterministic_decode(vae, z).clamp(-1, 1)
    g = torch.Generator().manual_seed(job["seed"])
    return vae.decode(z, num_inference_steps=job["decode_steps"], generator=g).sample


def reconstruction_metrics(rec: torch.Tensor, images: torch.Tensor, seed: int) -> dict:
    return {
        "psnr": psnr(rec, images),
        "ssim": ssim(rec, images),
        "swd": sliced_wasserstein_distance(rec, images, seed=seed).mean,
        "hf_energy_ratio": high_frequency_energy_ratio(rec, images),
    }


def train_latent_dit(vae, train, labels, num_classes: int, job: dict):
    with torch.no_grad():
        z = torch.cat([vae.encode(torch.cat([x, x.flip(-1)])).latents for x in train.split(256)])
    y = torch.cat([torch.cat([lab, lab]) for lab in labels.split(256)])
    torch.manual_seed(job["seed"])
    config = dict(DIT_PRESETS["dit-tiny"], sample_size=z.shape[-1], num_embeds_ada_norm=num_classes)
    dit = DiToDiTTransformer2DModel.from_config(config)
    dit.initialize_weights()
    optimizer = torch.optim.AdamW(dit.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(job["seed"])
    for _ in range(job["dit_steps"]):
        idx = torch.randint(0, len(z), (64,), generator=g)
        loss = latent_flow_matching_loss(dit, z[idx], y[idx], num_classes, 0.1, generator=g).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return dit.eval()


@torch.no_grad()
def generate(dit, vae, num_classes: int, job: dict) -> torch.Tensor:
    from diffusers import FlowMatchEulerDiscreteScheduler

    labels = torch.arange(num_classes).repeat_interleave(job["samples_per_class"])
    g = torch.Generator().manual_seed(job["seed"])
    size = dit.config.sample_size
    latents = torch.randn(len(labels), dit.config.in_channels, size, size, generator=g)
    scheduler = FlowMatchEulerDiscreteScheduler()
    retrieve_flow_match_timesteps(scheduler, 50)
    null = torch.full_like(labels, num_classes)
    for t in scheduler.timesteps:
        both = dit(
            torch.cat([latents, latents]), timestep=t.expand(2 * len(labels)), class_labels=torch.cat([labels, null])
        )
        cond, uncond = both.sample.chunk(2)
        latents = scheduler.step(uncond + 2.0 * (cond - uncond), t, latents, return_dict=False)[0]  # CFG 2.0
    return vae.decode(latents, num_inference_steps=job["decode_steps"], generator=g).sample


def run_job(job: dict) -> dict:
    """One configuration and seed, in a worker process: train, score on validation and test crops, maybe generate."""
    torch.set_num_threads(1)
    data = job["data"]
    train, labels = split_crops("train", data["num_train"], data["size"], seed=0), torch.tensor(data["labels"])
    vae, seconds = train_autoencoder(job, train)
    result = {key: value for key, value in job.items() if key != "data"}
    result["train_seconds"] = round(seconds, 1)
    for split_name, seed in (("validation", 2), ("test", 1)):
        images = split_crops("held_out", data["num_held_out"], data["size"], seed=seed)
        rec = reconstruct(job, vae, images)
        result[split_name] = reconstruction_metrics(rec, images, job["seed"])
        if split_name == "test":
            result["examples"] = to_uint8(rec[:8]).tolist()
    if job["generate"]:
        dit = train_latent_dit(vae, train, labels, len(PHOTOS), job)
        samples = generate(dit, vae, len(PHOTOS), job)
        result["generation_swd"] = compute_generation_metrics(samples, train, seed=job["seed"]).values["swd"]
        result["samples"] = to_uint8(samples[:: job["samples_per_class"]]).tolist()  # one per class
    print(f"  done {job['name']} seed {job['seed']} ({seconds:.0f}s): test {result['test']}", flush=True)
    return result


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)


# ------------------------------------------------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def compare(a: list[float], b: list[float], higher_is_better: bool) -> str:
    """'better', 'worse' or 'within spread': a against b, by the difference of means against 2 standard errors."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(sum(mean_std(v)[1] ** 2 / len(v) for v in (a, b)))
    if abs(diff) <= 2 * se:
        return "within spread"
    return "better" if (diff > 0) == higher_is_better else "worse"


def sharpness_error(hf_ratio: float) -> float:
    """Distance of the high-frequency ratio from the originals' (1.0), on a log scale: blur and noise alike."""
    return abs(math.log(hf_ratio))


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


# -------------------------------------------------------------------------------------------------------------- main
def main(args) -> dict:
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    names = [name for name, _ in split_crop_boxes("train", args.num_train_crops, seed=0)]
    data = {
        "num_train": args.num_train_crops,
        "num_held_out": args.num_held_out_crops,
        "size": args.resolution,
        "labels": [PHOTOS.index(n) for n in names],
    }
    decode_steps = args.decode_steps or DITO_PRESETS[BASE_PRESET]["num_inference_steps"]
    common = {"steps": args.steps, "batch_size": args.batch_size, "decode_steps": decode_steps, "data": data}
    common.update(dit_steps=args.dit_steps, samples_per_class=args.samples_per_class)

    def job(name, kind, width, p, seed, lr, generate=False):
        return {"name": name, "kind": kind, "width": width, "noise_sync_prob": p, "seed": seed, "lr": lr,
                "generate": generate, **common}  # fmt: skip

    with ProcessPoolExecutor(args.workers) as pool:
        sweep = []
        if args.learning_rate is None:
            print(f"learning-rate sweep on seed {args.seeds[0]}: {args.sweep_learning_rates}", flush=True)
            jobs = [job("sweep", "dito", "base", 0.1, args.seeds[0], lr) for lr in args.sweep_learning_rates]
            sweep = list(pool.map(run_job, jobs))
            learning_rate = max(sweep, key=lambda r: r["validation"]["psnr"])["lr"]
        else:
            learning_rate = args.learning_rate
        print(f"learning rate {learning_rate:g}", flush=True)
        jobs = []
        for seed in args.seeds:
            jobs += [
                job("dito", "dito", "base", 0.1, seed, learning_rate, generate=True),
                job("ae", "ae", "base", 0.0, seed, learning_rate),
                job("dito_p0", "dito", "base", 0.0, seed, learning_rate, generate=True),
                job("dito_small", "dito", "small", 0.1, seed, learning_rate),
                job("dito_large", "dito", "large", 0.1, seed, learning_rate),
            ]
        runs = list(pool.map(run_job, jobs))

    report = summarise(runs, sweep, learning_rate, args, time.time() - start)
    figures(runs, sweep, out, args)
    slim = [{k: v for k, v in r.items() if k not in ("examples", "samples")} for r in sweep + runs]
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": slim, **report["json"]}, indent=2))
    (out / "report.md").write_text(report["markdown"])
    print("\n" + report["markdown"])
    print(f"wrote {out}/results.json, report.md and the figures in {time.time() - start:.0f}s")
    return report


def by_name(runs: list[dict], name: str) -> list[dict]:
    return sorted((r for r in runs if r["name"] == name), key=lambda r: r["seed"])


def metric(runs: list[dict], name: str, key: str) -> list[float]:
    return [r["test"][key] for r in by_name(runs, name)]


METRIC_LABELS = (
    ("psnr", "PSNR (dB) ↑"),
    ("ssim", "SSIM ↑"),
    ("swd", "SWD ↓"),
    ("hf_energy_ratio", "HF ratio (1 = sharp)"),
)


def metric_cells(runs: list[dict], name: str) -> dict[str, str]:
    """Mean ± std over the seeds of one model's reconstruction metrics, as report table cells."""
    return {key: fmt(metric(runs, name, key), 2 if key == "psnr" else 3) for key, _ in METRIC_LABELS}


def claim_a_section(runs) -> tuple[list[str], str]:
    """(a) sharpness at a fidelity cost: DiTo against the deterministic L2 autoencoder. Report lines and verdict."""
    rows = []
    for name in ("dito", "ae"):
        row = {"model": name, **metric_cells(runs, name)}
        row["train_seconds"] = fmt([r["train_seconds"] for r in by_name(runs, name)], 0)
        rows.append(row)
    sharp = compare(
        [sharpness_error(v) for v in metric(runs, "dito", "hf_energy_ratio")],
        [sharpness_error(v) for v in metric(runs, "ae", "hf_energy_ratio")],
        higher_is_better=False,
    )
    psnr_cost = statistics.fmean(metric(runs, "ae", "psnr")) - statistics.fmean(metric(runs, "dito", "psnr"))
    if sharp == "better" and psnr_cost <= 2.0:
        verdict = "held"
    elif sharp == "worse" or psnr_cost > 2.0:
        verdict = "did not hold"
    else:
        verdict = "inconclusive"
    lines = [
        "### (a) DiTo against a deterministic L2 autoencoder",
        "",
        markdown_table(rows),
        "",
        f"Sharpness (|log high-frequency ratio|, DiTo against AE): {sharp}; PSNR cost of DiTo: "
        f"{psnr_cost:.2f} dB. Rule: held if DiTo is sharper beyond 2 standard errors and costs ≤ 2 dB PSNR.",
        "",
    ]
    return lines, verdict


def claim_b_section(runs) -> tuple[list[str], str, dict]:
    """(b) scaling with the decoder's width. Report lines, verdict and the per-metric comparisons."""
    names = ["dito_small", "dito", "dito_large"]
    params = {"dito_small": WIDTHS["small"], "dito": WIDTHS["base"], "dito_large": WIDTHS["large"]}
    rows = []
    for name in names:
        vae = AutoencoderDiTo.from_config({**DITO_PRESETS[BASE_PRESET], "decoder_block_out_channels": params[name]})
        decoder = f"{params[name]} ({sum(p.numel() for p in vae.decoder_unet.parameters()) / 1e6:.2f}M)"
        rows.append({"decoder": decoder, **metric_cells(runs, name)})
    scaling = {}
    for key, higher in (("psnr", True), ("ssim", True), ("swd", False)):
        means = [statistics.fmean(metric(runs, name, key)) for name in names]
        monotone = all((b > a) == higher for a, b in zip(means, means[1:]))
        largest_vs_smallest = compare(metric(runs, "dito_large", key), metric(runs, "dito_small", key), higher)
        scaling[key] = {"monotone": monotone, "largest_vs_smallest": largest_vs_smallest}
    fidelity = [scaling[k]["largest_vs_smallest"] for k in ("psnr", "ssim")]
    if all(v == "better" for v in fidelity) and all(scaling[k]["monotone"] for k in ("psnr", "ssim")):
        verdict = "held"
    elif any(v == "worse" for v in fidelity):
        verdict = "did not hold"
    else:
        verdict = "inconclusive"
    lines = ["### (b) Decoder width", "", markdown_table(rows), "",
             "Per metric (largest against smallest, and whether the means improve at every step): "
             + "; ".join(f"{k}: {v['largest_vs_smallest']}, monotone {v['monotone']}" for k, v in scaling.items())
             + ". Rule: held if PSNR and SSIM both improve at every width and the largest beats the smallest beyond"
             " 2 standard errors.", ""]  # fmt: skip
    return lines, verdict, scaling


def claim_c_section(runs) -> tuple[list[str], str]:
    """(c) noise synchronisation: the latent DiT's generation SWD with and without it. Report lines and verdict."""
    synced = [r["generation_swd"] for r in by_name(runs, "dito")]
    plain = [r["generation_swd"] for r in by_name(runs, "dito_p0")]
    effect = compare(synced, plain, higher_is_better=False)
    verdict = {"better": "held", "worse": "did not hold"}.get(effect, "inconclusive")
    rows = [
        {"tokenizer": "p = 0.1", "generation_swd": fmt(synced, 4), "recon_psnr": fmt(metric(runs, "dito", "psnr"), 2)},
        {"tokenizer": "p = 0", "generation_swd": fmt(plain, 4), "recon_psnr": fmt(metric(runs, "dito_p0", "psnr"), 2)},
    ]
    lines = [
        "### (c) Noise synchronisation: latent-DiT generation",
        "",
        markdown_table(rows),
        "",
        f"Generation SWD with noise sync against without: {effect} (rule: beyond 2 standard errors).",
        "",
    ]
    return lines, verdict


def summarise(runs, sweep, learning_rate, args, seconds) -> dict:
    n = len(args.seeds)
    lines = [f"Seeds {args.seeds}; {args.steps} steps of batch {args.batch_size} at {args.resolution}²; "
             f"learning rate {learning_rate:g} (AdamW, no clipping); {seconds / 60:.0f} min on {args.workers} "
             f"workers. Mean ± std over the {n} seeds.", ""]  # fmt: skip
    if sweep:
        rows = [{"learning_rate": r["lr"], **{f"val_{k}": v for k, v in r["validation"].items()}} for r in sweep]
        lines += [f"### Learning-rate sweep (seed {args.seeds[0]}, validation crops)", "", markdown_table(rows), ""]
    lines_a, verdict_a = claim_a_section(runs)
    lines_b, verdict_b, scaling = claim_b_section(runs)
    lines_c, verdict_c = claim_c_section(runs)
    verdicts = {"a": verdict_a, "b": verdict_b, "c": verdict_c}
    verdict_lines = ["### Verdicts", "", f"- (a) sharper at a modest PSNR cost: **{verdicts['a']}**",
                     f"- (b) improves with decoder size: **{verdicts['b']}**",
                     f"- (c) noise sync makes latents easier to generate: **{verdicts['c']}**", ""]  # fmt: skip
    markdown = "\n".join(verdict_lines + lines + lines_a + lines_b + lines_c)
    return {"markdown": markdown, "json": {"verdicts": verdicts, "scaling": scaling, "learning_rate": learning_rate}}


def seed_points(ax, x: float, values: list[float]) -> None:
    """Mean ± std of one model's per-seed values at `x`, with each seed as a grey dot."""
    m, s = mean_std(values)
    ax.errorbar([x], [m], yerr=[s], fmt="o", capsize=4)
    ax.scatter([x] * len(values), values, s=8, color="grey", zorder=3)


def metrics_figure(plt, runs, names: tuple[str, ...], ticks: list[str], title: str, path: Path) -> None:
    """One panel per metric, the models `names` side by side."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3))
    for ax, (key, label) in zip(axes, METRIC_LABELS):
        for x, name in enumerate(names):
            seed_points(ax, x, metric(runs, name, key))
        ax.set_xticks(list(range(len(names))), ticks)
        ax.set_title(label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def figures(runs, sweep, out: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (a): metrics, and a grid of held-out examples (original | DiTo | AE), seed 0
    title = f"(a) DiTo vs deterministic AE, held-out crops, mean ± std over seeds {args.seeds}"
    metrics_figure(plt, runs, ("dito", "ae"), ["DiTo", "L2 AE"], title, out / "claim_a.png")
    originals = to_uint8(split_crops("held_out", 8, args.resolution, seed=1))
    dito, ae = (np.asarray(by_name(runs, n)[0]["examples"], dtype=np.uint8) for n in ("dito", "ae"))
    enlarge = lambda image: image.repeat(3, axis=0).repeat(3, axis=1)  # noqa: E731 (nearest neighbour, 3×)
    rows = [[enlarge(originals[i]), enlarge(dito[i]), enlarge(ae[i])] for i in range(8)]
    labelled_grid(rows, ["original", "DiTo", "L2 AE"]).save(out / "claim_a_examples.png")

    # (b): metrics against decoder width
    title = "(b) DiTo decoder width, held-out crops, mean ± std over seeds"
    metrics_figure(
        plt, runs, ("dito_small", "dito", "dito_large"), ["small", "base", "large"], title, out / "claim_b.png"
    )

    # (c): generation SWD per seed, and one sample per class from each tokenizer's DiT (seed 0)
    fig, ax = plt.subplots(figsize=(4, 3))
    for x, name in enumerate(("dito", "dito_p0")):
        seed_points(ax, x, [r["generation_swd"] for r in by_name(runs, name)])
    ax.set_xticks([0, 1], ["noise sync p=0.1", "p=0"])
    ax.set_title("(c) latent-DiT generation SWD ↓")
    fig.tight_layout()
    fig.savefig(out / "claim_c.png", dpi=100)
    plt.close(fig)
    rows = [
        np.concatenate(list(np.asarray(by_name(runs, n)[0]["samples"], dtype=np.uint8)), 1)
        for n in ("dito", "dito_p0")
    ]
    grid = np.concatenate(rows, 0)
    PIL.Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), PIL.Image.NEAREST).save(
        out / "claim_c_samples.png"
    )

    if sweep:
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.semilogx([r["lr"] for r in sweep], [r["validation"]["psnr"] for r in sweep], "o-")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("validation PSNR (dB)")
        ax.set_title(f"learning-rate sweep, seed {args.seeds[0]}")
        fig.tight_layout()
        fig.savefig(out / "lr_sweep.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    main(parse_args())
