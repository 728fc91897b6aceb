#!/usr/bin/env python
# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
r"""Convert a `DiToPipeline` (or `AutoencoderDiTo`) folder into a checkpoint of the official DiTo code.

The checkpoint has the official trainer's layout, `{"model": {"name": "dito", "args": spec, "sd": state_dict}, ...}`,
so the official code's `models.make(ckpt["model"])` followed by `load_state_dict(ckpt["model"]["sd"])` rebuilds the
model, and the paper's own evaluation scripts can score a model trained here. The encoder's quant conv is written as
an identity (docs/conversion.md).

    python scripts/convert_diffusers_to_dito.py --model_path dito-b --output_path dito-b/ckpt-converted.pth
"""

import os
import sys
import tempfile
from pathlib import Path

import diffusers
import torch

from diffusers_dito import AutoencoderDiTo
from diffusers_dito.cli import OneLineArgumentParser
from diffusers_dito.conversion import ConversionError, diffusers_to_official, spec_from_config
from diffusers_dito.pipelines.loading import load_component


def parse_args(argv: list[str] | None = None):
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model_path", required=True, help="A DiToPipeline folder (its vae/) or AutoencoderDiTo folder."
    )
    parser.add_argument("--output_path", required=True, help="The .pth file to write (must not exist).")
    parser.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="Image size of the official model (its layer norm has a fixed shape).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prog = Path(__file__).name
    diffusers.utils.logging.disable_progress_bar()
    output = Path(args.output_path)
    try:
        if output.exists():
            raise ConversionError(f"--output_path {output} exists: nothing is overwritten")
        if (
            not Path(args.model_path, "vae", "config.json").is_file()
            and not Path(args.model_path, "config.json").is_file()
        ):
            raise ConversionError(f"--model_path {args.model_path} is not a DiToPipeline or AutoencoderDiTo folder")
        vae = load_component(AutoencoderDiTo, args.model_path, "vae")
        spec = spec_from_config(dict(vae.config), args.resolution)
        state_dict = diffusers_to_official(vae.state_dict(), dict(vae.config))
        checkpoint = {"model": {**spec, "sd": state_dict}, "config": {"model": spec}, "iter": 0}
        output.parent.mkdir(parents=True, exist_ok=True)
        # Written beside its destination and renamed into place: a failure leaves no partial file.
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}-", dir=output.parent)
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.rename(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except ConversionError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(
        f"Wrote {output}: {len(state_dict)} tensors, official spec {spec['args']['renderer']['args']['net']['args']}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
