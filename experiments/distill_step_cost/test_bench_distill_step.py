import json
import math

import pytest

import bench_distill_step


def test_bench_distill_step_times_every_recipe_against_the_plain_step(tmp_path, tiny_teacher):
    argv = ["--teacher", str(tiny_teacher[1]), "--resolution", "16", "--batch_size", "2", "--repeats", "1"]
    args = bench_distill_step.parse_args([*argv, "--warmup", "0", "--json", str(tmp_path / "out.json")])
    result = bench_distill_step.main(args)
    assert [row["recipe"] for row in result["rows"]] == list(bench_distill_step.RECIPES)
    assert result["rows"][0]["time_vs_plain"] == 1.0
    assert all(math.isfinite(row["step_s"]) and row["step_s"] > 0 for row in result["rows"])
    assert all(math.isfinite(row["time_vs_plain"]) and row["time_vs_plain"] > 0 for row in result["rows"])
    assert json.loads((tmp_path / "out.json").read_text())["rows"] == result["rows"]
    with pytest.raises(SystemExit) as error:  # argparse's usage error: one line, exit code 2
        bench_distill_step.parse_args([*argv, "--recipes", "data", "plain"])
    assert error.value.code == 2
