r"""Decode-time benchmark for AutoencoderDiTo.

Reports, all measured side by side in one run:
- decode time per image against the number of ODE steps;
- pipeline overhead: `DiToPipeline(latents=...)` time over N × one raw decoder-UNet forward (target <= 1.05);
- the fixed per-call cost of a 1-step decode: `AutoencoderDiTo.decode(z, num_inference_steps=1)` (its input checks,
  scheduler set-up, noise, conditioning, scheduler step and finiteness check) over one bare decoder forward of the
  same inputs (`decode_1_over_forward`, target < 1.05);
- DiTo decode over an `AutoencoderKL` decode whose decoder has a comparable parameter count;
- bf16 autocast over fp32, and channels_last over contiguous;
- with `--student FOLDER` (a distilled DiToPipeline or AutoencoderDiTo, `training/distill_dito.py`): the student's
  decode at its own steps over the AutoencoderKL decode and over the teacher's N-step decodes (N = `--steps`), where
  the teacher is `--model FOLDER` (a trained DiTo) or the preset. `--student_speed_options` times the student and
  the AutoencoderKL again with the same speed option applied to both (NHWC weights; NHWC and `torch.compile` of
  the decoding network), so the ratio can be read at each side's best as well as in eager fp32.

    python benchmarks/bench_decode.py --preset dito-tiny --resolution 64 --steps 1 2 4 8 --json out/decode.json
    python benchmarks/bench_decode.py --model dito-demo/pipeline --student dito-demo/student --resolution 32 \
        --batch_size 8 --steps 1 32 --student_speed_options eager channels_last compile
"""

import argparse
import copy
import math
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToPipeline
from diffusers_dito.benchmarking import count_flops, interleaved_medians, machine_info, markdown_table, write_json
from diffusers_dito.pipelines.loading import load_reconstruction_pipeline

STUDENT_SPEED_OPTIONS = ("eager", "channels_last", "compile")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dito-tiny", choices=sorted(DITO_PRESETS))
    parser.add_argument("--model", default=None, help="A trained DiTo folder to time instead of the preset.")
    parser.add_argument("--student", default=None, help="A distilled DiTo folder, timed against the model and KL.")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compare_steps", type=int, default=None, help="Steps for the KL/bf16/channels_last comparisons (config)."
    )
    parser.add_argument(
        "--speed_flags",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Time bf16 autocast and channels_last against fp32 (--no-speed_flags skips them: on a CPU without bf16 "
        "instructions a bf16 decode takes many times the fp32 one).",
    )
    parser.add_argument(
        "--student_speed_options",
        nargs="+",
        choices=STUDENT_SPEED_OPTIONS,
        default=["eager"],
        help="With --student: time the student against the AutoencoderKL with each option applied to both alike "
        "(eager: as loaded; channels_last: NHWC weights; compile: NHWC and torch.compile of the student's decoder "
        "UNet and the KL's decoder). The pairs are timed interleaved in one more call.",
    )
    parser.add_argument(
        "--compile_backend", default="inductor", help="torch.compile's backend for --student_speed_options compile."
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="Write the results here as JSON.")
    return parser.parse_args(argv)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def sd_vae_layout_kl(width: int, latent_channels: int, num_blocks: int = 4) -> AutoencoderKL:
    """An `AutoencoderKL` in the SD-VAE layout: widths (k, 2k, 4k, 4k), 2 ResNets per level, `num_blocks` levels
    (the down-sampling factor is 2 ** (num_blocks - 1)). Width 128 with 4 latent channels is the SD-VAE itself."""
    return AutoencoderKL(
        block_out_channels=(width, 2 * width, 4 * width, 4 * width)[:num_blocks],
        down_block_types=("DownEncoderBlock2D",) * num_blocks,
        up_block_types=("UpDecoderBlock2D",) * num_blocks,
        latent_channels=latent_channels,
        layers_per_block=2,
        norm_num_groups=math.gcd(32, width),
    )


def comparable_kl(decoder_params: int, latent_channels: int, num_blocks: int = 4) -> AutoencoderKL:
    """The SD-VAE layout (`num_blocks` levels, so the same down-sampling factor as the DiTo it is compared with) with
    the width whose decoder is closest to `decoder_params`."""
    widths = [8 * i for i in range(1, 33)]
    with torch.device("meta"):
        sizes = {k: count(sd_vae_layout_kl(k, latent_channels, num_blocks).decoder) for k in widths}
    best = min(widths, key=lambda k: abs(sizes[k] - decoder_params))
    return sd_vae_layout_kl(best, latent_channels, num_blocks)


def main(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model is not None:
        vae = load_reconstruction_pipeline(args.model).vae.to(device).eval()
    else:
        vae = AutoencoderDiTo.from_config(DITO_PRESETS[args.preset]).to(device).eval()
    pipe = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    f, c = vae.downsample_factor, vae.config.latent_channels
    side = args.resolution // f
    z = torch.randn(args.batch_size, c, side, side, device=device)
    x_t = torch.randn(args.batch_size, 3, side * f, side * f, device=device)
    cond = vae.upsample_latents(z)
    t = torch.tensor(500.0, device=device)
    gen = torch.Generator(device).manual_seed(0)

    def raw_forward():
        with torch.no_grad():
            vae.predict_velocity(x_t, t, cond)

    def pipe_decode(n):
        return lambda: pipe(latents=z, num_inference_steps=n, generator=gen, output_type="pt")

    fns = {"unet_forward": raw_forward, **{f"pipe_{n}": pipe_decode(n) for n in args.steps}}
    fns["decode_1"] = decoding(vae, z, num_inference_steps=1, generator=gen)  # what a 1-step student costs
    times = interleaved_medians(fns, device, args.repeats)
    decode_1_over_forward = times["decode_1"] / times["unet_forward"]
    rows = []
    for n in args.steps:
        rows.append(
            {
                "steps": n,
                "decode_s_per_image": times[f"pipe_{n}"] / args.batch_size,
                "overhead_vs_N_unet_forwards": times[f"pipe_{n}"] / (n * times["unet_forward"]),
            }
        )

    # DiTo vs a deterministic AutoencoderKL decoder of comparable size, at the config's default step count.
    kl = comparable_kl(count(vae.decoder_unet), c, len(vae.config.block_out_channels)).to(device).eval()
    n_default = args.compare_steps or vae.config.num_inference_steps

    def dito_decode_bf16():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            vae.decode(z, num_inference_steps=n_default, generator=gen)

    dito = {"num_inference_steps": n_default, "generator": gen}
    fns = {"kl": decoding(kl, z), "dito": decoding(vae, z, **dito)}
    if args.speed_flags:
        vae_cl = with_speed_option(vae, "decoder_unet", "channels_last", args.compile_backend)
        fns.update(dito_bf16=dito_decode_bf16, dito_cl=decoding(vae_cl, z, **dito))
    cmp = interleaved_medians(fns, device, args.repeats)

    comparisons = [
        {
            "comparison": f"DiTo ({n_default} steps) / AutoencoderKL decode",
            "ratio": cmp["dito"] / cmp["kl"],
            "dito_decoder_params": count(vae.decoder_unet),
            "kl_decoder_params": count(kl.decoder),
        }
    ]
    if args.speed_flags:
        comparisons += [
            {"comparison": "bf16 autocast / fp32", "ratio": cmp["dito_bf16"] / cmp["dito"]},
            {"comparison": "channels_last / contiguous", "ratio": cmp["dito_cl"] / cmp["dito"]},
        ]
    if args.student is not None:
        comparisons += student_comparisons(args, vae, kl, z, device)
    name = args.model or args.preset
    print(f"\n## bench_decode: {name}, {args.resolution}², batch {args.batch_size}, {machine_info(device)}\n")
    print(markdown_table(rows))
    print(f"\ndecode_1_over_forward: {decode_1_over_forward:.3f} (one-step decode over one decoder forward)\n")
    print(markdown_table([{k: v for k, v in r.items() if k in ("comparison", "ratio")} for r in comparisons]))
    result = {
        "args": vars(args),
        "machine": machine_info(device),
        "steps": rows,
        "decode_1_over_forward": decode_1_over_forward,
        "comparisons": comparisons,
    }
    write_json(args.json, result)
    return result


def student_comparisons(args, teacher: AutoencoderDiTo, kl: AutoencoderKL, z: torch.Tensor, device) -> list[dict]:
    """The distilled student's decode (its own default steps) over the KL decode and over the teacher's N-step
    decodes, all timed interleaved in one run; `decode_s_per_image` of each is reported too."""
    student = load_reconstruction_pipeline(args.student).vae.to(device).eval()
    n_student = student.config.num_inference_steps
    gen = torch.Generator(device).manual_seed(0)

    fns = {"kl": decoding(kl, z), "student": decoding(student, z, num_inference_steps=n_student, generator=gen)}
    fns.update({f"teacher_{n}": decoding(teacher, z, num_inference_steps=n, generator=gen) for n in args.steps})
    times = interleaved_medians(fns, device, args.repeats)
    rows = [
        {
            "comparison": f"student ({n_student} step) / AutoencoderKL decode",
            "ratio": times["student"] / times["kl"],
            "student_s_per_image": times["student"] / args.batch_size,
            "kl_s_per_image": times["kl"] / args.batch_size,
        }
    ]
    for n in args.steps:
        rows.append(
            {
                "comparison": f"student ({n_student} step) / teacher ({n} steps)",
                "ratio": times["student"] / times[f"teacher_{n}"],
                "teacher_s_per_image": times[f"teacher_{n}"] / args.batch_size,
                "expected_ratio": n_student / n,  # 1/N of the teacher's N-step decode
            }
        )
    if args.student_speed_options != ["eager"]:
        rows += speed_option_comparisons(args, student, kl, z, device)
    return rows


def decoding(model: torch.nn.Module, z: torch.Tensor, **kwargs) -> Callable[[], None]:
    """`model.decode(z, **kwargs)` without gradients, as a callable to time."""

    def run():
        with torch.no_grad():
            model.decode(z, **kwargs)

    return run


def with_speed_option(model: torch.nn.Module, network: str, option: str, backend: str) -> torch.nn.Module:
    """`model` as loaded (eager), or a copy with NHWC weights (channels_last), or NHWC with its decoding network
    `network` compiled in place (compile). The same function serves the student and the KL, so both sides get the
    same treatment."""
    if option == "eager":
        return model
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    if option == "compile":
        getattr(model, network).compile(backend=backend)
    return model


def speed_option_comparisons(args, student: AutoencoderDiTo, kl: AutoencoderKL, z: torch.Tensor, device) -> list[dict]:
    """The student's decode over the KL decode with each of `--student_speed_options` applied to both, all pairs
    timed interleaved in one call (compilation happens in the warm-up calls, outside the timing)."""
    n_student = student.config.num_inference_steps
    gen = torch.Generator(device).manual_seed(0)
    fns, students = {}, {}
    for option in args.student_speed_options:
        s = students[option] = with_speed_option(student, "decoder_unet", option, args.compile_backend)
        fns[f"student_{option}"] = decoding(s, z, num_inference_steps=n_student, generator=gen)
        fns[f"kl_{option}"] = decoding(with_speed_option(kl, "decoder", option, args.compile_backend), z)
    times = interleaved_medians(fns, device, args.repeats, warmup=2)
    with torch.no_grad():

        def decode(model: AutoencoderDiTo) -> torch.Tensor:
            return model.decode(z, num_inference_steps=n_student, generator=gen.manual_seed(0)).sample

        # The options must not change what is decoded: each variant against the loaded student, from the same noise
        # (the eager variant's 0 says the seeded decode repeats exactly).
        decoded = {option: decode(s) for option, s in students.items()}
        reference = decode(student)
        differences = {option: (x - reference).abs().max().item() for option, x in decoded.items()}
        # The work each side does, so a time ratio can be read against it (convolutions and matrix products).
        flops, kl_flops = count_flops(lambda: decode(student)), count_flops(lambda: kl.decode(z))
    return [
        {
            "comparison": f"student ({n_student} step) / AutoencoderKL decode, both {option}",
            "speed_option": option,
            "ratio": times[f"student_{option}"] / times[f"kl_{option}"],
            "student_s_per_image": times[f"student_{option}"] / args.batch_size,
            "kl_s_per_image": times[f"kl_{option}"] / args.batch_size,
            "student_max_abs_difference_to_eager": differences[option],
            "student_gflop_per_image": flops / args.batch_size / 1e9,
            "kl_gflop_per_image": kl_flops / args.batch_size / 1e9,
        }
        for option in args.student_speed_options
    ]


if __name__ == "__main__":
    main(parse_args())
