#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Convert a checkpoint of the official DiTo code (github.com/yinboc/dito, `ckpt-*.pth`) into a `DiToPipeline` folder.

The config comes from the model spec stored in the checkpoint (`ckpt["model"]`); the weights are mapped key by key
(`diffusers_dito.conversion`, docs/conversion.md). The folder loads with `DiToPipeline.from_pretrained` and its `vae/`
as `vae=` in stock diffusers pipelines.

    python scripts/convert_dito_to_diffusers.py --checkpoint_path ckpt-last.pth --output_path dito-b --use_ema --verify

The reverse direction is `scripts/convert_diffusers_to_dito.py`.
"""

import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import diffusers
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import AutoencoderDiTo, DiToPipeline
from diffusers_dito.cli import OneLineArgumentParser, steps_type
from diffusers_dito.conversion import (
    ConversionError,
    config_from_spec,
    load_official_checkpoint,
    official_to_diffusers,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None):
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_path", required=True, help="An official ckpt-*.pth.")
    parser.add_argument("--output_path", required=True, help="The DiToPipeline folder to write (must not exist).")
    parser.add_argument("--use_ema", action="store_true", help="Take encoder_ema.*/renderer_ema.* where present.")
    parser.add_argument(
        "--num_inference_steps",
        type=steps_type,
        default=None,
        help="The decoding steps saved in the config (default: the checkpoint's render_n_steps).",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="The saved weights' dtype.")
    parser.add_argument("--dry_run", action="store_true", help="Convert and check; write nothing.")
    parser.add_argument("--verify", action="store_true", help="Reload the written folder and compare every tensor.")
    return parser.parse_args(argv)


def convert(args) -> tuple[AutoencoderDiTo, list[str]]:
    """The converted model and the checkpoint entries left over as training-only."""
    checkpoint = load_official_checkpoint(args.checkpoint_path)
    spec = checkpoint["model"]
    config = config_from_spec(spec, args.num_inference_steps)
    state_dict, leftover = official_to_diffusers(spec["sd"], config, use_ema=args.use_ema)
    vae = AutoencoderDiTo.from_config(config)
    vae.load_state_dict(state_dict, strict=True)
    if args.dtype != "float32":
        vae = vae.to(DTYPES[args.dtype])
    return vae.eval(), leftover


def verify(folder: Path, vae: AutoencoderDiTo) -> int:
    """Reload `folder` and require every tensor and config value to equal the converted model's; returns the count."""
    pipeline = DiToPipeline.from_pretrained(str(folder))
    loaded = pipeline.vae
    expected, got = vae.state_dict(), loaded.state_dict()
    different = [key for key in expected if key not in got or not torch.equal(expected[key], got[key])]
    config_differs = [k for k, v in vae.config.items() if not k.startswith("_") and loaded.config.get(k) != v]
    if different or config_differs:
        raise ConversionError(f"the written folder differs from the conversion: {(different + config_differs)[:3]}")
    return len(expected)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prog = Path(__file__).name
    diffusers.utils.logging.disable_progress_bar()
    output = Path(args.output_path)
    try:
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise ConversionError(f"--output_path {output} exists and is not an empty folder: nothing is overwritten")
        vae, leftover = convert(args)
        if leftover:
            groups = Counter(key.split(".")[0] for key in leftover)  # e.g. renderer_ema, lpips_loss, zdm_net
            listed = ", ".join(f"{group}.* ({count})" for group, count in sorted(groups.items()))
            print(f"Training-only entries not converted: {listed}")
        output.parent.mkdir(parents=True, exist_ok=True)
        # Written beside its destination and moved into place whole: a failure leaves no partial folder.
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
        try:
            pipeline = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
            pipeline.training_data = f"converted from the official DiTo checkpoint {Path(args.checkpoint_path).name}"
            pipeline.save_pretrained(tmp)
            if args.verify:
                print(f"Verified: {verify(tmp, vae)} tensors and the config reload exactly.")
            if not args.dry_run:
                if output.exists():
                    output.rmdir()  # empty, checked above
                os.rename(tmp, output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except ConversionError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    parameters = sum(p.numel() for p in vae.decoder_unet.parameters())
    what = "Checked (--dry_run, nothing written)" if args.dry_run else f"Wrote {output}"
    print(f"{what}: AutoencoderDiTo with a {parameters / 1e6:.3f}M-parameter decoder, "
          f"{vae.config.num_inference_steps} decoding steps.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
