r"""Start-up cost: how long a fresh Python process takes to import the stack, and which packages that time goes to.

Every `diffusers-dito` command, every `accelerate launch` worker and every test that runs a script in a subprocess
pays this once. Each target is a fresh `python -c ...` (or a script with `--help`), started round-robin with the
others `--repeats` times; the table gives the median wall-clock and CPU seconds and the ratio to `import torch`.
`--breakdown` adds `python -X importtime` of one statement, its self time summed by top-level package, which names
the packages that a statement pulls in (diffusers imports peft, and peft transformers, when they are installed).

    python benchmarks/bench_import.py --json out/import.json
    python benchmarks/bench_import.py --targets torch diffusers_dito --breakdown "import diffusers_dito" --repeats 5
"""

import argparse
import functools
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from diffusers_dito.benchmarking import interleaved_medians, machine_info, markdown_table, write_json

ROOT = Path(__file__).resolve().parents[1]
# name -> the command line after the interpreter. A script's `--help` imports everything the script imports.
TARGETS = {
    "python": ["-c", "pass"],
    "torch": ["-c", "import torch"],
    "diffusers": ["-c", "import diffusers"],
    "diffusers AutoencoderKL": ["-c", "from diffusers import AutoencoderKL"],
    "diffusers_dito": ["-c", "import diffusers_dito"],
    "diffusers-dito CLI --help": ["-m", "diffusers_dito.cli", "--help"],
    "train_dito.py --help": [str(ROOT / "training" / "train_dito.py"), "--help"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--repeats", type=int, default=3, help="Fresh processes per target (the median is kept).")
    parser.add_argument(
        "--breakdown",
        default="import diffusers_dito",
        help="A statement whose `-X importtime` self time is summed by top-level package ('' skips it).",
    )
    parser.add_argument("--top", type=int, default=10, help="Packages listed in the breakdown.")
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def start(command: list[str]) -> float:
    """CPU (user + system) seconds of one fresh interpreter running `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, *command], check=True, capture_output=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_breakdown(statement: str, top: int) -> list[dict]:
    """`python -X importtime -c statement`: self time summed by top-level package, largest first."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], check=True, capture_output=True, text=True, cwd=ROOT
    )
    totals: dict[str, int] = {}
    for line in out.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"; the first line is the header
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        package = fields[2].strip().split(".")[0]
        totals[package] = totals.get(package, 0) + int(fields[0])
    everything = sum(totals.values()) or 1
    rows = [{"package": p, "self_s": us / 1e6, "fraction": us / everything} for p, us in totals.items()]
    rows.sort(key=lambda row: -row["self_s"])
    rest = rows[top:]
    rows = rows[:top]
    if rest:
        rows.append({"package": f"({len(rest)} others)", "self_s": sum(r["self_s"] for r in rest),
                     "fraction": sum(r["fraction"] for r in rest)})  # fmt: skip
    return rows


def main(args) -> dict:
    device = torch.device("cpu")
    cpu: dict[str, list[float]] = {name: [] for name in args.targets}

    def record(name: str) -> None:
        cpu[name].append(start(TARGETS[name]))

    starts = {name: functools.partial(record, name) for name in args.targets}
    # Round-robin wall-clock medians; the one warm-up start each writes the .pyc files and warms the page cache.
    walls = interleaved_medians(starts, device, args.repeats, warmup=1)
    base_name = "torch" if "torch" in walls else args.targets[0]
    rows = []
    for name, wall in walls.items():
        rows.append({"target": name, "wall_s": wall, "cpu_s": statistics.median(cpu[name][1:]),  # past the warm-up
                     f"wall_vs_{base_name}": wall / walls[base_name]})  # fmt: skip
    print(f"\n## bench_import: fresh interpreters, median of {args.repeats}, {machine_info(device)}\n")
    print(markdown_table(rows))
    result = {"args": vars(args), "machine": machine_info(device), "rows": rows}
    if args.breakdown:
        breakdown = import_breakdown(args.breakdown, args.top)
        print(f"\n`python -X importtime -c {args.breakdown!r}`, self time by top-level package:\n")
        print(markdown_table(breakdown))
        result["breakdown"] = {"statement": args.breakdown, "rows": breakdown}
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(parse_args())
