r"""What each term of `training/distill_dito.py`'s loss costs per training step, measured side by side.

One optimizer step of the distillation (the student's decode, the loss, backward, gradient clipping, AdamW) for each
recipe below, timed round-robin in one process, so that the ratios to the plain step hold even where the machine's
speed drifts between runs. The step is `distill_dito.DistillationObjective`, the script's own; the teacher's targets
stand in as a fixed tensor (with `--cache_teacher_targets` they are looked up, not decoded, after the first epoch).

| recipe | `distill_dito.py` flags added to the band-weighted loss |
|---|---|
| `plain` | (none: the demo's recipe) |
| `data` | `--data_loss_weight 0.1` |
| `swd_paired` | `--data_loss_weight 0.1 --swd_loss_weight 20 --swd_noise paired` |
| `swd_fresh` | `--data_loss_weight 0.1 --swd_loss_weight 20 --swd_noise fresh` (a second student decode per step) |

    python experiments/distill_step_cost/bench_distill_step.py --teacher dito-demo/pipeline --resolution 32 \
        --batch_size 16 --repeats 15 --json experiments/distill_step_cost/results/step_cost.json
"""

import argparse
import itertools

import torch

from diffusers_dito.benchmarking import interleaved_medians, machine_info, markdown_table, write_json
from diffusers_dito.training.objectives import DistillationObjective, build_student

# recipe -> DistillationObjective's keyword arguments beyond the band-weighted loss (the demo's)
RECIPES = {
    "plain": {},
    "data": {"data_loss_weight": 0.1},
    "swd_paired": {"data_loss_weight": 0.1, "swd_loss_weight": 20.0, "swd_noise": "paired"},
    "swd_fresh": {"data_loss_weight": 0.1, "swd_loss_weight": 20.0, "swd_noise": "fresh"},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="The teacher: a DiToPipeline folder or an AutoencoderDiTo.")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--student_steps", type=int, default=1)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--repeats", type=int, default=15, help="Timed steps per recipe (interleaved).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per recipe first.")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.recipes[0] != "plain":
        parser.error("--recipes must start with plain, the step the others are timed against.")
    return args


def main(args) -> dict:
    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.resolution, args.resolution) * 2 - 1  # (B, 3, R, R)
    targets = torch.rand_like(images) * 2 - 1  # stands in for the teacher's cached decodes
    seeds = list(range(args.batch_size))  # ε fixed per image, as with --cache_teacher_targets

    steps = {}
    for name in args.recipes:
        # one student per recipe, so that no recipe's optimizer state or weights reach another's steps
        student = build_student(args.teacher, args.student_steps)
        with torch.no_grad():
            latents = student.encode(images).latents  # (B, C, h, w): the frozen encoder's, the same for every recipe
        terms = {"data_loss_weight": 0.0, **RECIPES[name]}
        objective = DistillationObjective(student, args.student_steps, loss_type="laplacian", **terms)
        trainable = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        counter = itertools.count()

        def step(objective=objective, trainable=trainable, optimizer=optimizer, latents=latents, counter=counter):
            out = objective(latents, targets, images, seeds, fresh_seed=next(counter))
            out["per_sample_loss"].mean().backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step

    medians = interleaved_medians(steps, torch.device("cpu"), args.repeats, warmup=args.warmup)
    rows = [
        {"recipe": name, "step_s": medians[name], "time_vs_plain": medians[name] / medians["plain"]}
        for name in args.recipes
    ]
    info = machine_info(torch.device("cpu"))
    print(f"\n## bench_distill_step: {args.batch_size} × {args.resolution}², {info}\n")
    print(markdown_table(rows))
    result = {"args": vars(args), "machine": info, "rows": rows}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
