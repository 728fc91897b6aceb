import pytest

from diffusers_dito.benchmarking import run_script


def test_run_script_runs_a_script_in_a_fresh_process_with_its_arguments_and_threads(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import os, sys\nsys.exit(0 if os.environ['OMP_NUM_THREADS'] == '3' and sys.argv[1:] == ['a'] else 1)"
    )
    assert run_script(script, ["a"], threads=3) > 0
    with pytest.raises(RuntimeError, match=r"script.py failed \(exit code 1\)"):
        run_script(script, ["b"], threads=3)
