"""The paper presets at the paper's resolution: what a training step costs, measured on this machine, and from that an
estimate of the memory per GPU of the paper's runs under FSDP.

Measured (each case in a fresh process, so that its peak resident memory is its own): `dito-b-f8c4` training steps at
256², batch 2, with and without `--gradient_checkpointing`, and DiT-XL/2 steps on 32×32×4 latents, batch 2: the
peak memory, the memory before the first step (weights), seconds per step, and FLOPs per image (matrix products and
convolutions, forward and backward, counted with `torch.utils.flop_counter` on the meta device).

Estimated (not measured; no GPU here): memory per GPU at the paper's batch of 64 over `--gpus` GPUs in bf16 mixed
precision under FSDP full sharding: fp32 weights, gradients, Adam moments and the EMA (16 bytes per parameter, all
sharded over the GPUs), plus activations. The activations of one image are the measured fp32 peak above the
weights and optimizer state, halved for bf16; L and XL scale B's by the ratio of their first decoder width (the
activations of a U-Net grow with its widths at each resolution).

    python benchmarks/bench_paper_scale.py --json docs/results/paper_scale.json
"""

import argparse
import json
import subprocess
import sys
import time

import torch

from diffusers_dito import DIT_PRESETS, DITO_PRESETS, AutoencoderDiTo, DiToDiTTransformer2DModel
from diffusers_dito.benchmarking import count_flops, machine_info, markdown_table, write_json
from diffusers_dito.losses import latent_flow_matching_loss
from diffusers_dito.training.objectives import DiToTrainingObjective

MIB = 2**20
GIB = 2**30
CASES = ("dito-b-f8c4", "dito-b-f8c4+gradient_checkpointing", "dit-xl-2")
DITO_SIZES = ("dito-b-f8c4", "dito-l-f8c4", "dito-xl-f8c4")
BYTES_PER_PARAMETER = 16  # fp32 weights, gradients, two Adam moments; the EMA adds 4 more (below)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs assumed by the estimate.")
    parser.add_argument("--paper_batch_size", type=int, default=64, help="Global batch of the estimate.")
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # a child process measuring one case
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


def build(case: str, device: str):
    """The model of `case`, and one training step's loss as a function of a generator."""
    torch.manual_seed(0)
    if case in DIT_PRESETS:
        latent = {"sample_size": 32, "in_channels": 4, "out_channels": 4, "num_embeds_ada_norm": 1000}
        config = {**DIT_PRESETS[case], **latent}
        model = DiToDiTTransformer2DModel.from_config(config).to(device).train()
        return model, lambda batch, g: latent_flow_matching_loss(
            model, batch["latents"], batch["labels"], 1000, 0.1, generator=g
        ).per_sample_loss.mean()
    vae = AutoencoderDiTo.from_config(DITO_PRESETS[case.split("+")[0]]).to(device).train()
    if "gradient_checkpointing" in case:
        vae.enable_gradient_checkpointing()
    objective = DiToTrainingObjective(vae, 0.1)
    return vae, lambda batch, g: objective(batch["images"], g)["loss"]


def example_batch(case: str, args, device: str) -> dict:
    n = args.batch_size
    if case in DIT_PRESETS:
        return {"latents": torch.randn(n, 4, 32, 32, device=device), "labels": torch.arange(n, device=device)}
    return {"images": torch.rand(n, 3, args.resolution, args.resolution, device=device) * 2 - 1}


def flops_per_image(case: str, args) -> float:
    """Forward and backward FLOPs of one image, counted on the meta device (no memory, no time)."""
    model, loss = build(case, "meta")
    batch = example_batch(case, args, "meta")
    return count_flops(lambda: loss(batch, None).backward()) / args.batch_size


def measure_case(case: str, args) -> dict:
    """In this (child) process: the weights' footprint, then `--steps` AdamW steps, timed, and the peak."""
    model, loss = build(case, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, generator = example_batch(case, args, "cpu"), torch.Generator().manual_seed(0)
    weights_mib = peak_rss_mib()
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss(batch, generator).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return {
        "case": case,
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "weights_peak_MiB": round(weights_mib),
        "peak_MiB": round(peak_rss_mib()),
        "s_per_step": [round(s, 2) for s in seconds],
    }


def run_child(case: str, args) -> dict:
    command = [sys.executable, __file__, "--case", case, "--resolution", str(args.resolution),
               "--batch_size", str(args.batch_size), "--steps", str(args.steps)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def activations_per_image(row: dict, batch_size: int) -> float:
    """Bytes of bf16 activations of one image: the measured fp32 peak above the weights and the gradients and Adam
    moments that the step allocates, per image, halved."""
    optimizer_state = row["parameters_M"] * 1e6 * 12
    return max(row["peak_MiB"] * MIB - row["weights_peak_MiB"] * MIB - optimizer_state, 0) / batch_size / 2


def estimate_row(name: str, parameters: float, activations: float, args, note: str = "") -> dict:
    sharded = parameters * (BYTES_PER_PARAMETER + 4) / args.gpus  # + the fp32 EMA; FSDP shards all of it
    images = args.paper_batch_size // args.gpus
    return {
        "model": name + note,
        "parameters_M": round(parameters / 1e6, 1),
        "sharded_state_GiB_per_GPU": round(sharded / GIB, 2),
        "activations_GiB_per_GPU": round(activations * images / GIB, 1),
        "total_GiB_per_GPU (estimate)": round((sharded + activations * images) / GIB, 1),
    }


def estimates(rows: dict, args) -> list[dict]:
    """Memory per GPU of the paper's runs (module docstring): B/L/XL from the dito-b-f8c4 cases, DiT-XL/2 from its."""
    out = []
    for case, row in rows.items():
        per_image = activations_per_image(row, args.batch_size)
        if case in DIT_PRESETS:
            out.append(estimate_row(case, row["parameters_M"] * 1e6, per_image, args))
            continue
        note = " (gradient checkpointing)" if "gradient_checkpointing" in case else ""
        for name in DITO_SIZES:
            with torch.device("meta"):
                parameters = sum(p.numel() for p in AutoencoderDiTo.from_config(DITO_PRESETS[name]).parameters())
            width_ratio = DITO_PRESETS[name]["decoder_block_out_channels"][0] / 128  # B's c0
            out.append(estimate_row(name, parameters, per_image * width_ratio, args, note))
    return out


def main(args) -> dict:
    if args.case is not None:  # the child: one case, one JSON line on stdout
        print(json.dumps(measure_case(args.case, args)))
        return {}
    rows = {}
    for case in args.cases:
        rows[case] = {**run_child(case, args), "GFLOPs_per_image": round(flops_per_image(case, args) / 1e9, 1)}
        print(f"measured {case}: {rows[case]}", flush=True)
    measured = list(rows.values())
    estimated = estimates(rows, args)
    print(markdown_table(measured))
    print()
    print(markdown_table(estimated))
    payload = {"machine": machine_info(torch.device("cpu")), "measured": measured, "estimate": estimated,
               "resolution": args.resolution, "batch_size": args.batch_size, "gpus": args.gpus,
               "paper_batch_size": args.paper_batch_size}  # fmt: skip
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main(parse_args())
