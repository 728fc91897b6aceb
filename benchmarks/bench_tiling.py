"""Tiled against untiled decoding: agreement, seams and cost, on real photo crops.

For each image size it encodes held-out crops of the scikit-image photos once, decodes the latents untiled and tiled
(with per-tile GroupNorm statistics and with image-wide ones, `share_group_norm_statistics`) from the same noise, and
reports PSNR(tiled, untiled), the tile-border gradient ratio (`tile_border_gradient_ratio`, 1 = no seams) of each
decode, and the time of each tiled decode over the untiled one (interleaved medians).

    python training/demo.py --output_dir dito-demo --max_train_steps 3000 --num_train_crops 2048
    python benchmarks/bench_tiling.py --model dito-demo/pipeline --sizes 64x64 96x64 --tile_size 32 --tile_overlap 16
"""

import argparse
import time

import numpy as np
import torch

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo
from diffusers_dito.benchmarking import machine_info, markdown_table, write_json
from diffusers_dito.metrics import psnr
from diffusers_dito.models.tiling import tile_border_gradient_ratio
from diffusers_dito.pipelines.loading import load_component
from diffusers_dito.sample_data import photo_crops


def size_type(value: str) -> tuple[int, int]:
    height, _, width = value.partition("x")
    return int(height), int(width or height)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="A trained DiToPipeline or AutoencoderDiTo folder (default: untrained tiny)."
    )
    parser.add_argument("--sizes", type=size_type, nargs="+", default=[(64, 64), (96, 64)], help="HxW sizes.")
    parser.add_argument("--tile_size", type=int, default=32)
    parser.add_argument("--tile_overlap", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="Euler steps of every decode.")
    parser.add_argument("--num_images", type=int, default=4, help="Held-out crops per size.")
    parser.add_argument("--repeats", type=int, default=1, help="Timed repeats of each decode (after one warm-up).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def load_vae(path: str | None) -> AutoencoderDiTo:
    if path is None:
        torch.manual_seed(0)
        return AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"]).eval()
    return load_component(AutoencoderDiTo, path, "vae").eval()


MODES = ("untiled", "tiled, per-tile GroupNorm", "tiled, shared GroupNorm")


def decode(vae: AutoencoderDiTo, z: torch.Tensor, mode: str, args) -> torch.Tensor:
    """One decode of `z` in `mode` (one of `MODES`), image i from noise seeded with `args.seed + i`."""
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(z))]
    if mode == "untiled":
        vae.disable_tiling()
    else:
        vae.enable_tiling(args.tile_size, args.tile_overlap, share_group_norm_statistics=mode == MODES[2])
    with torch.no_grad():
        return vae.decode(z, num_inference_steps=args.steps, generator=generators).sample


def main(args) -> dict:
    vae = load_vae(args.model)
    tile, overlap = args.tile_size, args.tile_overlap
    rows = []
    for height, width in args.sizes:
        images = photo_crops(args.num_images, height, width, seed=args.seed)  # held-out photos, [-1, 1]
        with torch.no_grad():
            z = vae.encode(images).latents
        outputs = {mode: decode(vae, z, mode, args) for mode in MODES}  # also the warm-up
        seconds = {mode: [] for mode in MODES}
        for _ in range(args.repeats):  # interleaved, so that load drift hits every mode alike
            for mode in MODES:
                start = time.perf_counter()
                decode(vae, z, mode, args)
                seconds[mode].append(time.perf_counter() - start)
        vae.disable_tiling()
        untiled = outputs["untiled"]
        for mode in MODES:
            rows.append(
                {
                    "size": f"{height}x{width}",
                    "decode": mode,
                    "psnr_vs_untiled_db": psnr(outputs[mode], untiled) if mode != "untiled" else None,
                    "psnr_vs_original_db": psnr(outputs[mode], images),
                    "border_gradient_ratio": tile_border_gradient_ratio(outputs[mode], tile, overlap),
                    "time_over_untiled": float(np.median(seconds[mode]) / np.median(seconds["untiled"])),
                }
            )
    device = torch.device("cpu")
    print(f"\n## bench_tiling: tiles {tile}, overlap {overlap}, {args.steps} Euler steps, {machine_info(device)}\n")
    print(markdown_table(rows))
    result = {"args": vars(args) | {"sizes": [list(s) for s in args.sizes]}, "machine": machine_info(device)}
    result["rows"] = rows
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
