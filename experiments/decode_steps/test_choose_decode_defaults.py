import json

import pytest

import choose_decode_defaults as choose

REFERENCE = ("euler", 1.0, 50)


def sweep_row(sampler: str, shift: float, steps: int, psnr: float, swd: float | None) -> dict:
    nfe = steps if sampler == "euler" else 2 * steps - 1
    return {"sampler": sampler, "shift": shift, "steps": steps, "nfe": nfe, "psnr": psnr, "swd": swd}


def test_choose_default_skips_cheaper_points_with_worse_swd_or_too_low_psnr():
    rows = [
        sweep_row("euler", 1.0, 50, psnr=30.0, swd=0.020),
        sweep_row("euler", 1.0, 2, psnr=29.95, swd=0.021),  # cheapest, PSNR fine, but SWD worse
        sweep_row("euler", 1.0, 4, psnr=29.6, swd=0.010),  # SWD better, but 0.4 dB below
        sweep_row("heun", 3.0, 4, psnr=29.71, swd=0.020),  # 7 NFE, SWD equal: no worse
        sweep_row("euler", 3.0, 16, psnr=30.1, swd=0.015),  # better, but dearer
    ]
    assert choose.point_of(choose.choose_default(rows, REFERENCE, psnr_tolerance=0.3)) == ("heun", 3.0, 4)
    # a tolerance of 0.5 dB lets the 4-step Euler in
    assert choose.point_of(choose.choose_default(rows, REFERENCE, psnr_tolerance=0.5)) == ("euler", 1.0, 4)
    # nothing cheaper qualifies: the reference itself
    assert choose.point_of(choose.choose_default(rows[:3], REFERENCE, psnr_tolerance=0.3)) == REFERENCE


def test_choose_default_breaks_ties_on_nfe_by_higher_psnr():
    rows = [
        sweep_row("euler", 1.0, 50, psnr=30.0, swd=0.020),
        sweep_row("euler", 1.0, 8, psnr=29.8, swd=0.019),
        sweep_row("euler", 3.0, 8, psnr=29.9, swd=0.020),
    ]
    for ordered in (rows, rows[::-1]):
        assert choose.point_of(choose.choose_default(ordered, REFERENCE, psnr_tolerance=0.3)) == ("euler", 3.0, 8)


def test_choose_default_needs_the_reference_point_and_its_swd():
    rows = [sweep_row("euler", 1.0, 25, psnr=30.0, swd=0.02), sweep_row("euler", 3.0, 50, psnr=30.0, swd=0.02)]
    expected = r"no row for the reference euler, shift 1, 50 steps \(it has euler, shift 1: 25 steps; euler, shift 3"
    with pytest.raises(ValueError, match=expected):
        choose.choose_default(rows, REFERENCE, psnr_tolerance=0.3)
    with pytest.raises(ValueError, match="has no SWD"):
        choose.choose_default([sweep_row("euler", 1.0, 50, psnr=30.0, swd=None)], REFERENCE, psnr_tolerance=0.3)


def test_choose_decode_defaults_reads_an_evaluate_dito_metrics_json(tmp_path, capsys):
    rows = [
        sweep_row("euler", 1.0, 50, psnr=30.0, swd=0.020),
        sweep_row("euler", 1.0, 4, psnr=28.0, swd=0.040),
        sweep_row("heun", 3.0, 8, psnr=29.9, swd=0.018),
        sweep_row("euler", 3.0, 25, psnr=30.2, swd=0.017),
    ]
    for row in rows:
        row.update(ssim=0.9, hf_energy_ratio=0.95, seconds=1.0)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"psnr": 30.0, "scheduler_shift": 1.0, "sweep": rows}))
    out = tmp_path / "result.json"
    returned = choose.main(choose.parse_args(["--metrics", str(metrics), "--json", str(out)]))
    assert "|---" in capsys.readouterr().out  # a markdown table was printed
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert (result["chosen"]["sampler"], result["chosen"]["shift"], result["chosen"]["steps"]) == ("heun", 3.0, 8)
    assert result["reference"]["steps"] == 50 and "0.3 dB" in result["rule"]
    assert [row["nfe"] for row in result["rows"]] == [4, 15, 25, 50]  # sorted by NFE
    assert [row["mark"] for row in result["rows"]] == ["", "chosen", "", "reference"]
    assert [row["verdict"] for row in result["rows"]] == ["PSNR -2.00 dB", "ok", "ok", "ok"]

    # a reference that the sweep lacks stops with one line saying what was expected
    with pytest.raises(SystemExit, match="no row for the reference heun, shift 1, 50 steps") as exit_info:
        choose.main(choose.parse_args(["--metrics", str(metrics), "--reference_sampler", "heun"]))
    assert "\n" not in str(exit_info.value.code)
    metrics.write_text(json.dumps({"sweep": []}))
    with pytest.raises(SystemExit, match="no sweep rows"):
        choose.main(choose.parse_args(["--metrics", str(metrics)]))
