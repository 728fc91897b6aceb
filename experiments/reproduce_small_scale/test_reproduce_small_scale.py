import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "reproduce_small_scale.py"


def test_reproduction_script_runs_tiny_with_seeds_and_verdicts(tmp_path):
    argv = ["--output_dir", str(tmp_path / "out"), "--num_train_crops", "24", "--num_held_out_crops", "8"]
    argv += ["--steps", "2", "--batch_size", "4", "--dit_steps", "2", "--samples_per_class", "2"]
    argv += ["--decode_steps", "1", "--seeds", "0", "1", "--sweep_learning_rates", "1e-3", "2e-3", "--workers", "2"]
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    names = {"sweep", "dito", "ae", "dito_p0", "dito_small", "dito_large"}
    assert {r["name"] for r in report["runs"]} == names
    assert {r["seed"] for r in report["runs"] if r["name"] == "ae"} == {0, 1}
    assert set(report["verdicts"]) == {"a", "b", "c"}
    assert all(v in ("held", "did not hold", "inconclusive") for v in report["verdicts"].values())
    assert report["learning_rate"] in (1e-3, 2e-3)
    for figure in ("claim_a.png", "claim_a_examples.png", "claim_b.png", "claim_c.png", "claim_c_samples.png"):
        assert (tmp_path / "out" / figure).exists(), figure
    assert "±" in (tmp_path / "out" / "report.md").read_text()
