"""Tests of training/evaluate_generation.py: a tiny DiToDiTPipeline sampled in-process and on 2 CPU processes."""

import csv
import doctest
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from script_helpers import free_port, load_script, one_thread, reset_accelerate  # noqa: F401
from test_evaluate_dito import subprocess_env, write_images

from conftest import tiny_dito_config
from diffusers_dito import DIT_PRESETS, AutoencoderDiTo, DiToDiTPipeline, DiToDiTTransformer2DModel, DiToPipeline

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "evaluate_generation.py"
RUN_ARGS = [
    "--class_labels", "0", "dog", "--samples_per_class", "2", "--num_inference_steps", "2",
    "--decoder_num_inference_steps", "1", "--batch_size", "3", "--save_samples",
]  # fmt: skip


@pytest.fixture(scope="module")
def evaluate_generation():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny DiToDiTPipeline (10 classes, 32-px samples) with class names, and a DiToPipeline of the same VAE."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vae = AutoencoderDiTo.from_config(tiny_dito_config())
    transformer = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
    id2label = {0: "cat, kitty", 1: "dog"}
    DiToDiTPipeline(transformer, vae, FlowMatchEulerDiscreteScheduler(), id2label).save_pretrained(root / "dit")
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(root / "pipeline")
    return root


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    folder = write_images(tmp_path_factory.mktemp("reference"), [(36, 40)] * 5, seed=1)  # cropped/resized to 32
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.fixture(scope="module")
def run(evaluate_generation, model_dirs, reference_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("generation")
    args = ["--model", str(model_dirs / "dit"), "--reference_dir", str(reference_dir), "--output_dir", str(out)]
    try:
        result = evaluate_generation.main(evaluate_generation.parse_args(args + RUN_ARGS))
    finally:
        reset_accelerate()
    return out, result


def read_samples(out: Path) -> list[dict]:
    with open(out / "samples.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_samples_grid_and_files_hold_samples_per_class(run):
    out, _ = run
    assert PIL.Image.open(out / "samples_grid.png").size == (2 * 32, 2 * 32)  # a row per class
    rows = read_samples(out)
    assert [(r["class_label"], r["class_name"]) for r in rows] == [("0", "cat")] * 2 + [("1", "dog")] * 2
    assert [r["seed"] for r in rows] == ["0", "1", "2", "3"]
    for row in rows:
        assert PIL.Image.open(out / row["file"]).size == (32, 32)


def test_metrics_json_scores_the_samples_against_the_reference_folder(run):
    out, result = run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["swd"] > 0 and {"swd_32", "swd_16"} <= set(metrics)
    assert set(metrics["skipped"]) == {"gfid", "fd_dinov2"}
    assert metrics["num_reference_images"] == 5 and metrics["unreadable_reference_files"] == ["broken.jpg"]
    assert metrics["swd_num_images"] == 4 and metrics["num_samples"] == 4
    assert metrics["class_labels"] == [0, 1] and metrics["guidance_scale"] == 2.0 and metrics["resolution"] == 32
    assert metrics["swd"] == pytest.approx(result["swd"])


def test_without_a_reference_folder_only_the_grid_is_made(evaluate_generation, model_dirs, tmp_path):
    args = ["--model", str(model_dirs / "dit"), "--output_dir", str(tmp_path), "--num_classes_to_sample", "3"]
    args += ["--samples_per_class", "1", "--num_inference_steps", "1", "--decoder_num_inference_steps", "1"]
    try:
        result = evaluate_generation.main(evaluate_generation.parse_args(args))
    finally:
        reset_accelerate()
    assert set(result["skipped"]) == {"swd", "gfid", "fd_dinov2"} and "swd" not in result
    assert len(result["class_labels"]) == 3 and result["class_labels"] == sorted(result["class_labels"])
    assert PIL.Image.open(tmp_path / "samples_grid.png").size == (32, 3 * 32)


def test_class_labels_resolve_from_ids_names_or_a_seeded_draw(evaluate_generation, model_dirs):
    resolve = evaluate_generation.resolve_class_labels
    model = model_dirs / "dit"
    assert resolve(model, ["kitty", "7", "cat"], None) == [0, 7]
    assert resolve(model, None, 4, seed=1) == resolve(model, None, 4, seed=1) != resolve(model, None, 4, seed=2)
    assert resolve(model, None, None) == list(range(10))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--class_labels", "bird"], "unknown class name 'bird'"),
        (["--class_labels", "10"], "out of range"),
        (["--class_labels", "1", "--num_classes_to_sample", "2"], "not allowed with"),
        (["--num_classes_to_sample", "11"], "the model has 10 classes"),
        (["--guidance_scale", "0.5"], "--guidance_scale"),
        (["--reference_dir", "no/such/folder"], "--reference_dir"),
        (["--model", "PIPELINE"], "needs a DiToDiTPipeline"),
    ],
)
def test_bad_arguments_stop_with_a_one_line_error(evaluate_generation, model_dirs, extra, message, capsys):
    extra = [str(model_dirs / "pipeline") if item == "PIPELINE" else item for item in extra]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_generation.parse_args(["--model", str(model_dirs / "dit"), *extra])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines  # no usage block


def test_accelerate_launch_on_two_cpu_processes_shards_the_samples(run, model_dirs, reference_dir, tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(SCRIPT), "--model", str(model_dirs / "dit"), "--reference_dir", str(reference_dir),
        "--output_dir", str(out), *RUN_ARGS,
    ]  # fmt: skip
    result = subprocess.run(command, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    rows = read_samples(out)
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3]  # every sample exactly once
    assert {r["process"] for r in rows} == {"0", "1"}
    assert json.loads((out / "metrics.json").read_text())["num_processes"] == 2
    # sample k is drawn with seed + k wherever it runs: the same images as the one-process run
    for row in rows:
        ours = np.asarray(PIL.Image.open(out / row["file"]), dtype=np.int16)
        single = np.asarray(PIL.Image.open(run[0] / row["file"]), dtype=np.int16)
        assert np.abs(ours - single).max() <= 2


def test_docstring_examples_run(evaluate_generation):
    assert doctest.testmod(evaluate_generation).failed == 0
