"""The `diffusers-dito` command line: reconstruct, generate, info, app.

Errors the user can fix (a missing path, an unreadable image, a class label out of range, ...) are printed as one
line on stderr with exit code 2, never as a traceback; Ctrl-C is one line too, with the shell's code for it, 130.

Examples:
    diffusers-dito reconstruct --model my-dito photo.jpg other.png --out recon/ --steps 25 --seed 0
    diffusers-dito generate --model my-dito-dit --class-labels 1 7 --guidance-scale 2.0 --out samples/
    diffusers-dito info --model my-dito --resolution 256
    diffusers-dito app --model dito-demo        # a web app on http://127.0.0.1:7860 (pip install -e ".[app]")
"""

import argparse
import json
import math
import os
import socket
import sys
from pathlib import Path

from .app import launch, resolve_model_folders
from .atomic_files import atomic_write
from .image_utils import read_image
from .limits import APP_MAX_MEGAPIXELS, APP_TIME_LIMIT, MAX_SEED
from .models.autoencoder_dito import MAX_INFERENCE_STEPS
from .pipelines.loading import load_pipeline, load_reconstruction_pipeline, model_kind

EXIT_CODE_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command that Ctrl-C ended


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as the one line `prog: error: message` (exit code 2), no usage block. The
    training scripts' parsers use it too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bounded_int(low: int, high: int, high_text: str):
    """An argparse type for an int in [low, high], checked at parse time so that the error names the flag."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be >= {low} and <= {high_text}, got {value}")
        return number

    return parse


steps_type = _bounded_int(1, MAX_INFERENCE_STEPS, str(MAX_INFERENCE_STEPS))  # ODE steps
seed_type = _bounded_int(0, MAX_SEED, "2**64 - 1")  # what torch.Generator.manual_seed accepts


def finite_float(value: str) -> float:
    """argparse type for a float that must be finite (inf and nan would give all-black images)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be finite, got {value}")
    return number


def _load_pipeline(model: str, command: str):
    """The pipeline `command` runs: `reconstruct` gets a DiToPipeline from any saved DiTo folder, `generate` needs a
    DiToDiTPipeline folder, `info` describes whatever the folder holds."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # keep stderr for our own one-line errors
    try:
        kind = model_kind(model)
    except ValueError as err:
        raise CLIError(f"--model {err}") from None
    if command == "generate" and kind != "DiToDiTPipeline":
        raise CLIError(f"--model {model}: holds a {kind}; `generate` needs a DiToDiTPipeline folder")
    pipe = load_reconstruction_pipeline(model) if command == "reconstruct" else load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)  # stderr is for one-line errors, not a bar per image
    return pipe.to("cuda" if torch.cuda.is_available() else "cpu")


def output_paths(inputs: list[str], out: Path) -> list[Path]:
    """
    One `<stem>.png` per input under `out`, never an input's own path, another output's or any name already in
    `out` (a file, a folder or a link): a taken name gets `-1`, `-2`, ... (`photo.png`, `photo-1.png`).
    Reconstructing `dir/photo.png` into `dir/` writes `dir/photo-1.png` and leaves the original alone.
    """
    taken = {Path(name).resolve() for name in inputs}
    targets = []
    for name in inputs:
        stem, k = Path(name).stem, 0
        target = out / f"{stem}.png"
        while target.resolve() in taken or os.path.lexists(target):
            k += 1
            target = out / f"{stem}-{k}.png"
        taken.add(target.resolve())
        targets.append(target)
    return targets


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """A `CLIError` unless `out` is a folder, or can be made one, that this process may write to: found before any
    work is done, not when the results are saved."""
    existing = out
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == out else f" ({existing} is a file)"
        raise CLIError(f"{flag} {out}: not a folder{where}; give a folder for the outputs")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {out}: {existing} is not writable")


def _reconstruct(args) -> None:
    import torch

    out = Path(args.out)
    check_output_folder(out)
    images = [read_image(name) for name in args.inputs]
    pipe = _load_pipeline(args.model, "reconstruct")
    results = []
    for image in images:  # one at a time: inputs may differ in size; nothing is written before all succeed
        result = pipe(image, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed))
        results.append(result.images[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, target, image in zip(args.inputs, output_paths(args.inputs, out), results):
        with atomic_write(target) as temporary:  # a full disk or Ctrl-C leaves no truncated PNG
            image.save(temporary, format="PNG")
        print(f"{name} -> {target}")


def _generate(args) -> None:
    import torch

    if args.guidance_scale < 1:
        raise CLIError(f"--guidance-scale must be >= 1, got {args.guidance_scale}")
    out = Path(args.out)
    check_output_folder(out)
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
    result = pipe(
        labels,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.steps,
        decoder_num_inference_steps=args.decoder_steps,
        generator=torch.Generator().manual_seed(args.seed),
    )
    out.mkdir(parents=True, exist_ok=True)
    for i, (label, image) in enumerate(zip(labels, result.images)):
        target = out / f"{i:04d}_class{label}.png"
        with atomic_write(target, replace=True) as temporary:  # a link at `target` is replaced, not written through
            image.save(temporary, format="PNG")
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


def check_address(host: str, port: int) -> None:
    """A `CLIError` naming the flag unless a server can listen on `host`:`port`: found before a model is loaded."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise CLIError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise CLIError(
                f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); give another --port"
            ) from None


def _app(args) -> None:
    import importlib.util

    if args.max_megapixels <= 0:
        raise CLIError(f"--max-megapixels must be > 0, got {args.max_megapixels}")
    if args.time_limit <= 0:
        raise CLIError(f"--time-limit must be > 0, got {args.time_limit}")
    check_address(args.host, args.port)
    model, student = resolve_model_folders(args.model, args.student)  # a missing model: says how to train one
    if importlib.util.find_spec("gradio") is None:
        raise CLIError('the web app needs Gradio: pip install -e ".[app]"')
    pipe = _load_pipeline(str(model), "reconstruct")
    student = _load_pipeline(str(student), "reconstruct") if student is not None else None
    launch(
        pipe,
        student,
        host=args.host,
        port=args.port,
        max_megapixels=args.max_megapixels,
        time_limit=args.time_limit,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="diffusers-dito", description="DiTo diffusion autoencoders.")
    verbs = parser.add_subparsers(dest="command", required=True)

    p = verbs.add_parser("reconstruct", help="Encode and decode images.")
    p.add_argument("--model", required=True, help="Saved DiToPipeline (or AutoencoderDiTo) folder.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="Image files.")
    p.add_argument(
        "--out", required=True, help="Output folder; writes <input stem>.png (-1, -2... where a name is taken)."
    )
    p.add_argument("--steps", type=steps_type, default=None, help="ODE steps (default: the model's config).")
    p.add_argument("--seed", type=seed_type, default=0)
    p.set_defaults(func=_reconstruct)

    p = verbs.add_parser("generate", help="Class-conditional generation with a DiToDiTPipeline.")
    p.add_argument("--model", required=True, help="Saved DiToDiTPipeline folder.")
    p.add_argument("--class-labels", nargs="+", required=True, help="Class ids or names.")
    p.add_argument("--guidance-scale", type=finite_float, default=2.0)
    p.add_argument("--steps", type=steps_type, default=50, help="Latent ODE steps.")
    p.add_argument("--decoder-steps", type=steps_type, default=None, help="DiTo decoding steps (default: config).")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--out", required=True, help="Output folder.")
    p.set_defaults(func=_generate)

    p = verbs.add_parser("info", help="Print the config, parameter counts and latent shape.")
    p.add_argument("--model", required=True)
    p.add_argument("--resolution", type=int, default=256, help="Image side for the latent shape.")
    p.set_defaults(func=_info)

    p = verbs.add_parser("app", help="A web app: upload an image, compare its reconstruction (needs the [app] extra).")
    p.add_argument("--model", default="dito-demo", help="Saved DiTo folder, or training/demo.py's --output_dir.")
    p.add_argument("--student", default=None, help="A distilled student (default: a student/ next to the model).")
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: loopback only).")
    p.add_argument("--port", type=_bounded_int(1, 65535, "65535"), default=7860)
    p.add_argument(
        "--max-megapixels", type=finite_float, default=APP_MAX_MEGAPIXELS, help="Refused above (once padded)."
    )
    p.add_argument(
        "--time-limit",
        type=finite_float,
        default=APP_TIME_LIMIT,
        help="Seconds of work one request may take before it is stopped.",
    )
    p.set_defaults(func=_app)

    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # a usage error (printed as one line) or --help: return its code, as errors do
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        args.func(args)
    except (CLIError, ValueError, TypeError, OSError) as err:
        # Our models and pipelines validate their inputs with ValueError/TypeError messages written for users.
        print(f"diffusers-dito {args.command}: error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # nothing half-written is left behind: outputs are written whole or not at all
        print(f"diffusers-dito {args.command}: interrupted", file=sys.stderr)
        return EXIT_CODE_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
