import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusers_dito.cli import main


@pytest.fixture(scope="module")
def models(cli_folders):
    return cli_folders


def test_reconstruct(models, tmp_path):
    args = ["reconstruct", "--model", str(models / "dito"), str(models / "a.png"), str(models / "gray.jpg")]
    assert main([*args, "--out", str(tmp_path), "--steps", "2", "--seed", "1"]) == 0
    assert Image.open(tmp_path / "a.png").size == (53, 37)
    assert Image.open(tmp_path / "gray.png").size == (16, 16)
    first = np.asarray(Image.open(tmp_path / "a.png"))
    assert main([*args, "--out", str(tmp_path / "again"), "--steps", "2", "--seed", "1"]) == 0
    np.testing.assert_array_equal(first, np.asarray(Image.open(tmp_path / "again" / "a.png")))


def test_reconstruct_from_bare_model_folder(models, tmp_path):
    args = ["reconstruct", "--model", str(models / "bare-vae"), str(models / "a.png"), "--out", str(tmp_path)]
    assert main([*args, "--steps", "1"]) == 0
    assert (tmp_path / "a.png").exists()


def test_generate(models, tmp_path):
    args = ["generate", "--model", str(models / "dit"), "--class-labels", "1", "cat", "--guidance-scale", "2"]
    assert main([*args, "--steps", "2", "--decoder-steps", "1", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000_class1.png", "0001_class3.png"]


def test_info(models, capsys):
    assert main(["info", "--model", str(models / "dito"), "--resolution", "60"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["latent_shape"] == [4, 8, 8]
    assert info["vae_parameters"] == info["encoder_parameters"] + info["decoder_parameters"] > 0
    assert info["vae_config"]["latent_channels"] == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reconstruct", "--model", "{root}/missing", "{root}/a.png", "--out", "{tmp}"], "no such folder"),
        (["reconstruct", "--model", "{root}/dito", "{root}/nope.png", "--out", "{tmp}"], "no such file"),
        (["reconstruct", "--model", "{root}/dito", "{root}/broken.png", "--out", "{tmp}"], "not a readable image"),
        (["reconstruct", "--model", "{root}/dito", "{root}/a.png", "--out", "{tmp}", "--steps", "0"], ">= 1"),
        (["generate", "--model", "{root}/dit", "--class-labels", "10", "--out", "{tmp}"], "out of range"),
        (["generate", "--model", "{root}/dit", "--class-labels", "zebra", "--out", "{tmp}"], "unknown class"),
        (["generate", "--model", "{root}/dito", "--class-labels", "1", "--out", "{tmp}"], "DiToDiTPipeline"),
        (
            ["generate", "--model", "{root}/dit", "--class-labels", "1", "--guidance-scale", "0.5", "--out", "{tmp}"],
            ">= 1",
        ),
        (["info", "--model", "{root}"], "no model_index.json"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(models, tmp_path, capsys, argv, message):
    argv = [a.format(root=models, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert message in lines[0]


def test_console_script_error_has_no_traceback(models, tmp_path):
    argv = ["generate", "--model", str(models / "dit"), "--class-labels", "10", "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_dito.cli", *argv], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "out of range [0, 9]" in lines[0]
