"""Small-scale reproduction of DiTo's core claim, end to end on a CPU.

Claim (paper, Sec. 4): a single diffusion L2 loss gives sharper, more faithful reconstructions than a deterministic
autoencoder. We train, on the same photo crops and with the same budget:

1. `dito`: dito-tiny with `dito_flow_matching_loss` (noise sync p = 0), decoded with Euler ODE steps;
2. `ae`: the same encoder and decoder networks as a deterministic autoencoder: the decoder gets only z (its image
   input is zeros) at a fixed timestep (σ = 1) and is trained with plain L2 to output the image;
3. `dito_sync`: dito-tiny with noise synchronisation p = 0.1.

Then we compare PSNR, SSIM, SWD and the high-frequency energy ratio on held-out photographs, and train a tiny
class-conditional latent DiT (classes = source photo) on the latents of `dito` and of `dito_sync` to compare the
generation SWD of the two tokenizers. Everything is written to `--output_dir` (JSON, tables, a figure).

    python benchmarks/reproduce_small_scale.py --output_dir docs/results/reproduction
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from common import markdown_table
from diffusers_dito import (
    DIT_PRESETS,
    DITO_PRESETS,
    AutoencoderDiTo,
    DiToDiTTransformer2DModel,
    dito_flow_matching_loss,
    latent_flow_matching_loss,
)
from diffusers_dito.metrics import (
    compute_generation_metrics,
    high_frequency_energy_ratio,
    psnr,
    sliced_wasserstein_distance,
    ssim,
)
from diffusers_dito.models.autoencoder_dito import set_flow_match_timesteps
from diffusers_dito.sample_data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, write_photo_crops


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="docs/results/reproduction")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num_train_crops", type=int, default=1024)
    parser.add_argument("--num_held_out_crops", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1500, help="Optimiser steps for each autoencoder.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--decode_steps", type=int, default=25, help="Euler steps for DiTo decoding.")
    parser.add_argument("--dit_steps", type=int, default=3000, help="Optimiser steps for each latent DiT.")
    parser.add_argument("--samples_per_class", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_folder(folder: Path) -> tuple[torch.Tensor, list[str]]:
    paths = sorted(folder.glob("*.png"))
    images = [np.asarray(PIL.Image.open(p).convert("RGB")) for p in paths]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]
    return x, [p.name.rsplit("_", 1)[0] for p in paths]


def deterministic_ae_loss(vae: AutoencoderDiTo, images: torch.Tensor) -> torch.Tensor:
    """Baseline: the DiTo networks as a plain autoencoder, x̂ = D(0, σ = 1, z), trained with L2."""
    return (deterministic_decode(vae, vae.encode(images).latents) - images).pow(2).mean()


def deterministic_decode(vae: AutoencoderDiTo, z: torch.Tensor) -> torch.Tensor:
    cond = vae.upsample_latents(z)
    zeros = torch.zeros(cond.shape[0], vae.config.out_channels, *cond.shape[-2:])
    return vae.predict_velocity(zeros, torch.tensor(1000.0), cond)


def train_autoencoder(kind: str, train: torch.Tensor, args) -> tuple[AutoencoderDiTo, float]:
    torch.manual_seed(args.seed)
    vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
    opt = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=g)
        x = train[idx]
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)
        if kind == "ae":
            loss = deterministic_ae_loss(vae, x)
        else:
            loss = dito_flow_matching_loss(vae, x, noise_sync_prob=0.1 if kind == "dito_sync" else 0.0, generator=g)
            loss = loss.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == args.steps:
            print(f"  {kind} step {step}/{args.steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
    return vae.eval(), time.time() - start


@torch.no_grad()
def reconstruct(kind: str, vae: AutoencoderDiTo, images: torch.Tensor, args) -> torch.Tensor:
    z = vae.encode(images).latents
    if kind == "ae":
        return deterministic_decode(vae, z).clamp(-1, 1)
    return vae.decode(z, num_inference_steps=args.decode_steps, generator=torch.Generator().manual_seed(0)).sample


def train_latent_dit(vae: AutoencoderDiTo, train: torch.Tensor, labels: torch.Tensor, num_classes: int, args):
    with torch.no_grad():
        z = torch.cat([vae.encode(train[i : i + 256]).latents for i in range(0, len(train), 256)])
        z = torch.cat(
            [z, torch.cat([vae.encode(train[i : i + 256].flip(-1)).latents for i in range(0, len(train), 256)])]
        )
    y = torch.cat([labels, labels])
    torch.manual_seed(args.seed)
    config = dict(DIT_PRESETS["dit-tiny"], sample_size=z.shape[-1], num_embeds_ada_norm=num_classes)
    dit = DiToDiTTransformer2DModel.from_config(config)
    dit.initialize_weights()
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.dit_steps + 1):
        idx = torch.randint(0, len(z), (64,), generator=g)
        loss = latent_flow_matching_loss(dit, z[idx], y[idx], num_classes, 0.1, generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 1000 == 0 or step == args.dit_steps:
            print(f"  latent DiT step {step}/{args.dit_steps} loss {loss.item():.4f}", flush=True)
    return dit.eval()


@torch.no_grad()
def generate(dit, vae, num_classes: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    from diffusers import FlowMatchEulerDiscreteScheduler

    labels = torch.arange(num_classes).repeat_interleave(args.samples_per_class)
    g = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(
        len(labels), dit.config.in_channels, dit.config.sample_size, dit.config.sample_size, generator=g
    )
    scheduler = FlowMatchEulerDiscreteScheduler()
    set_flow_match_timesteps(scheduler, 50)
    null = torch.full_like(labels, num_classes)
    for t in scheduler.timesteps:
        v = dit(
            torch.cat([latents, latents]), timestep=t.expand(2 * len(labels)), class_labels=torch.cat([labels, null])
        )
        cond, uncond = v.sample.chunk(2)
        latents = scheduler.step(uncond + 2.0 * (cond - uncond), t, latents, return_dict=False)[0]  # CFG 2.0
    images = vae.decode(latents, num_inference_steps=args.decode_steps, generator=g).sample
    return images, labels


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    write_photo_crops(out / "data" / "train", args.num_train_crops, args.resolution, TRAIN_PHOTOS, seed=args.seed)
    write_photo_crops(out / "data" / "held_out", args.num_held_out_crops, args.resolution, HELD_OUT_PHOTOS, seed=1)
    train, train_names = load_folder(out / "data" / "train")
    held_out, _ = load_folder(out / "data" / "held_out")
    classes = sorted(set(train_names))
    labels = torch.tensor([classes.index(n) for n in train_names])

    results, recs, models = {}, {}, {}
    for kind in ("dito", "ae", "dito_sync"):
        print(f"training {kind}", flush=True)
        models[kind], seconds = train_autoencoder(kind, train, args)
        rec = reconstruct(kind, models[kind], held_out, args)
        recs[kind] = rec
        results[kind] = {
            "psnr": psnr(rec, held_out),
            "ssim": ssim(rec, held_out),
            "swd": sliced_wasserstein_distance(rec, held_out, seed=args.seed).mean,
            "hf_energy_ratio": high_frequency_energy_ratio(rec, held_out),
            "train_seconds": round(seconds, 1),
        }
        print(f"  {kind}: {results[kind]}", flush=True)

    generation = {}
    for kind in ("dito", "dito_sync"):
        print(f"training latent DiT on {kind} latents", flush=True)
        dit = train_latent_dit(models[kind], train, labels, len(classes), args)
        samples, _ = generate(dit, models[kind], len(classes), args)
        # SWD compares equal-sized sets: compute_generation_metrics draws a seeded subset of the larger one.
        generation[kind] = {"generation_swd": compute_generation_metrics(samples, train, seed=args.seed).values["swd"]}
        PIL.Image.fromarray(np.concatenate([to_uint8(s) for s in samples[:: args.samples_per_class // 4]], 1)).save(
            out / f"samples_{kind}.png"
        )

    rows = [{"model": k, **{m: v for m, v in r.items()}} for k, r in results.items()]
    gen_rows = [{"tokenizer": k, **v} for k, v in generation.items()]
    grid = np.concatenate(
        [np.concatenate([to_uint8(held_out[i]), *(to_uint8(recs[k][i]) for k in recs)], 1) for i in range(8)], 0
    )
    PIL.Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), PIL.Image.NEAREST).save(
        out / "held_out_grid.png"
    )
    report = {"args": vars(args), "reconstruction": results, "generation": generation, "classes": classes}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print("\n" + markdown_table(rows) + "\n\n" + markdown_table(gen_rows))
    print(f"\nwrote {out / 'results.json'}, {out / 'held_out_grid.png'} (original | dito | ae | dito_sync)")
    return report


if __name__ == "__main__":
    main(parse_args())
