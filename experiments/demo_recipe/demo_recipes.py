"""How the demo's recipe was chosen: short in-memory trainings of recipe variants on the sound split, scored on
held-out crops at several decoding steps (PSNR, SSIM, high-frequency ratio).

Each variant trains with `dito_flow_matching_loss` (noise sync 0.1), AdamW (no weight decay), clipping at 1.0, batch
16, 32² crops (4096 training crops, seed 0), on one thread; two variants run side by side on a 2-core machine, so
their s/step is comparable with each other, not with the demo's 2-thread run.

    python experiments/demo_recipe/demo_recipes.py --variant f8c4 --steps 600 &
    python experiments/demo_recipe/demo_recipes.py --variant f4c4 --steps 600
    python experiments/demo_recipe/demo_recipes.py --variant f4c4_cosine_2e-3 --steps 600 &
    python experiments/demo_recipe/demo_recipes.py --variant f4c4_cosine_1e-3 --steps 600
"""

import argparse
import json
import math
import time

import torch

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, dito_flow_matching_loss
from diffusers_dito.benchmarking import write_json
from diffusers_dito.metrics import high_frequency_energy_ratio, psnr, ssim
from diffusers_dito.sample_data import split_crops

# name: (preset, learning rate, cosine decay)
VARIANTS = {
    "f8c4": ("dito-tiny", 1e-3, False),
    "f4c4": ("dito-cpu-f4c4", 1e-3, False),
    "f4c4_cosine_1e-3": ("dito-cpu-f4c4", 1e-3, True),
    "f4c4_cosine_2e-3": ("dito-cpu-f4c4", 2e-3, True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decode_steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    preset, learning_rate, cosine = VARIANTS[args.variant]
    vae = AutoencoderDiTo.from_config(DITO_PRESETS[preset])
    train, held_out = split_crops("train", 4096, 32, seed=0), split_crops("held_out", 64, 32, seed=1)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(args.steps):
        x = train[torch.randint(0, len(train), (args.batch_size,), generator=g)]
        x = torch.where((torch.rand(args.batch_size, generator=g) < 0.5)[:, None, None, None], x.flip(-1), x)
        lr = learning_rate * min(1.0, (step + 1) / max(args.warmup, 1))
        if cosine:
            lr *= 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = dito_flow_matching_loss(vae, x, 0.1, generator=g).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
    seconds = time.time() - start
    result = {"variant": args.variant, "preset": preset, "steps": args.steps, "s_per_step": seconds / args.steps}
    vae.eval()
    with torch.no_grad():
        z = vae.encode(held_out).latents
        for n in args.decode_steps:
            rec = vae.decode(z, num_inference_steps=n, generator=torch.Generator().manual_seed(0)).sample
            result[f"{n}_steps"] = {
                "psnr": psnr(rec, held_out),
                "ssim": ssim(rec, held_out),
                "hf_energy_ratio": high_frequency_energy_ratio(rec, held_out),
            }
    print(json.dumps(result))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
