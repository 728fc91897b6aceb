"""Tests of training/evaluate_dito.py: a tiny DiTo on a folder of 32-px images, in-process and on 2 CPU processes."""

import csv
import doctest
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from script_helpers import load_script, one_thread, reset_accelerate  # noqa: F401

from conftest import tiny_dito_config
from diffusers_dito import DIT_PRESETS, AutoencoderDiTo, DiToDiTPipeline, DiToDiTTransformer2DModel, DiToPipeline, hub

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "evaluate_dito.py"
RUN_ARGS = ["--steps", "2", "--sweep_steps", "1", "2", "--samplers", "euler", "heun", "--batch_size", "3"]


def subprocess_env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",  # CPU processes in a gloo group, also on a machine with one GPU
        "HF_HOME": str(tmp_path / "hf_home"),  # ignore any accelerate config of this machine
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def evaluate_dito():
    return load_script(SCRIPT)


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (height, width) in enumerate(sizes):
        PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = write_images(tmp_path_factory.mktemp("images"), [(32, 32)] * 4)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # skipped and counted
    (folder / "notes.txt").write_text("not an image file: ignored")
    return folder


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """The same tiny VAE saved as a DiToPipeline, a DiToDiTPipeline and a bare AutoencoderDiTo."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vae = AutoencoderDiTo.from_config(tiny_dito_config())
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(root / "pipeline")
    transformer = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
    DiToDiTPipeline(transformer, vae, FlowMatchEulerDiscreteScheduler()).save_pretrained(root / "dit_pipeline")
    vae.save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="module")
def run(evaluate_dito, image_dir, model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    args = ["--model", str(model_dirs / "pipeline"), "--data_dir", str(image_dir), "--output_dir", str(out)]
    try:
        result = evaluate_dito.main(evaluate_dito.parse_args(args + RUN_ARGS))
    finally:
        reset_accelerate()
    return out, result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_json_has_the_metrics_the_skipped_ones_and_the_unreadable_file(run):
    out, result = run
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"psnr", "ssim", "swd", "swd_32", "swd_16", "hf_energy_ratio"} <= set(metrics)
    assert set(metrics["skipped"]) == {"lpips", "rfid", "fd_dinov2"}
    assert all("=" in reason for reason in metrics["skipped"].values())  # says which argument to pass
    assert metrics["num_images"] == 4 and metrics["unreadable_files"] == ["corrupt.png"]
    assert metrics["steps"] == 2 and metrics["nfe"] == 2 and metrics["image_size"] == [32, 32]
    assert metrics["psnr"] == pytest.approx(result["psnr"])


def test_per_image_csv_has_one_row_per_readable_image(run):
    out, result = run
    rows = read_csv(out / "per_image.csv")
    assert [row["file"] for row in rows] == ["0.png", "1.png", "2.png", "3.png"]
    assert [row["index"] for row in rows] == ["0", "1", "2", "3"]
    assert all(row["width"] == row["height"] == "32" for row in rows)
    # compute_metrics averages per-image PSNR, so the CSV's mean is the JSON's value
    assert np.mean([float(row["psnr"]) for row in rows]) == pytest.approx(result["psnr"], rel=1e-5)


def test_sweep_records_nfe_per_point_and_heun_costs_2n_minus_1(run):
    out, result = run
    table = [(row["sampler"], row["steps"], row["nfe"]) for row in result["sweep"]]
    assert table == [("euler", 1, 1), ("euler", 2, 2), ("heun", 1, 1), ("heun", 2, 3)]
    assert all(row["swd"] > 0 and row["psnr"] is not None for row in result["sweep"])
    # without --sweep_shifts every point is on the pipeline's own grid (a default FlowMatchEuler: shift 1)
    assert all(row["shift"] == 1.0 == result["scheduler_shift"] for row in result["sweep"])
    assert all(row["hf_energy_ratio"] > 0 for row in result["sweep"])
    rows = read_csv(out / "sweep.csv")
    assert [(r["sampler"], int(r["steps"]), int(r["nfe"])) for r in rows] == table
    assert {"shift", "hf_energy_ratio"} <= set(rows[0]) and {r["shift"] for r in rows} == {"1.0"}
    assert json.loads((out / "metrics.json").read_text())["sweep"][0]["hf_energy_ratio"] > 0
    # the main reconstruction (euler, 2 steps) is reused for that sweep point: the same noise, the same images
    assert result["sweep"][1]["psnr"] == pytest.approx(result["psnr"], rel=1e-5)
    with PIL.Image.open(out / "sweep.png") as plot:
        assert plot.width > 300 and plot.height > 200


def test_sweep_shifts_add_a_curve_per_grid_and_the_grid_changes_the_decode(
    evaluate_dito, image_dir, model_dirs, tmp_path
):
    out = tmp_path / "out"
    args = ["--model", str(model_dirs / "pipeline"), "--data_dir", str(image_dir), "--output_dir", str(out)]
    try:
        result = evaluate_dito.main(evaluate_dito.parse_args(args + RUN_ARGS + ["--sweep_shifts", "3", "1", "3"]))
    finally:
        reset_accelerate()
    points = [(row["sampler"], row["shift"], row["steps"], row["nfe"]) for row in result["sweep"]]
    assert points == [
        ("euler", 1.0, 1, 1),
        ("euler", 1.0, 2, 2),
        ("euler", 3.0, 1, 1),
        ("euler", 3.0, 2, 2),
        ("heun", 1.0, 1, 1),
        ("heun", 1.0, 2, 3),
        ("heun", 3.0, 1, 1),
        ("heun", 3.0, 2, 3),
    ]
    rows = {(row["sampler"], row["shift"], row["steps"]): row for row in result["sweep"]}
    for sampler in ("euler", "heun"):
        # one step is σ = 1 -> 0 on every grid: the same noise gives the same images
        assert rows[sampler, 3.0, 1]["psnr"] == pytest.approx(rows[sampler, 1.0, 1]["psnr"])
        # with two, shift 3 moves the middle σ from 0.5 to 0.75: another decode
        assert rows[sampler, 3.0, 2]["psnr"] != pytest.approx(rows[sampler, 1.0, 2]["psnr"], abs=1e-6)
        assert rows[sampler, 3.0, 2]["hf_energy_ratio"] != pytest.approx(rows[sampler, 1.0, 2]["hf_energy_ratio"])
    # the main reconstruction (euler, the pipeline's shift 1, 2 steps) is reused for its sweep point only
    assert rows["euler", 1.0, 2]["psnr"] == pytest.approx(result["psnr"], rel=1e-5)
    assert [(r["sampler"], float(r["shift"]), int(r["steps"])) for r in read_csv(out / "sweep.csv")] == [
        point[:3] for point in points
    ]
    assert (out / "sweep.png").exists()


def test_grid_rows_are_original_reconstruction_and_error(run, image_dir):
    out, _ = run
    grid = np.asarray(PIL.Image.open(out / "reconstructions.png"))
    header, factor = 26, 3  # a row of column labels; 32-px images enlarged 3x to >= 96 px (--grid_cell_size)
    assert grid.shape == (header + 4 * 32 * factor, 3 * 32 * factor, 3)
    grid = grid[header::factor, ::factor]  # one pixel per image pixel again (nearest-neighbour enlargement)
    original = np.asarray(PIL.Image.open(image_dir / "1.png"))
    row = grid[32:64]
    np.testing.assert_array_equal(row[:, :32], original)
    reconstruction = row[:, 32:64].astype(np.int16)
    error = np.clip(np.round(np.abs(reconstruction - original).mean(axis=2) * 4.0), 0, 255)  # --error_gain 4
    np.testing.assert_array_equal(row[:, 64:, 0], error)


def test_every_model_folder_kind_gives_the_same_vae(evaluate_dito, model_dirs):
    kinds = ("pipeline", "dit_pipeline", "vae")
    pipes = [evaluate_dito.load_reconstruction_pipeline(model_dirs / kind) for kind in kinds]
    assert all(isinstance(pipe, DiToPipeline) for pipe in pipes)
    weights = [pipe.vae.decoder_unet.conv_in.weight for pipe in pipes]
    assert all(torch.equal(weights[0], w) for w in weights[1:])


def test_images_of_different_sizes_keep_per_image_scores_and_skip_set_metrics(evaluate_dito, model_dirs, tmp_path):
    images = write_images(tmp_path / "mixed", [(32, 32), (37, 45)])
    args = ["--model", str(model_dirs / "vae"), "--data_dir", str(images), "--output_dir", str(tmp_path / "out")]
    try:
        result = evaluate_dito.main(evaluate_dito.parse_args(args + ["--steps", "1", "--skip_sweep"]))
    finally:
        reset_accelerate()
    assert "--resolution" in result["skipped"]["swd"] and result["image_size"] is None
    assert result["psnr"] is not None and result["sweep"] == []
    assert [row["width"] for row in read_csv(tmp_path / "out" / "per_image.csv")] == ["32", "45"]
    # cells as large as the largest image, both enlarged 3x (to >= 96 px), under a 26-px row of column labels
    assert PIL.Image.open(tmp_path / "out" / "reconstructions.png").size == (3 * 45 * 3, 26 + 2 * 37 * 3)
    assert not (tmp_path / "out" / "sweep.png").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--model": "no/such/folder"}, "not a folder"),
        ({"--data_dir": "no/such/folder"}, "--data_dir"),
        ({"--sweep_steps": "0"}, "expected an integer >= 1"),
        ({"--sweep_shifts": "0"}, "expected a number > 0"),
        ({"--sweep_shifts": "nan"}, "expected a number > 0"),
        ({"--samplers": "dpm"}, "invalid choice"),
        ({"--error_gain": "0"}, "--error_gain"),
    ],
)
def test_bad_arguments_stop_with_a_one_line_error(evaluate_dito, image_dir, model_dirs, change, message, capsys):
    arguments = {"--model": str(model_dirs / "vae"), "--data_dir": str(image_dir)} | change
    with pytest.raises(SystemExit) as exit_info:
        evaluate_dito.parse_args([item for pair in arguments.items() for item in pair])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines  # no usage block


def test_a_model_folder_of_another_kind_and_an_empty_data_dir_are_refused(evaluate_dito, image_dir, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(SystemExit):
        evaluate_dito.parse_args(["--model", str(tmp_path / "other"), "--data_dir", str(image_dir)])
    assert "holds a AutoencoderKL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_dito.parse_args(["--model", str(tmp_path / "other"), "--data_dir", str(tmp_path / "other")])


def test_a_folder_without_a_readable_image_stops_with_a_message(evaluate_dito, model_dirs, tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG broken")
    args = ["--model", str(model_dirs / "vae"), "--data_dir", str(tmp_path / "images"), "--skip_sweep"]
    try:
        with pytest.raises(SystemExit, match="none of the 1 image files"):
            evaluate_dito.main(evaluate_dito.parse_args([*args, "--output_dir", str(tmp_path / "out")]))
    finally:
        reset_accelerate()


def test_num_processes_relaunches_only_outside_a_launcher(evaluate_dito, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append((command, env)) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert evaluate_dito.relaunch_with_accelerate(1, "script.py", ["--x"]) is None  # one process: run here
    assert evaluate_dito.relaunch_with_accelerate(2, "script.py", ["--x"]) == 0
    ((command, env),) = calls
    assert command[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"] and command[-2:] == ["script.py", "--x"]
    assert command[command.index("--num_processes") + 1] == "2"
    if not torch.cuda.is_available():
        assert env["ACCELERATE_USE_CPU"] == "1"  # `--cpu` would silently start one process
    monkeypatch.setenv("WORLD_SIZE", "2")  # already launched: do the work
    assert evaluate_dito.relaunch_with_accelerate(2, "script.py", []) is None
    assert evaluate_dito.check_num_processes(3) == "--num_processes 3, but this process was launched as one of 2"


def test_two_cpu_processes_share_the_images_and_match_one_process(evaluate_dito, run, image_dir, model_dirs, tmp_path):
    out = tmp_path / "out"
    args = ["--model", str(model_dirs / "pipeline"), "--data_dir", str(image_dir), "--output_dir", str(out)]
    launched = []  # the command `--num_processes 2` re-launches this script with, run for real below
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        monkeypatch.setattr(subprocess, "call", lambda command, env: launched.append(command) or 0)
        evaluate_dito.relaunch_with_accelerate(2, str(SCRIPT), [*args, *RUN_ARGS, "--num_processes", "2"])
    result = subprocess.run(launched[0], env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["num_images"] == 4
    rows = read_csv(out / "per_image.csv")
    assert sorted(int(row["index"]) for row in rows) == [0, 1, 2, 3]  # every image exactly once
    assert {row["process"] for row in rows} == {"0", "1"}  # both processes did some
    # image i is decoded from noise seed + i on whichever process: the scores match the one-process run
    single = read_csv(run[0] / "per_image.csv")
    for row, reference in zip(rows, single):
        assert float(row["psnr"]) == pytest.approx(float(reference["psnr"]), abs=0.05)
    assert [r["nfe"] for r in metrics["sweep"]] == [r["nfe"] for r in run[1]["sweep"]]
    assert metrics["swd"] == pytest.approx(run[1]["swd"], rel=0.05)


def evaluate(evaluate_dito, args: list[str]) -> dict:
    try:
        return evaluate_dito.main(evaluate_dito.parse_args([*args, "--steps", "1", "--skip_sweep"]))
    finally:
        reset_accelerate()


METRIC_SPECS = (".2f", ".4f", ".4f", ".3f")  # the card's PSNR, SSIM, SWD and high-frequency ratio


def card_rows(folder: Path) -> list[str]:
    return [line for line in (folder / "README.md").read_text().splitlines() if line.startswith("| `")]


def test_metrics_written_inside_the_model_folder_go_into_its_card(evaluate_dito, run, image_dir, model_dirs, tmp_path):
    assert card_rows(model_dirs / "pipeline") == []  # `run` wrote its metrics.json outside the folder, without a flag
    folder = Path(shutil.copytree(model_dirs / "pipeline", tmp_path / "pipeline"))
    result = evaluate(
        evaluate_dito, ["--model", str(folder), "--data_dir", str(image_dir), "--output_dir", str(folder / "eval")]
    )
    values = [f"{result[name]:{spec}}" for name, spec in zip(("psnr", "ssim", "swd", "hf_energy_ratio"), METRIC_SPECS)]
    assert card_rows(folder) == [f"| `{image_dir.name}` (4 images) | 1 euler | {' | '.join(values)} |"]


@pytest.fixture
def fake_hub(monkeypatch):
    """The Hub calls of `diffusers_dito.hub`, recorded with the folder as uploaded; online as far as they can tell."""
    calls = []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # for the checks in parse_args
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, token=None: {"name": "tester"})

    def upload_folder(*, repo_id, folder_path, token, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        calls.append({"repo_id": repo_id, "token": token, "files": files, "card": card_rows(Path(folder_path))})

    monkeypatch.setattr(hub, "create_repo", lambda repo_id, **kwargs: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(hub, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_writes_the_card_then_uploads_the_model_folder(
    evaluate_dito, image_dir, model_dirs, fake_hub, tmp_path
):
    folder = Path(shutil.copytree(model_dirs / "vae", tmp_path / "vae"))  # a bare model: it has no card yet
    args = ["--model", str(folder), "--data_dir", str(image_dir), "--output_dir", str(tmp_path / "out")]
    evaluate(evaluate_dito, [*args, "--push_to_hub", "--hub_model_id", "org/dito-vae", "--hub_token", "secret"])
    (upload,) = fake_hub
    assert upload["repo_id"] == "org/dito-vae" and upload["token"] == "secret"
    uploaded = set(upload["files"])
    assert {"README.md", "config.json", "autoencoder_dito.py", "diffusion_pytorch_model.safetensors"} <= uploaded
    assert upload["card"] == card_rows(folder) and len(upload["card"]) == 1


def test_a_failed_push_stops_with_one_line_after_the_card_is_written(
    evaluate_dito, image_dir, model_dirs, tmp_path, monkeypatch
):
    folder = Path(shutil.copytree(model_dirs / "vae", tmp_path / "vae"))
    args = ["--model", str(folder), "--data_dir", str(image_dir), "--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, token=None: {"name": "tester"})
    args = evaluate_dito.parse_args([*args, "--push_to_hub", "--hub_token", "secret", "--steps", "1", "--skip_sweep"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the network goes away meanwhile
    try:
        with pytest.raises(SystemExit, match="could not push .* offline mode is enabled"):
            evaluate_dito.main(args)
    finally:
        reset_accelerate()
    assert len(card_rows(folder)) == 1 and (tmp_path / "out" / "metrics.json").exists()


def test_push_to_hub_offline_stops_before_evaluating_with_one_line(
    evaluate_dito, image_dir, model_dirs, tmp_path, monkeypatch, capsys
):
    # In this process: the check is in parse_args, whose one-line errors (diffusers_dito.cli.OneLineArgumentParser)
    # test_run_safety.py shows as the whole stderr of a real process.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = ["--model", str(model_dirs / "vae"), "--data_dir", str(image_dir), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_dito.parse_args([*argv, "--push_to_hub"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--push_to_hub needs the network, but HF_HUB_OFFLINE is set" in lines[0], lines
    assert not (tmp_path / "out").exists()


class TokenRefusingHub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Invalid credentials in Authorization header"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub(monkeypatch):
    """A Hub endpoint on 127.0.0.1 that refuses every token; online as far as huggingface_hub can tell."""
    server = http.server.HTTPServer(("127.0.0.1", 0), TokenRefusingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "token, message",
    [
        (None, "--push_to_hub needs a Hub token: run `hf auth login`, or pass --hub_token"),
        ("hf_wrong", "refused the token"),
    ],
)
def test_push_to_hub_without_a_valid_token_stops_before_evaluating(
    evaluate_dito, image_dir, model_dirs, tmp_path, monkeypatch, capsys, local_hub, token, message
):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no token saved by `hf auth login` here
    argv = ["--model", str(model_dirs / "vae"), "--data_dir", str(image_dir), "--output_dir", str(tmp_path / "out")]
    argv += ["--push_to_hub"] + (["--hub_token", token] if token else [])
    with pytest.raises(SystemExit) as exit_info:
        evaluate_dito.parse_args(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_push_to_hub_with_the_hub_out_of_reach_stops_before_evaluating_in_one_line(image_dir, model_dirs, tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on: every connection is refused
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**subprocess_env(tmp_path), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": endpoint, "HF_TOKEN": "hf_test"}
    argv = ["--model", str(model_dirs / "vae"), "--data_dir", str(image_dir), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--push_to_hub"], env=env, capture_output=True, text=True, timeout=300
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert f"--push_to_hub: cannot reach the Hub at {endpoint}" in lines[0]
    assert not (tmp_path / "out").exists()


def test_docstring_examples_run(evaluate_dito):
    assert doctest.testmod(evaluate_dito, optionflags=doctest.ELLIPSIS).failed == 0
