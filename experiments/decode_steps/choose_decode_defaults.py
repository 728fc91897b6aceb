"""Choose the package's decoding defaults from the quality-vs-NFE sweep of `training/evaluate_dito.py`.

The rule: the fewest network evaluations (NFE) whose PSNR is within `--psnr_tolerance` dB of the
reference decode (50-step Euler on the paper's uniform grid, shift 1) and whose SWD is no worse; among points of equal
NFE the higher PSNR wins. The reference always qualifies, so it is the choice when nothing cheaper does.

    python training/evaluate_dito.py --model tiny-dito --data_dir ./val --resolution 32 --output_dir eval \\
        --sweep_steps 1 2 4 8 16 25 50 --sweep_shifts 1 2 3
    python experiments/decode_steps/choose_decode_defaults.py --metrics eval/metrics.json \\
        --json out/decode_defaults.json
"""

import argparse
import json
import math
from pathlib import Path

from diffusers_dito.benchmarking import markdown_table, write_json

Point = tuple[str, float, int]  # (sampler, shift, steps)


def describe(point: Point) -> str:
    r"""
    A sweep point as people write it.

    Examples:
        ```py
        >>> describe(("heun", 3.0, 8))
        'heun, shift 3, 8 steps'

        ```
    """
    sampler, shift, steps = point
    return f"{sampler}, shift {shift:g}, {steps} step{'' if steps == 1 else 's'}"


def point_of(row: dict) -> Point:
    """The (sampler, shift, steps) of one sweep row."""
    return row["sampler"], float(row["shift"]), int(row["steps"])


def find_reference(rows: list[dict], point: Point) -> dict:
    r"""
    The sweep row of the reference `point`.

    Raises:
        `ValueError`: No row has that sampler, shift and number of steps; the message lists the points there are.

    Examples:
        ```py
        >>> rows = [{"sampler": "euler", "shift": 1.0, "steps": 2}, {"sampler": "euler", "shift": 1.0, "steps": 4}]
        >>> find_reference(rows, ("euler", 1.0, 4))["steps"]
        4
        >>> find_reference(rows, ("euler", 1.0, 50))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the sweep has no row for the reference euler, shift 1, 50 steps (it has euler, shift 1: 2, 4 ...

        ```
    """
    sampler, shift, steps = point
    for row in rows:
        row_sampler, row_shift, row_steps = point_of(row)
        if (row_sampler, row_steps) == (sampler, steps) and math.isclose(row_shift, shift, rel_tol=1e-9):
            return row
    curves: dict[tuple[str, float], list[int]] = {}
    for row in rows:
        curves.setdefault(point_of(row)[:2], []).append(int(row["steps"]))
    present = "; ".join(f"{s}, shift {h:g}: {', '.join(map(str, sorted(n)))} steps" for (s, h), n in curves.items())
    raise ValueError(
        f"the sweep has no row for the reference {describe(point)} (it has {present or 'no rows'}); run "
        "training/evaluate_dito.py with that sampler in --samplers, the shift in --sweep_shifts and the steps in "
        "--sweep_steps"
    )


def verdict(row: dict, reference: dict, psnr_tolerance: float) -> str:
    r"""
    `"ok"` when `row` meets the rule against the `reference` row, else which part it fails.

    Examples:
        ```py
        >>> reference = {"psnr": 30.0, "swd": 0.02}
        >>> [verdict(row, reference, 0.3) for row in ({"psnr": 29.8, "swd": 0.02}, {"psnr": 29.5, "swd": 0.01})]
        ['ok', 'PSNR -0.50 dB']
        >>> verdict({"psnr": 31.0, "swd": 0.03}, reference, 0.3)
        'SWD worse'

        ```
    """
    if row.get("psnr") is None:
        return "PSNR missing"
    if row["psnr"] < reference["psnr"] - psnr_tolerance:
        return f"PSNR {row['psnr'] - reference['psnr']:+.2f} dB"
    if row.get("swd") is None:
        return "SWD missing"
    if row["swd"] > reference["swd"]:
        return "SWD worse"
    return "ok"


def choose_default(rows: list[dict], reference: Point, psnr_tolerance: float = 0.3) -> dict:
    r"""
    The sweep row of fewest NFE whose PSNR >= the reference's − `psnr_tolerance` and whose SWD <= the reference's;
    ties on NFE go to the higher PSNR. The reference qualifies itself, so it is chosen when nothing cheaper does.

    Args:
        rows (`list[dict]`): The `"sweep"` of an evaluate_dito metrics.json: `sampler`, `shift`, `steps`, `nfe`,
            `psnr` and `swd` per row.
        reference (`tuple[str, float, int]`): The (sampler, shift, steps) to match, e.g. `("euler", 1.0, 50)`.
        psnr_tolerance (`float`, *optional*, defaults to 0.3): How many dB of PSNR below the reference is allowed.

    Returns:
        `dict`: The chosen row, as given.

    Raises:
        `ValueError`: The reference point is not in `rows`, or it has no PSNR or no SWD.

    Examples:
        ```py
        >>> rows = [
        ...     {"sampler": "euler", "shift": 1.0, "steps": 50, "nfe": 50, "psnr": 30.0, "swd": 0.020},
        ...     {"sampler": "euler", "shift": 1.0, "steps": 4, "nfe": 4, "psnr": 28.0, "swd": 0.030},  # PSNR too low
        ...     {"sampler": "euler", "shift": 3.0, "steps": 8, "nfe": 8, "psnr": 29.9, "swd": 0.025},  # SWD worse
        ...     {"sampler": "heun", "shift": 3.0, "steps": 8, "nfe": 15, "psnr": 29.8, "swd": 0.019},
        ... ]
        >>> chosen = choose_default(rows, ("euler", 1.0, 50), psnr_tolerance=0.3)
        >>> chosen["sampler"], chosen["shift"], chosen["steps"]
        ('heun', 3.0, 8)

        ```
    """
    if psnr_tolerance < 0:
        raise ValueError(f"psnr_tolerance must be >= 0 dB, got {psnr_tolerance}")
    reference_row = find_reference(rows, reference)
    if reference_row.get("psnr") is None:
        raise ValueError(f"the reference {describe(reference)} has no PSNR (expected a finite number in the sweep)")
    if reference_row.get("swd") is None:
        raise ValueError(
            f"the reference {describe(reference)} has no SWD (expected images of one size of at least 16 px: "
            "pass --resolution to training/evaluate_dito.py)"
        )
    qualifying = [row for row in rows if verdict(row, reference_row, psnr_tolerance) == "ok"]
    return min(qualifying, key=lambda row: (row["nfe"], -row["psnr"]))  # the reference is among them


# ------------------------------------------------------------------------------------------------------- script
def non_negative_float(value: str) -> float:
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return number


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", required=True, help="metrics.json written by training/evaluate_dito.py.")
    parser.add_argument("--reference_sampler", default="euler", help="Sampler of the reference decode.")
    parser.add_argument("--reference_steps", type=int, default=50, help="Steps of the reference decode.")
    parser.add_argument("--reference_shift", type=float, default=1.0, help="Scheduler shift of the reference decode.")
    parser.add_argument(
        "--psnr_tolerance", type=non_negative_float, default=0.3, help="dB of PSNR below the reference allowed."
    )
    parser.add_argument("--json", default=None, help="Write {reference, chosen, rows, rule} here as JSON.")
    return parser.parse_args(argv)


def load_sweep(path: str | Path) -> list[dict]:
    """The sweep rows of an evaluate_dito metrics.json. Rows written before the `shift` column get the file's
    `scheduler_shift`, the one shift those sweeps used."""
    try:
        metrics = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} ({err}); expected a metrics.json of training/evaluate_dito.py") from None
    rows = metrics.get("sweep") if isinstance(metrics, dict) else None
    if not rows:
        raise ValueError(
            f"{path} has no sweep rows (expected the 'sweep' of training/evaluate_dito.py, run without --skip_sweep)"
        )
    shift = metrics.get("scheduler_shift", 1.0)
    return [{**row, "shift": float(row.get("shift", shift))} for row in rows]


def main(args) -> dict:
    try:
        rows = load_sweep(args.metrics)
        reference = (args.reference_sampler, args.reference_shift, args.reference_steps)
        chosen = choose_default(rows, reference, args.psnr_tolerance)
    except ValueError as err:
        raise SystemExit(f"choose_decode_defaults.py: error: {err}") from None
    reference_row = find_reference(rows, reference)
    table = []
    for row in sorted(rows, key=lambda r: (r["nfe"], *point_of(r))):
        marks = [name for name, marked in (("reference", row is reference_row), ("chosen", row is chosen)) if marked]
        table.append(
            {
                "sampler": row["sampler"],
                "shift": row["shift"],
                "steps": row["steps"],
                "nfe": row["nfe"],
                "psnr": row.get("psnr"),
                "psnr_vs_reference": None if row.get("psnr") is None else row["psnr"] - reference_row["psnr"],
                "swd": row.get("swd"),
                "hf_energy_ratio": row.get("hf_energy_ratio"),
                "verdict": verdict(row, reference_row, args.psnr_tolerance),
                "mark": ", ".join(marks),
            }
        )
    rule = (
        f"fewest NFE with PSNR >= {reference_row['psnr']:.2f} - {args.psnr_tolerance:g} dB and SWD <= "
        f"{reference_row['swd']:.4g} (the reference {describe(reference)}); ties on NFE: higher PSNR"
    )
    print(markdown_table(table))
    print()
    print(
        f"chosen: {describe(point_of(chosen))}, NFE {chosen['nfe']} (PSNR {chosen['psnr']:.2f} dB, SWD "
        f"{chosen['swd']:.4g}) against {describe(reference)}, NFE {reference_row['nfe']} (PSNR "
        f"{reference_row['psnr']:.2f} dB, SWD {reference_row['swd']:.4g}); rule: {rule}"
    )
    payload = {"reference": reference_row, "chosen": chosen, "rows": table, "rule": rule}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main(parse_args())
