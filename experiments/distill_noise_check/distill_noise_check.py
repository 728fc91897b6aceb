r"""Has a distilled student learned its teacher's map from noise to image, or only the noise draws it was trained on?

`training/distill_dito.py --cache_teacher_targets` pairs each training crop with one noise draw, fixed for the run
(the seed `seed_from(seed, TeacherTargetCache.NOISE_KEY, index)`). This script decodes, with the teacher (at its
default steps) and the student (at its own), from the same noise:

- training crops from the noise their targets were cached with (what the student was fitted to);
- the same crops from fresh noise;
- the held-out crops from the noise of seed i for image i, as `evaluate_dito.py` does;

and reports the student's PSNR to the teacher's decode in each case, with both decoders' PSNR to the originals. A
student much nearer its teacher on the cached draws than on fresh noise has fitted those draws: more noise draws per
crop (more pairs) is then the lever, rather than more steps over the same pairs.

    python experiments/distill_noise_check/distill_noise_check.py --teacher dito-demo/pipeline \
        --student dito-demo/student --train_dir dito-demo/data/train --held_out_dir dito-demo/data/held_out \
        --num_pairs 1024 --sample 64
"""

import argparse
import os
from pathlib import Path

import torch

from diffusers_dito import AutoencoderDiTo
from diffusers_dito.benchmarking import markdown_table, write_json
from diffusers_dito.metrics import psnr
from diffusers_dito.pipelines.loading import load_reconstruction_pipeline
from diffusers_dito.training.data import seed_from
from diffusers_dito.training.evaluation import list_image_files, load_images
from diffusers_dito.training.objectives import TeacherTargetCache

FRESH_NOISE_OFFSET = 10_000  # fresh draws: seeds no cached pair and no held-out image uses


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The teacher: a DiToPipeline folder or an AutoencoderDiTo.")
    parser.add_argument("--student", required=True, help="The distilled student, likewise.")
    parser.add_argument("--train_dir", required=True, help="The distillation's --train_data_dir (images, in order).")
    parser.add_argument("--held_out_dir", required=True)
    parser.add_argument("--num_pairs", type=int, default=1024, help="The run's --max_train_samples: cached pairs.")
    parser.add_argument("--sample", type=int, default=64, help="How many of the cached pairs to decode (spread out).")
    parser.add_argument("--seed", type=int, default=0, help="The distillation's --seed.")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


@torch.no_grad()
def compare(teacher: AutoencoderDiTo, student: AutoencoderDiTo, images: torch.Tensor, seeds: list[int]) -> dict:
    """Both decoders' decodes of `images`, image i from the noise of `seeds[i]`, and their PSNRs."""
    z = teacher.encode(images).latents  # the student's encoder is the teacher's, bit for bit

    def decode(vae: AutoencoderDiTo) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return vae.decode(z, generator=generators).sample  # each at its own default steps

    target, decoded = decode(teacher), decode(student)
    return {
        "images": len(images),
        "student_to_teacher_psnr": psnr(decoded, target),
        "teacher_psnr": psnr(target, images),
        "student_psnr": psnr(decoded, images),
    }


def main(args) -> dict:
    teacher, student = (load_reconstruction_pipeline(folder).vae.eval() for folder in (args.teacher, args.student))
    train_files = list_image_files(Path(args.train_dir))[: args.num_pairs]
    step = max(1, len(train_files) // args.sample)
    indices = list(range(0, len(train_files), step))[: args.sample]
    crops = load_images([train_files[i] for i in indices])
    held_out = load_images(list_image_files(Path(args.held_out_dir)))
    cached_seeds = [seed_from(args.seed, TeacherTargetCache.NOISE_KEY, i) for i in indices]  # distill_dito.py's
    cases = {
        "training crops, their cached noise": (crops, cached_seeds),
        "training crops, fresh noise": (crops, [FRESH_NOISE_OFFSET + i for i in indices]),
        "held-out crops, noise of seed i": (held_out, list(range(len(held_out)))),
    }
    rows = [{"case": name, **compare(teacher, student, images, seeds)} for name, (images, seeds) in cases.items()]
    steps = (teacher.config.num_inference_steps, student.config.num_inference_steps)
    print(f"\n## distill_noise_check: teacher at {steps[0]} steps, student at {steps[1]}\n")
    print(markdown_table(rows))
    result = {"args": vars(args), "teacher_steps": steps[0], "student_steps": steps[1], "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(parse_args())
