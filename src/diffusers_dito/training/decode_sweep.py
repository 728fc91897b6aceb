# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""The quality-against-NFE sweep of `evaluate_dito.py`: the samplers it compares, what one decode costs in decoder
evaluations (NFE), a table row per (sampler, shift, steps) point, and the plot of the rows.

`experiments/decode_steps/choose_decode_defaults.py` reads the rows back from metrics.json and picks the cheapest
decoding setting.
"""

from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.schedulers import SchedulerMixin

from diffusers_dito.metrics import high_frequency_energy_ratio, sliced_wasserstein_distance
from diffusers_dito.scheduling import retrieve_flow_match_timesteps

from .evaluation import mean, to_float

logger = get_logger(__name__, log_level="INFO")

SAMPLERS = ("euler", "heun")
DEFAULT_SWEEP_STEPS = (1, 2, 4, 8, 16, 25, 50)
SWD_MIN_SIZE = 16  # SWD's coarsest pyramid level


def make_scheduler(sampler: str, shift: float = 1.0) -> SchedulerMixin:
    """A fresh flow-matching scheduler: `"euler"` (1st order) or `"heun"` (2nd order), on the σ grid of `shift`.

    `AutoencoderDiTo.decode` puts both on DiTo's uniform grid σ = 1, 1 − 1/N, …, 1/N, 0
    (`retrieve_flow_match_timesteps`), and both then map each σ to shift·σ / (1 + (shift − 1)·σ): shift = 1 keeps
    the paper's uniform grid, shift > 1 spends more of the steps at high noise. At one shift the curves compare
    the integrators, not the grids.
    """
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    if sampler == "heun":
        return FlowMatchHeunDiscreteScheduler(shift=shift)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def sampler_nfe(sampler: str, num_inference_steps: int) -> int:
    r"""
    Decoder network evaluations of one decode: one per scheduler timestep. Euler makes N; Heun makes 2N − 1 (two per
    step, but its last step, to σ = 0, is a plain Euler step).

    Examples:
        ```py
        >>> [sampler_nfe("euler", 4), sampler_nfe("heun", 4), sampler_nfe("heun", 1)]
        [4, 7, 1]

        ```
    """
    scheduler = make_scheduler(sampler)
    retrieve_flow_match_timesteps(scheduler, num_inference_steps, device="cpu")  # the grid `decode` integrates on
    return len(scheduler.timesteps)


def summarise_point(
    records: list[dict], originals: torch.Tensor | None, sampler: str, shift: float, steps: int, seconds, seed
) -> dict:
    """One row of the sweep table. SWD when every image has one size of at least 16 px (`originals` is not None), the
    high-frequency energy ratio when they share one size; otherwise None."""
    row = {"sampler": sampler, "shift": shift, "steps": steps, "nfe": sampler_nfe(sampler, steps)}
    row["psnr"] = mean([r["psnr"] for r in records])
    row["ssim"] = mean([r["ssim"] for r in records])
    row["swd"] = row["hf_energy_ratio"] = None
    if originals is not None:
        reconstructions = to_float(torch.stack([r["reconstruction"] for r in records]))  # (N, 3, H, W)
        references = to_float(originals)
        if min(originals.shape[-2:]) >= SWD_MIN_SIZE:
            row["swd"] = sliced_wasserstein_distance(reconstructions, references, seed=seed).mean
        try:
            row["hf_energy_ratio"] = high_frequency_energy_ratio(reconstructions, references)
        except ValueError as err:  # e.g. flat originals: no energy above the cutoff, the ratio is undefined
            logger.warning(f"No high-frequency ratio for {sampler}, shift {shift:g}, {steps} steps: {err}")
    row["seconds"] = round(seconds, 3)
    return row


def plot_sweep(rows: list[dict], path: Path, title: str) -> None:
    """PSNR, SWD and the high-frequency energy ratio against NFE (the cost of a decode), one line per (sampler,
    shift)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {
        "psnr": "PSNR (dB), higher is better",
        "swd": "SWD, lower is better",
        "hf_energy_ratio": "high-frequency energy ratio, 1 = as sharp",
    }
    curves = dict.fromkeys((row["sampler"], row["shift"]) for row in rows)
    ticks = []
    for nfe in sorted({row["nfe"] for row in rows}):
        if not ticks or nfe >= 1.3 * ticks[-1]:  # Heun's 2N - 1 lands next to Euler's N: keep the labels apart
            ticks.append(nfe)
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4), constrained_layout=True)
    for ax, (metric, label) in zip(axes, panels.items()):
        for sampler, shift in curves:
            points = [
                (r["nfe"], r[metric])
                for r in rows
                if (r["sampler"], r["shift"]) == (sampler, shift) and r[metric] is not None
            ]
            if points:
                ax.plot(*zip(*points), marker="o", label=f"{sampler}, shift {shift:g}")
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not computed (see metrics.json)", ha="center", transform=ax.transAxes)
        if metric == "hf_energy_ratio" and ax.lines:
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.set_xlabel("NFE (decoder evaluations per image)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: quality against NFE")
    fig.savefig(path, dpi=100)
    plt.close(fig)
