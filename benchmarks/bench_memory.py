"""Peak memory of AutoencoderDiTo encode and decode at several resolutions.

On CUDA it reads `torch.cuda.max_memory_allocated`. On CPU, where PyTorch keeps no such counter, each measurement
runs in a fresh subprocess and reports the growth of its own peak resident set size (Linux's VmHWM) over the peak
after the model is built and warmed up, so one measurement cannot inherit another's peak. glibc raises its mmap
threshold after large frees (up to 32 MiB), after which freed tensors stay in its heap and count towards RSS; the
children therefore run with `MALLOC_MMAP_THRESHOLD_` fixed at `--malloc_mmap_threshold` bytes (1 MiB; 0 keeps
glibc's dynamic default), so that the RSS peak follows the live tensors. Both settings are reported in
docs/benchmarks.md.

    python benchmarks/bench_memory.py --preset dito-tiny --resolutions 256 512 1024 --json out/memory.json
    python benchmarks/bench_memory.py --resolutions 1024 --tile_size 256   # tiled decode vs one 256² decode
"""

import argparse
import json
import os
import resource
import subprocess
import sys

import torch

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo
from diffusers_dito.benchmarking import machine_info, markdown_table, write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dito-tiny", choices=sorted(DITO_PRESETS))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--steps", type=int, default=1, help="Decode steps (peak memory does not grow with them).")
    parser.add_argument(
        "--tile_size", type=int, default=None, help="Also measure tiled decoding with this tile (e.g. 256)."
    )
    parser.add_argument("--tile_overlap", type=int, default=64)
    parser.add_argument(
        "--malloc_mmap_threshold",
        type=int,
        default=2**20,
        help="CPU only: glibc's MALLOC_MMAP_THRESHOLD_ for the measuring subprocesses (0: glibc's dynamic default).",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    parser.add_argument("--_child", nargs=2, metavar=("OP", "RES"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rss_peak_mib() -> float:
    """This process's own peak RSS: Linux's VmHWM, where it exists. (`ru_maxrss` also counts the peak of the process
    that started this one, which survives fork and exec: under a parent with a larger peak, every reading is the
    parent's, and an operation's growth reads 0.)"""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (bytes on macOS)


def measure(args, op: str, resolution: int) -> float:
    """Peak memory (MiB) of one `op` at `resolution` above the warmed-up model's own footprint."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    vae = AutoencoderDiTo.from_config(DITO_PRESETS[args.preset]).to(device).eval()
    f, c = vae.downsample_factor, vae.config.latent_channels
    with torch.no_grad():
        vae.decode(torch.randn(1, c, 1, 1, device=device), num_inference_steps=1)  # warm-up at the smallest size
        x = torch.rand(1, 3, resolution, resolution, device=device) * 2 - 1
        z = torch.randn(1, c, resolution // f, resolution // f, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            base = rss_peak_mib()
        if op == "encode":
            vae.encode(x)
        else:
            if op == "decode_tiled":
                vae.enable_tiling(args.tile_size, args.tile_overlap)
            vae.decode(z, num_inference_steps=args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            return (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return rss_peak_mib() - base


def main(args) -> dict:
    if args._child:
        op, res = args._child
        print(json.dumps({"peak_mib": measure(args, op, int(res))}))
        return {}

    def run(op, resolution):
        if args.device != "cpu":
            return measure(args, op, resolution)
        cmd = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps), "--device", "cpu"]
        if args.tile_size:
            cmd += ["--tile_size", str(args.tile_size), "--tile_overlap", str(args.tile_overlap)]
        env = dict(os.environ)
        if args.malloc_mmap_threshold > 0:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        else:
            env.pop("MALLOC_MMAP_THRESHOLD_", None)
        out = subprocess.run(
            [*cmd, "--_child", op, str(resolution)], capture_output=True, text=True, check=True, env=env
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]

    rows = []
    one_tile = run("decode", args.tile_size) if args.tile_size else None
    for resolution in args.resolutions:
        row = {"resolution": resolution, "encode_peak_mib": run("encode", resolution)}
        row["decode_peak_mib"] = run("decode", resolution)
        if args.tile_size:
            row["decode_tiled_peak_mib"] = run("decode_tiled", resolution)
            row[f"tiled_over_one_{args.tile_size}_decode"] = row["decode_tiled_peak_mib"] / one_tile
        rows.append(row)
    device = torch.device(args.device)
    print(f"\n## bench_memory: {args.preset}, batch 1, {machine_info(device)}\n")
    print(markdown_table(rows))
    result = {"args": {k: v for k, v in vars(args).items() if k != "_child"}, "machine": machine_info(device)}
    result["rows"] = rows
    if one_tile is not None:
        result["one_tile_decode_peak_mib"] = one_tile
        print(f"\none untiled {args.tile_size}² decode: {one_tile:.1f} MiB")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
