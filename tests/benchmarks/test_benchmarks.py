"""Smoke tests: every benchmark runs at a tiny size and writes well-formed JSON. No timing is asserted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *argv: str, tmp_path: Path) -> dict:
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "|---" in result.stdout  # a markdown table was printed
    return json.loads(out.read_text())


def finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_decode(tmp_path):
    result = run(
        "bench_decode.py",
        "--resolution",
        "16",
        "--steps",
        "1",
        "2",
        "--repeats",
        "1",
        "--compare_steps",
        "1",
        tmp_path=tmp_path,
    )
    assert [row["steps"] for row in result["steps"]] == [1, 2]
    assert all(finite_positive(row["overhead_vs_N_unet_forwards"]) for row in result["steps"])
    assert {c["comparison"].split(" ")[0] for c in result["comparisons"]} == {"DiTo", "bf16", "channels_last"}
    kl = result["comparisons"][0]
    assert 0.5 < kl["kl_decoder_params"] / kl["dito_decoder_params"] < 2  # a comparable AutoencoderKL


def test_bench_memory(tmp_path):
    result = run(
        "bench_memory.py", "--resolutions", "16", "32", "--tile_size", "16", "--tile_overlap", "8", tmp_path=tmp_path
    )
    assert [row["resolution"] for row in result["rows"]] == [16, 32]
    assert all(row["decode_tiled_peak_mib"] >= 0 for row in result["rows"])


def test_bench_train(tmp_path):
    result = run(
        "bench_train.py",
        "--steps",
        "1",
        "--short",
        "1",
        "--repeats",
        "1",
        "--batch_size",
        "2",
        "--matmul_size",
        "128",
        tmp_path=tmp_path,
    )
    for key in ("train_images_per_s", "step_over_raw", "achieved_gflops", "matmul_peak_gflops", "flops_per_step"):
        assert finite_positive(result[key]), key


@pytest.mark.parametrize("script", ["reproduce_small_scale.py"])
def test_reproduction_script_runs_tiny(tmp_path, script):
    argv = ["--output_dir", str(tmp_path / "out"), "--num_train_crops", "10", "--num_held_out_crops", "8"]
    argv += ["--steps", "2", "--dit_steps", "2", "--samples_per_class", "4", "--decode_steps", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *argv], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(report["reconstruction"]) == {"dito", "ae", "dito_sync"}
    assert set(report["generation"]) == {"dito", "dito_sync"}
    assert (tmp_path / "out" / "held_out_grid.png").exists()
