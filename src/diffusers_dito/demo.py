"""The README's first command: train `dito-tiny` on photo crops bundled with scikit-image, then reconstruct.

Run it as `python -m diffusers_dito.demo` (or `diffusers-dito demo` once the CLI lands). Everything is local:
no network, no user data. It writes `reconstruction.png` (original | reconstruction) and `metrics.json`.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import DITO_PRESETS, AutoencoderDiTo, dito_flow_matching_loss

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")


def bundled_photo_crops(num_crops: int, size: int, seed: int = 0, names=SKIMAGE_PHOTOS) -> torch.Tensor:
    """Random `size`² crops (in [-1, 1]) of the colour photographs that ship inside scikit-image."""
    from skimage import data  # a [demo] extra: the photos are inside the wheel, so no download is needed

    rng = np.random.default_rng(seed)
    photos = []
    for name in names:
        array = np.asarray(getattr(data, name)())[..., :3]
        photo = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
        photos.append(F.interpolate(photo[None], scale_factor=0.25, mode="area")[0])  # down-scale: more content
    crops = []
    for i in range(num_crops):
        photo = photos[i % len(photos)]
        top = int(rng.integers(0, photo.shape[1] - size + 1))
        left = int(rng.integers(0, photo.shape[2] - size + 1))
        crops.append(photo[:, top : top + size, left : left + size])
    return torch.stack(crops)  # (N, 3, size, size)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default="dito-demo", help="Where the grid and metrics are written.")
    parser.add_argument("--steps", type=int, default=300, help="Optimiser steps.")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num_train_crops", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--num_inference_steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(args) -> dict:
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = bundled_photo_crops(args.num_train_crops, args.resolution, seed=args.seed)
    held_out = bundled_photo_crops(8, args.resolution, seed=args.seed + 1)

    vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
    print(f"dito-tiny: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M parameters; {len(train)} training crops")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=g)
        x = train[idx]
        x = torch.where(torch.rand(len(x), 1, 1, 1, generator=g) < 0.5, x.flip(-1), x)  # random h-flip
        loss = dito_flow_matching_loss(vae, x, noise_sync_prob=0.1, generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)

    vae.eval()
    with torch.no_grad():
        rec = vae(held_out, num_inference_steps=args.num_inference_steps, generator=torch.Generator().manual_seed(0))
        rec = rec.sample
    mse = (rec - held_out).pow(2).mean(dim=(1, 2, 3))
    metrics = {
        "held_out_psnr_db": float(np.mean([10 * math.log10(4.0 / m) for m in mse.tolist()])),
        "num_inference_steps": args.num_inference_steps,
        "train_steps": args.steps,
        "seconds": round(time.time() - start, 1),
    }
    grid = np.concatenate([np.concatenate([to_uint8(a), to_uint8(b)], axis=1) for a, b in zip(held_out, rec)], 0)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(
        out / "reconstruction.png"
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    vae.save_pretrained(out / "vae")
    print(
        f"held-out PSNR {metrics['held_out_psnr_db']:.2f} dB; wrote {out / 'reconstruction.png'}, metrics.json, vae/"
    )
    return metrics


if __name__ == "__main__":
    main(parse_args())
