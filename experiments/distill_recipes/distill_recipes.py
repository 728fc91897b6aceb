r"""How the distillation recipe was chosen: in-memory distillations of the demo's model into a 1-step student, each
scored on the held-out crops every `--eval_every` steps (PSNR, SWD and its two levels, PSNR to the teacher's decode).

The method is `training/distill_dito.py --cache_teacher_targets`: the first `--pairs` training crops, each with noise
fixed per image (the script's seeds), are decoded once by the teacher in `--teacher_steps` Euler steps, and the
student, initialised from the teacher's decoder, learns to match them in one step; AdamW (weight decay 0.01) with 10
warm-up steps and a cosine decay, clipping at 1.0, batch 16. The cached pairs are saved in `--cache_dir` and reused by
later variants. The variants differ in the loss (`--loss`), its finest-band weight, the steps and the data term; the
runs and their outcome are in this folder's README.md.

    python training/demo.py --output_dir dito-demo    # the teacher and the crops
    python experiments/distill_recipes/distill_recipes.py --demo_dir dito-demo --name l2 --loss l2
    python experiments/distill_recipes/distill_recipes.py --demo_dir dito-demo --name laplacian4 \
        --loss laplacian --fine_weight 4

It exists so that those runs can be repeated digit for digit; train students with `training/distill_dito.py`.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from diffusers_dito import AutoencoderDiTo, patch_sliced_wasserstein_loss
from diffusers_dito.metrics import psnr, sliced_wasserstein_distance
from diffusers_dito.metrics.swd import laplacian_pyramid
from diffusers_dito.training.data import seed_from
from diffusers_dito.training.evaluation import list_image_files, load_images
from diffusers_dito.training.objectives import TeacherTargetCache


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", required=True, help="training/demo.py's output: pipeline/ and data/.")
    parser.add_argument("--name", required=True, help="The variant's name: <output_dir>/<name>.json.")
    parser.add_argument("--loss", choices=["l2", "l1", "laplacian"], default="l2")
    parser.add_argument("--fine_weight", type=float, default=4.0, help="--loss laplacian: the finest band's weight.")
    parser.add_argument("--data_weight", type=float, default=0.0, help="Weight of an L2 term to the images.")
    parser.add_argument(
        "--swd_weight", type=float, default=0.0, help="Weight of the patch sliced-Wasserstein term to the targets."
    )
    parser.add_argument(
        "--swd_noise",
        choices=["cached", "fresh"],
        default="fresh",
        help="--swd_weight: the term compares the targets with the student's decode of the cached noise, or with a "
        "second decode from noise drawn afresh each step (which needs no teacher decode of its own).",
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--teacher_steps", type=int, default=32)
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--output_dir", default="distill-recipes")
    parser.add_argument("--cache_dir", default=None, help="Where the teacher's decodes are kept (default: output).")
    return parser.parse_args(argv)


@torch.no_grad()
def cached_pairs(teacher: AutoencoderDiTo, args) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """(images, latents, teacher decodes, noise seeds) of the first --pairs training crops, decoded in batches of 64
    from the noise distill_dito.py's target cache gives each image."""
    path = Path(args.cache_dir or args.output_dir) / f"pairs_{args.pairs}_{args.teacher_steps}.pt"
    if path.exists():
        return torch.load(path)
    images = load_images(list_image_files(Path(args.demo_dir) / "data" / "train")[: args.pairs])
    seeds = [seed_from(0, TeacherTargetCache.NOISE_KEY, i) for i in range(len(images))]
    latents, targets = [], []
    start = time.time()
    for i in range(0, len(images), 64):
        z = teacher.encode(images[i : i + 64]).latents
        generators = [torch.Generator().manual_seed(s) for s in seeds[i : i + 64]]
        latents.append(z)
        targets.append(teacher.decode(z, generator=generators, num_inference_steps=args.teacher_steps).sample)
    pairs = images, torch.cat(latents), torch.cat(targets), seeds
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pairs, path)
    print(f"cached {len(images)} pairs in {time.time() - start:.0f} s", flush=True)
    return pairs


def distance(sample: torch.Tensor, target: torch.Tensor, args) -> torch.Tensor:
    """The batch's loss. `laplacian` is the quantity of `diffusers_dito.laplacian_l2_loss` (3 levels) averaged over
    the batch, summed in the order these runs used, so that they repeat exactly."""
    diff = sample - target
    if args.loss == "l2":
        return diff.pow(2).mean()
    if args.loss == "l1":
        return diff.abs().mean()
    weights = [args.fine_weight, 1.0, 1.0]
    bands = zip(laplacian_pyramid(sample, 3), laplacian_pyramid(target, 3))
    return sum(w * (s - t).pow(2).mean() for w, (s, t) in zip(weights, bands)) / sum(weights) * 3


@torch.no_grad()
def evaluate(student, held_out, latents, teacher_decodes, step: int) -> dict:
    """The student's 1-step decode of the held-out crops, image i from the noise of seed i (as evaluate_dito.py)."""
    student.decoder_unet.eval()
    generators = [torch.Generator().manual_seed(i) for i in range(len(held_out))]
    decoded = student.decode(latents, generator=generators, num_inference_steps=1).sample
    student.decoder_unet.train()
    swd = sliced_wasserstein_distance(decoded, held_out)
    fine, coarse = (swd.per_level[k] for k in sorted(swd.per_level, reverse=True))
    result = {"step": step, "psnr": psnr(decoded, held_out), "swd": swd.mean, "fine": fine, "coarse": coarse}
    result["psnr_to_teacher"] = psnr(decoded, teacher_decodes)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
    return result


def main(args) -> dict:
    torch.manual_seed(0)
    vae_dir = Path(args.demo_dir) / "pipeline" / "vae"
    teacher = AutoencoderDiTo.from_pretrained(vae_dir).eval().requires_grad_(False)
    images, latents, targets, seeds = cached_pairs(teacher, args)
    held_out = load_images(list_image_files(Path(args.demo_dir) / "data" / "held_out"))
    with torch.no_grad():
        held_latents = teacher.encode(held_out).latents
        generators = [torch.Generator().manual_seed(i) for i in range(len(held_out))]
        teacher_decodes = teacher.decode(held_latents, generator=generators).sample  # its default

    student = AutoencoderDiTo.from_pretrained(vae_dir).requires_grad_(False)
    student.register_to_config(num_inference_steps=1)
    student.decoder_unet.requires_grad_(True).train()
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.01)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=10, num_training_steps=args.steps)

    order, history, step, start = torch.Generator().manual_seed(0), [], 0, time.time()
    while step < args.steps:
        for batch in torch.randperm(len(images), generator=order).split(args.batch_size):
            if len(batch) < args.batch_size or step >= args.steps:
                break
            generators = [torch.Generator().manual_seed(seeds[i]) for i in batch.tolist()]
            sample = student.decode(latents[batch], generator=generators, num_inference_steps=1).sample
            loss = distance(sample, targets[batch], args)
            if args.data_weight:
                loss = loss + args.data_weight * (sample - images[batch]).pow(2).mean()
            if args.swd_weight:
                unpaired = sample
                if args.swd_noise == "fresh":
                    fresh = [torch.Generator().manual_seed(seed_from(1, step, i)) for i in batch.tolist()]
                    unpaired = student.decode(latents[batch], generator=fresh, num_inference_steps=1).sample
                directions = torch.Generator().manual_seed(step)
                loss = loss + args.swd_weight * patch_sliced_wasserstein_loss(
                    unpaired, targets[batch], generator=directions
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            lr_scheduler.step()
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                history.append(evaluate(student, held_out, held_latents, teacher_decodes, step))
                history[-1]["seconds"] = time.time() - start
    result = {"args": vars(args), "history": history}
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(parse_args())
