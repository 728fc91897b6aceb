"""A training run never loses or silently corrupts a user's work: only exact `checkpoint-<N>` folders are resumed
from or deleted, one run at a time holds an output folder, a resume with other settings stops with the differences,
and start-up errors are one line with exit code 2."""

import errno
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from script_helpers import (  # noqa: F401 (autouse fixtures, active by being in this module)
    REPO,
    fresh_accelerate_state,
    load_script,
    one_thread,
)
from test_train_dito import SCRIPT, config_path, image_dir, run_args, train_dito, write_images  # noqa: F401

from conftest import tiny_dito_config
from diffusers_dito.training import checkpoints, reliability


@pytest.fixture(scope="module")
def run_with_backup(train_dito, image_dir, config_path, tmp_path_factory):
    """A 2-step run with a checkpoint at step 2, and the user's copy of it as `checkpoint-2-mybackup`."""
    out = tmp_path_factory.mktemp("run") / "out"
    args = ["--max_train_steps", "2", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2"]
    train_dito.main(run_args(train_dito, out, image_dir, config_path, *args))
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-2-mybackup")
    (out / "checkpoint-3-notes").mkdir()
    (out / "checkpoint-9.txt").write_text("a user's file")
    return out


def test_only_exact_checkpoint_names_are_checkpoints(run_with_backup):
    assert [p.name for p in checkpoints.list_checkpoints(run_with_backup)] == ["checkpoint-2"]


def test_resume_latest_never_uses_or_deletes_a_users_copy(train_dito, run_with_backup, image_dir, config_path):
    args = ["--max_train_steps", "6", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2"]
    args += ["--resume_from_checkpoint", "latest"]
    train_dito.main(run_args(train_dito, run_with_backup, image_dir, config_path, *args))
    names = sorted(p.name for p in run_with_backup.iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint-2-mybackup", "checkpoint-3-notes", "checkpoint-4", "checkpoint-6", "checkpoint-9.txt"]
    assert (run_with_backup / "checkpoint-9.txt").read_text() == "a user's file"


def test_a_resume_with_another_batch_size_stops_with_the_differences(train_dito, tmp_path, image_dir, config_path):
    out = tmp_path / "out"
    args = ["--max_train_steps", "2", "--checkpointing_steps", "2"]
    train_dito.main(run_args(train_dito, out, image_dir, config_path, *args))
    changed = [*args[:1], "4", *args[2:], "--resume_from_checkpoint", "latest", "--train_batch_size", "4"]
    with pytest.raises(checkpoints.ResumeMismatchError, match="train_batch_size: 2 -> 4") as error:
        train_dito.main(run_args(train_dito, out, image_dir, config_path, *changed))
    assert "--allow_changed_resume" in str(error.value) and "\n" not in str(error.value)
    train_dito.main(run_args(train_dito, out, image_dir, config_path, *changed, "--allow_changed_resume"))
    assert [p.name for p in checkpoints.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]  # resumed at 2
    marker = json.loads((out / "checkpoint-4" / checkpoints.COMPLETE_MARKER).read_text())
    assert marker["run_signature"]["train_batch_size"] == 4  # the new settings are what this checkpoint records


def test_a_resume_into_another_model_config_is_refused_even_when_allowed(train_dito, tmp_path, image_dir, config_path):
    out = tmp_path / "out"
    train_dito.main(
        run_args(train_dito, out, image_dir, config_path, "--max_train_steps", "2", "--checkpointing_steps", "2")
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps(tiny_dito_config(decoder_layers_per_block=2)))
    args = ["--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--allow_changed_resume"]
    with pytest.raises(checkpoints.ResumeMismatchError, match="another model config"):
        train_dito.main(run_args(train_dito, out, image_dir, other, *args))


def test_a_second_run_on_a_locked_output_dir_stops_naming_the_pid(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / reliability.LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(reliability.OutputDirLockedError, match=f"pid {holder.pid}"):
            reliability.lock_output_dir(tmp_path, accelerator)
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone now: its stale lock is taken over.
    assert reliability.lock_output_dir(tmp_path, accelerator) == tmp_path / reliability.LOCK_FILE
    assert json.loads((tmp_path / reliability.LOCK_FILE).read_text())["pid"] == os.getpid()


def run_script(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300, cwd=REPO, env=env
    )


def run_entry_point(train_dito, *argv: str) -> int:
    """What `python training/train_dito.py <argv>` runs, in this process: its `__main__` line is
    `sys.exit(run_script(main, parse_args(), "train_dito.py"))`. (A fresh process costs more than the test itself;
    the command-line test below shows a start-up error as the whole stderr of a real process, and the SIGTERM tests
    run that line in one.)"""
    return reliability.run_script(train_dito.main, train_dito.parse_args(list(argv)), "train_dito.py")


def test_two_runs_on_one_output_dir_the_second_stops_in_one_line(train_dito, tmp_path, image_dir, config_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / reliability.LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        code = run_entry_point(
            train_dito, "--train_data_dir", str(image_dir), "--model_config", str(config_path), "--resolution", "32",
            "--max_train_steps", "1", "--output_dir", str(out), "--report_to", "none",
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train_dito.py: error:") and f"pid {holder.pid}" in last and "Traceback" not in stderr
    assert json.loads((out / reliability.LOCK_FILE).read_text())["pid"] == holder.pid  # the other run's lock stays


def test_a_non_finite_learning_rate_is_a_one_line_error_from_the_command_line(tmp_path, image_dir, config_path):
    result = run_script(
        "--train_data_dir", str(image_dir), "--model_config", str(config_path), "--output_dir", str(tmp_path),
        "--learning_rate", "nan",
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--learning_rate" in lines[0], lines


@pytest.mark.parametrize("value", ["inf", "0", "-1e-3"])
def test_a_non_finite_or_non_positive_learning_rate_is_refused(
    value, train_dito, tmp_path, image_dir, config_path, capsys
):
    # The same check in-process (the subprocess above shows it reaches the command line as one line).
    argv = ["--train_data_dir", str(image_dir), "--model_config", str(config_path), "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as error:
        train_dito.parse_args([*argv, "--learning_rate", value])
    assert error.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--learning_rate" in lines[0], lines


def test_a_folder_of_only_corrupt_files_is_a_one_line_error(train_dito, tmp_path, config_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.png").write_bytes(b"\x89PNG broken")
    code = run_entry_point(
        train_dito, "--train_data_dir", str(data), "--model_config", str(config_path), "--resolution", "32",
        "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--validation_steps", "1",
        "--max_train_steps", "1",
    )  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "no readable image" in stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------------- distillation
@pytest.fixture(scope="module")
def distill_dito():
    return load_script(REPO / "training" / "distill_dito.py")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny DiToPipeline folder, as a teacher or a pretrained model."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from diffusers_dito import AutoencoderDiTo, DiToPipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "teacher"
    DiToPipeline(AutoencoderDiTo(**tiny_dito_config()), FlowMatchEulerDiscreteScheduler()).save_pretrained(folder)
    return folder


def folder_bytes(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_usage_error(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as error:
        parse(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert error.value.code == 2 and len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    "script, flag", [("distill", "--teacher_model_name_or_path"), ("train", "--pretrained_model_name_or_path")]
)
@pytest.mark.parametrize("output", ["the model", "its parent"])
def test_an_output_dir_that_is_or_holds_the_model_is_refused(
    distill_dito, train_dito, teacher, image_dir, capsys, script, flag, output
):
    before = folder_bytes(teacher.parent)
    out = teacher if output == "the model" else teacher.parent
    parse = distill_dito.parse_args if script == "distill" else train_dito.parse_args
    argv = [flag, str(teacher), "--train_data_dir", str(image_dir), "--resolution", "32", "--output_dir", str(out)]
    line = one_line_usage_error(parse, argv, capsys)
    assert f"--output_dir {out}" in line and f"the {flag} folder" in line
    assert folder_bytes(teacher.parent) == before


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: (p / "config.json").write_text('{"_class_name": "AutoencoderKL"}'), "holds a AutoencoderKL"),
        (lambda p: (p / "pytorch_lora_weights.safetensors").write_bytes(b"x"), "has no model_index.json"),
        (lambda p: (p / "0.png").write_bytes(b"x"), "has no model_index.json"),
        (None, "no such folder, nor a Hub model it can read (not in the cache, and HF_HUB_OFFLINE is set)"),
    ],
    ids=["autoencoder-kl", "lora-only", "images", "missing"],
)
def test_a_teacher_that_is_not_a_dito_model_is_a_one_line_error(
    distill_dito, image_dir, tmp_path, capsys, monkeypatch, make, message
):
    monkeypatch.chdir(tmp_path)  # "teacher", relative: for a missing folder, also a name the Hub could have
    if make is not None:
        (tmp_path / "teacher").mkdir()
        make(tmp_path / "teacher")
    argv = ["--teacher_model_name_or_path", "teacher", "--train_data_dir", str(image_dir), "--output_dir", "out"]
    line = one_line_usage_error(distill_dito.parse_args, argv, capsys)
    assert ": error: --teacher_model_name_or_path teacher" in line and message in line, line
    assert not (tmp_path / "out").exists()


def test_the_current_folder_as_teacher_is_a_one_line_error(distill_dito, image_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--teacher_model_name_or_path", ".", "--train_data_dir", str(image_dir), "--output_dir", "out"]
    assert "has no model_index.json or config.json" in one_line_usage_error(distill_dito.parse_args, argv, capsys)


def test_a_failed_save_of_the_student_leaves_no_half_written_pipeline(distill_dito, teacher, tmp_path, monkeypatch):
    import safetensors.torch

    from diffusers_dito import AutoencoderDiTo

    out = tmp_path / "out"
    (out / "checkpoint-5").mkdir(parents=True)  # the run's own files stay
    args = distill_dito.parse_args(
        ["--teacher_model_name_or_path", str(teacher), "--train_data_dir", str(tmp_path), "--output_dir", str(out)]
    )

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match=f"could not write {out}: No space left on device"):
        distill_dito.save_final_model(AutoencoderDiTo.from_pretrained(teacher / "vae"), args, teacher_steps=2)
    assert [p.name for p in out.iterdir()] == ["checkpoint-5"]


# ---------------------------------------------------------------------------------------------------- LPIPS backbone
def write_backbone(path, content: str) -> None:
    """A file where torchvision's AlexNet checkpoint is expected: cut short, noise, another network or a module."""
    from diffusers_dito.metrics.perceptual import _lpips_backbone

    if content in ("another network", "a pickled module"):
        other = _lpips_backbone("vgg").state_dict() if content == "another network" else torch.nn.Linear(2, 2)
        torch.save(other, path)
    elif content == "cut short":
        torch.save(_lpips_backbone("alex").state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # "noise <seed>"
        path.write_bytes(np.random.default_rng(int(content.split()[-1])).bytes(4096))


@pytest.mark.parametrize(
    "content",
    # noise that torch's unpickler fails on with an UnpicklingError, IndexError, UnicodeDecodeError and KeyError
    ["cut short", "noise 0", "noise 17", "noise 54", "noise 62", "another network", "a pickled module"],
)
def test_a_corrupt_or_wrong_lpips_backbone_is_refused_before_the_run_starts(
    train_dito, image_dir, config_path, tmp_path, capsys, content
):
    backbone = tmp_path / "alexnet-owt-7be5be79.pth"
    write_backbone(backbone, content)
    argv = ["--train_data_dir", str(image_dir), "--model_config", str(config_path), "--resolution", "32"]
    argv += ["--output_dir", str(tmp_path / "out"), "--lpips_weight", "0.5", "--lpips_net", "alex"]
    line = one_line_usage_error(train_dito.parse_args, [*argv, "--lpips_backbone", str(backbone)], capsys)
    assert f"--lpips_backbone {backbone}: not torchvision's alexnet-owt-7be5be79.pth" in line, line
    assert "weights_only=False" not in line and not (tmp_path / "out").exists()
