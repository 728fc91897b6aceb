"""The `diffusers-dito` command line: reconstruct, generate, info.

Errors the user can fix (a missing path, an unreadable image, a class label out of range, ...) are printed as one
line on stderr with exit code 2, never as a traceback.

Examples:
    diffusers-dito reconstruct --model my-dito photo.jpg other.png --out recon/ --steps 25 --seed 0
    diffusers-dito generate --model my-dito-dit --class-labels 1 7 --guidance-scale 2.0 --out samples/
    diffusers-dito info --model my-dito --resolution 256
"""

import argparse
import json
import sys
from pathlib import Path


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _load_pipeline(model: str, kind: str):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.utils import logging as diffusers_logging

    from . import AutoencoderDiTo, DiToDiTPipeline, DiToPipeline

    diffusers_logging.disable_progress_bar()  # keep stderr for our own one-line errors

    path = Path(model)
    if not path.is_dir():
        raise CLIError(f"--model {model}: no such folder (expected a saved DiTo pipeline or model folder)")
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
        class_name = index.get("_class_name")
        class_name = class_name[-1] if isinstance(class_name, list) else class_name
        classes = {"DiToPipeline": DiToPipeline, "DiToDiTPipeline": DiToDiTPipeline}
        if class_name not in classes:
            raise CLIError(f"--model {model}: holds a {class_name}, not a DiTo pipeline")
        if kind == "generate" and class_name != "DiToDiTPipeline":
            raise CLIError(f"--model {model}: holds a {class_name}; `generate` needs a DiToDiTPipeline folder")
        pipe = classes[class_name].from_pretrained(path)
    elif (path / "config.json").is_file():
        if kind == "generate":
            raise CLIError(f"--model {model}: holds a bare model; `generate` needs a DiToDiTPipeline folder")
        pipe = DiToPipeline(vae=AutoencoderDiTo.from_pretrained(path), scheduler=FlowMatchEulerDiscreteScheduler())
    else:
        raise CLIError(f"--model {model}: no model_index.json or config.json inside")
    if kind == "reconstruct" and isinstance(pipe, DiToDiTPipeline):
        pipe = DiToPipeline(vae=pipe.vae, scheduler=FlowMatchEulerDiscreteScheduler())
    return pipe.to("cuda" if torch.cuda.is_available() else "cpu")


def _reconstruct(args) -> None:
    import torch
    from PIL import Image, UnidentifiedImageError

    from .image_utils import to_rgb

    images = []
    for name in args.inputs:
        try:
            with Image.open(name) as image:
                images.append(to_rgb(image))
        except FileNotFoundError:
            raise CLIError(f"{name}: no such file") from None
        except (UnidentifiedImageError, OSError) as err:
            raise CLIError(f"{name}: not a readable image ({err.__class__.__name__})") from None
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    pipe = _load_pipeline(args.model, "reconstruct")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, image in zip(args.inputs, images):  # one at a time: inputs may differ in size
        result = pipe(image, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed))
        target = out / f"{Path(name).stem}.png"
        result.images[0].save(target)
        print(target)


def _generate(args) -> None:
    import torch

    if args.guidance_scale < 1:
        raise CLIError(f"--guidance-scale must be >= 1, got {args.guidance_scale}")
    if args.steps < 1 or (args.decoder_steps is not None and args.decoder_steps < 1):
        raise CLIError("--steps and --decoder-steps must be >= 1")
    pipe = _load_pipeline(args.model, "generate")
    labels = []
    for label in args.class_labels:
        if label.lstrip("-").isdigit():
            labels.append(int(label))
        else:
            try:
                labels.extend(pipe.get_label_ids([label]))
            except ValueError:
                raise CLIError(f"--class-labels: unknown class name {label!r}") from None
    for label in labels:
        if not 0 <= label < pipe.num_classes:
            raise CLIError(f"--class-labels: {label} is out of range [0, {pipe.num_classes - 1}]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = pipe(
        labels,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.steps,
        decoder_num_inference_steps=args.decoder_steps,
        generator=torch.Generator().manual_seed(args.seed),
    )
    for i, (label, image) in enumerate(zip(labels, result.images)):
        target = out / f"{i:04d}_class{label}.png"
        image.save(target)
        print(target)


def _info(args) -> None:
    if args.resolution < 1:
        raise CLIError(f"--resolution must be >= 1, got {args.resolution}")
    pipe = _load_pipeline(args.model, "info")
    f = pipe.vae_scale_factor
    side = -(-args.resolution // f)  # images are padded up to a multiple of f
    info = {"pipeline": type(pipe).__name__}
    for name, component in pipe.components.items():
        if hasattr(component, "parameters"):
            info[f"{name}_parameters"] = sum(p.numel() for p in component.parameters())
    vae = pipe.vae
    info["encoder_parameters"] = sum(p.numel() for p in vae.encoder.parameters())
    info["decoder_parameters"] = sum(p.numel() for p in vae.decoder_unet.parameters())
    info["downsample_factor"] = f
    info["latent_shape"] = [vae.config.latent_channels, side, side]
    info["resolution"] = args.resolution
    info["vae_config"] = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    print(json.dumps(info, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-dito", description="DiTo diffusion autoencoders.")
    verbs = parser.add_subparsers(dest="command", required=True)

    p = verbs.add_parser("reconstruct", help="Encode and decode images.")
    p.add_argument("--model", required=True, help="Saved DiToPipeline (or AutoencoderDiTo) folder.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="Image files.")
    p.add_argument("--out", required=True, help="Output folder; writes <input stem>.png.")
    p.add_argument("--steps", type=int, default=None, help="ODE steps (default: the model's config).")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_reconstruct)

    p = verbs.add_parser("generate", help="Class-conditional generation with a DiToDiTPipeline.")
    p.add_argument("--model", required=True, help="Saved DiToDiTPipeline folder.")
    p.add_argument("--class-labels", nargs="+", required=True, help="Class ids or names.")
    p.add_argument("--guidance-scale", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=50, help="Latent ODE steps.")
    p.add_argument("--decoder-steps", type=int, default=None, help="DiTo decoding steps (default: config).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="Output folder.")
    p.set_defaults(func=_generate)

    p = verbs.add_parser("info", help="Print the config, parameter counts and latent shape.")
    p.add_argument("--model", required=True)
    p.add_argument("--resolution", type=int, default=256, help="Image side for the latent shape.")
    p.set_defaults(func=_info)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, ValueError, TypeError, OSError) as err:
        # Our models and pipelines validate their inputs with ValueError/TypeError messages written for users.
        print(f"diffusers-dito {args.command}: error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
