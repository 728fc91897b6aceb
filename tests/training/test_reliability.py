"""Reliability of the training scripts (docs/reliability.md): bad data, non-finite steps, atomic checkpoints, exact
resume after SIGTERM and SIGKILL. Tiny DiTo runs on 32-px folders, in-process except where a process must die."""

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from accelerate import Accelerator
from diffusers import FlowMatchEulerDiscreteScheduler

# The stage-1 tests' helpers, and their autouse fixtures (one torch thread, a fresh accelerate state for every test):
# these tests run the same tiny trainings.
from script_helpers import (  # noqa: F401 (autouse fixtures, active by being in this module)
    fresh_accelerate_state,
    load_script,
    one_thread,
    reset_accelerate,
)
from test_train_dito import SCRIPT, config_path, read_dump, run_args, train_dito, vae_weights, write_images  # noqa: F401

from conftest import tiny_dito_config
from diffusers_dito import AutoencoderDiTo, DiToPipeline
from diffusers_dito.training import checkpoints, data, objectives, reliability, trained_weights

REPO = Path(__file__).resolve().parents[2]


def load_training_script(name: str):
    return load_script(REPO / "training" / f"{name}.py")


def checkpoint_steps(out: Path, complete: bool = True) -> list[int]:
    return [checkpoints.checkpoint_step(p) for p in checkpoints.list_checkpoints(out, complete)]


def random_image(rng, height: int, width: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_bad_files(folder: Path) -> list[Path]:
    """A truncated PNG, a text file named .jpg, and a note that imagefolder ignores (not an image extension)."""
    buffer = folder / "whole.png"
    random_image(np.random.default_rng(1), 32, 32).save(buffer)
    truncated, garbage = folder / "truncated.png", folder / "garbage.jpg"
    truncated.write_bytes(buffer.read_bytes()[:200])
    buffer.unlink()
    garbage.write_bytes(b"this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    return [truncated, garbage]


# ----------------------------------------------------------------------------------------------------------- data
def test_every_image_mode_decodes_to_rgb_and_bad_files_are_logged_rate_limited(tmp_path, caplog, monkeypatch):
    cases = {
        "gray.png": (PIL.Image.new("L", (4, 4), 200), (200, 200, 200)),
        "one_bit.png": (PIL.Image.new("1", (4, 4), 1), (255, 255, 255)),
        "deep.png": (PIL.Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), (255, 255, 255)),
        "clear.png": (PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),  # hidden black stays hidden
        "gray_alpha.png": (PIL.Image.new("LA", (4, 4), (0, 255)), (0, 0, 0)),
        "cmyk.jpg": (PIL.Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
    }
    palette = PIL.Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    cases["palette.png"] = (palette, (10, 20, 30))
    for name, (image, expected) in cases.items():
        image.save(tmp_path / name, quality=100) if name.endswith(".jpg") else image.save(tmp_path / name)
        decoded = data.decode_image({"path": str(tmp_path / name), "bytes": None})
        assert decoded.mode == "RGB", name
        assert np.abs(np.asarray(decoded, dtype=int) - expected).max() <= 2, name

    monkeypatch.setattr(data, "_bad_files_seen", 0)
    bad = write_bad_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger=data.__name__):
        for i in range(40):
            assert data.decode_image({"path": str(bad[i % 2]), "bytes": None}) is None
    assert len(caplog.records) == 12  # the first 10, then the 16th and the 32nd
    assert str(bad[0]) in caplog.records[0].message and str(bad[1]) in caplog.records[1].message


def test_bad_and_small_images_are_skipped_counted_or_upscaled(train_dito, config_path, tmp_path, caplog):
    folder = write_images(tmp_path / "images", count=6)
    rng = np.random.default_rng(2)
    random_image(rng, 16, 24).save(folder / "small.png")
    random_image(rng, 1, 300).save(folder / "strip.png")  # a 1-px-high strip: upscaled, only its crop resampled
    bad = write_bad_files(folder)
    for policy, usable, too_small in (("skip", 6, 2), ("upscale", 8, 0)):
        out, dump = tmp_path / policy, tmp_path / f"dump-{policy}"
        args = run_args(
            train_dito, out, folder, config_path, "--max_train_steps", "5", "--small_image_policy", policy,
            "--debug_dump_dir", str(dump),
        )  # fmt: skip
        with caplog.at_level(logging.WARNING):
            train_dito.main(args)
        reset_accelerate()
        result = read_dump(dump)  # 10 files read in 5 steps of 2: one epoch
        assert (result["images_seen"], result["too_small_images"], result["corrupt_images"]) == (usable, too_small, 2)
    for path in bad:
        assert any(str(path) in record.message for record in caplog.records)


def test_mostly_unreadable_data_stops_the_run(train_dito, config_path, tmp_path):
    folder = write_images(tmp_path / "images", count=2)
    for i in range(14):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(i))
    args = run_args(
        train_dito, tmp_path / "out", folder, config_path, "--max_train_steps", "40",
        "--max_bad_sample_fraction", "0.5", "--checkpointing_steps", "2",
    )  # fmt: skip
    with pytest.raises(reliability.BadDataError, match=r"could not be decoded, more than --max_bad_sample_fraction"):
        train_dito.main(args)


def test_latent_cache_marks_small_images_and_an_epoch_of_nothing_usable_stops(tmp_path):
    train_latent_dit = load_training_script("train_latent_dit")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "classes" / name).mkdir(parents=True)
        for i in range(2):
            random_image(rng, 16, 16).save(tmp_path / "classes" / name / f"{i}.png")
    dito = tmp_path / "dito"
    torch.manual_seed(0)
    DiToPipeline(
        vae=AutoencoderDiTo(**tiny_dito_config()), scheduler=FlowMatchEulerDiscreteScheduler()
    ).save_pretrained(dito)
    args = train_latent_dit.parse_args(
        [
            "--vae_model_name_or_path", str(dito), "--train_data_dir", str(tmp_path / "classes"),
            "--dit_preset", "dit-tiny", "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", "4",
            "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "hf"), "--report_to", "none",
            "--cache_latents", str(tmp_path / "cache"), "--small_image_policy", "skip",
        ]
    )  # fmt: skip
    with pytest.raises(reliability.BadDataError, match="Epoch 0 yielded no usable image: 0 unreadable and 4 smaller"):
        train_latent_dit.main(args)
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["too_small_images"] == 4 and index["fingerprint"]["small_image_policy"] == "skip"
    assert np.load(tmp_path / "cache" / "shard-00000.labels.npy").tolist() == [-2] * 4


# -------------------------------------------------------------------------------------------------------- numbers
def test_a_streak_of_non_finite_steps_stops_the_run_without_touching_weights_or_ema(
    train_dito, config_path, tmp_path, monkeypatch
):
    calls = []
    original = objectives.dito_flow_matching_loss

    def nan_from_third_call(vae, images, **kwargs):
        out = original(vae, images, **kwargs)
        calls.append(1)
        if len(calls) >= 3:
            poisoned = out.per_sample_loss * float("nan")
            return dataclasses.replace(out, loss=poisoned.mean(), per_sample_loss=poisoned)
        return out

    monkeypatch.setattr(objectives, "dito_flow_matching_loss", nan_from_third_call)
    out = tmp_path / "out"
    images = write_images(tmp_path / "images")
    args = run_args(
        train_dito, out, images, config_path, "--max_train_steps", "10", "--checkpointing_steps", "1",
        "--use_ema", "--max_nonfinite_steps", "3",
    )  # fmt: skip
    with pytest.raises(reliability.NonFiniteTrainingError, match=r"last 3 optimizer steps \(up to step 5\)"):
        train_dito.main(args)
    # Steps 3 and 4 were skipped but checkpointed; step 5 hit the limit before its checkpoint.
    assert checkpoint_steps(out) == [1, 2, 3, 4]
    assert not list(out.glob(".tmp-*")) and not (out / "model_index.json").exists()
    for sub in ("vae", "vae_ema"):
        good = vae_weights(out / "checkpoint-2" / sub)
        for step in (3, 4):
            assert all(torch.equal(good[k], t) for k, t in vae_weights(out / f"checkpoint-{step}" / sub).items())


# ---------------------------------------------------------------------------------------------- atomic checkpoints
class Killed(BaseException):
    """Stands for a SIGKILL: the save has no cleanup code, so an exception leaves the disk as a kill would."""


def kill_on_call(monkeypatch, target, name: str, when, before=None) -> None:
    """Make `target.name` die when called with a first argument that `when` accepts (after `before(path)`, a partial
    effect, if given)."""
    original = getattr(target, name)

    def dying(path, *args, **kwargs):
        if when(str(path)):
            if before is not None:
                before(path)
            raise Killed(name)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(target, name, dying)


def test_a_kill_at_any_moment_of_a_save_leaves_complete_checkpoints(tmp_path, monkeypatch, train_dito):
    out = tmp_path / "out"
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_dito_config())
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    trainable = list(vae.parameters())
    ema = trained_weights.create_ema(trainable, vae, 0.9, lora=False, device="cpu")
    progress = checkpoints.register_checkpoint_hooks(accelerator, vae, "vae", ema, trainable, lora=False)

    def save(step: int) -> None:
        progress.global_step = step
        checkpoints.save_checkpoint(accelerator, str(out), 2, step, vae, ema)

    def latest() -> int:
        return checkpoint_steps(out)[-1]

    save(1), save(2)
    new = str(out / ".tmp-checkpoint-3")
    moments = [  # (what dies, on which argument, a partial effect first): one save each, from its start to its end
        (accelerator, "save_state", lambda p: True, lambda p: (Path(p).mkdir(), (Path(p) / "optimizer.bin").touch())),
        (checkpoints, "_fsync", lambda p: True, None),  # everything written, no marker yet
        (os, "rename", lambda p: p == new, None),  # complete, not yet renamed into place
        (shutil, "rmtree", lambda p: p.endswith("delete-checkpoint-1"), lambda p: (p / "optimizer.bin").unlink()),
    ]
    for target, name, when, before in moments:
        with monkeypatch.context() as patch:
            kill_on_call(patch, target, name, when, before)
            with pytest.raises(Killed):
                save(3)
        assert 2 in checkpoint_steps(out) and not checkpoint_steps(out, complete=False)  # no half-made checkpoint-N
    assert checkpoint_steps(out) == [2, 3]
    with monkeypatch.context() as patch:  # re-saving step 3 dies between taking the old one out and renaming
        kill_on_call(patch, os, "rename", lambda p: p == new)
        with pytest.raises(Killed):
            save(3)
    assert latest() == 2

    shutil.copytree(out / "checkpoint-2", out / "checkpoint-9")  # a folder that lost its marker: never resumed
    (out / "checkpoint-9" / checkpoints.COMPLETE_MARKER).unlink()
    assert list(out.glob(".tmp-*"))
    progress.global_step = 0
    checkpoints.resume(accelerator, "latest", str(out), progress, ema, None)  # clears .tmp-*, loads checkpoint-2
    assert not list(out.glob(".tmp-*")) and progress.global_step == 2

    # Non-finite weights are refused before anything is written, be they the model's or the EMA's.
    for poisoned in (next(vae.parameters()), ema.shadow_params[0]):
        value = poisoned.data.flatten()[0].item()
        poisoned.data.flatten()[0] = float("nan")
        with pytest.raises(checkpoints.NonFiniteWeightsError, match="Refusing to save checkpoint-4"):
            save(4)
        poisoned.data.flatten()[0] = value
    assert not (out / "checkpoint-4").exists() and not list(out.glob(".tmp-*"))

    with pytest.raises(SystemExit) as error:  # and an incomplete folder named explicitly stops at start-up
        train_dito.parse_args(["--train_data_dir", str(tmp_path), "--model_preset", "dito-tiny", "--resolution",
                               "32", "--resume_from_checkpoint", str(out / "checkpoint-9")])  # fmt: skip
    assert error.value.code == 2


# ---------------------------------------------------------------------------------------------- signals and resume
def test_stop_request_sets_a_flag_on_sigterm_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with reliability.StopRequest(True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before
    with reliability.StopRequest(False) as stop:  # --no-checkpoint_on_sigterm: SIGTERM keeps its default action
        assert signal.getsignal(signal.SIGTERM) is before and not stop.agreed(None)


def start_run(args: list[str], out: Path, event: str) -> subprocess.Popen:
    """Start train_dito.py in a child process and wait until it pauses at `event` (--debug_pause_at)."""
    # One thread, as in-process (the one_thread fixture): the children's weights are then bit-comparable with ours.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), *args, "--debug_pause_at", event]
    log = out.parent / f"{out.name}-{event}.log"  # a file, not a pipe: a full pipe would stall the child
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    process.log = log
    deadline = time.monotonic() + 240
    while not (out / f".debug-paused-{event}").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run never reached {event}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    return process


def test_runs_killed_by_sigterm_and_sigkill_resume_bit_identically(train_dito, config_path, tmp_path):
    images = write_images(tmp_path / "images")  # 8 images, batches of 2: 4 steps an epoch
    common = (
        "--max_train_steps", "5", "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--use_ema",
        "--lr_warmup_steps", "4", "--noise_sync_prob", "0.5",
    )  # fmt: skip
    straight = tmp_path / "straight"
    expected = train_dito.main(
        run_args(train_dito, straight, images, config_path, *common, "--debug_dump_dir", str(tmp_path / "dump-a"))
    )
    reset_accelerate()

    out = tmp_path / "killed"
    argv = [
        "--train_data_dir", str(images), "--model_config", str(config_path), "--resolution", "32",
        "--train_batch_size", "2", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
        "--report_to", "none", "--validation_steps", "100", "--validation_inference_steps", "2",
        "--num_validation_images", "2", *common,
    ]  # fmt: skip
    # 1. SIGTERM after step 3 (mid-epoch, not a checkpoint step): checkpoint-3 is saved, then exit code 143.
    run = start_run(argv, out, "step-3")
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == reliability.EXIT_CODE_SIGTERM, run.log.read_text()[-4000:]
    assert checkpoint_steps(out) == [2, 3]
    assert not (out / "model_index.json").exists()

    # 2. Resumed from checkpoint-3, SIGKILLed inside the save of checkpoint-4: 2 and 3 stay complete (the limit of 2
    # removes old checkpoints only once the new one is complete), and the partial save is never resumed from.
    run = start_run([*argv, "--resume_from_checkpoint", "latest"], out, "save-4")
    run.kill()
    assert run.wait(timeout=60) == -signal.SIGKILL
    assert (out / ".tmp-checkpoint-4").is_dir() and not (out / "checkpoint-4").exists()
    assert checkpoint_steps(out) == [2, 3]

    # 3. Resumed again (in-process) from checkpoint-3 to the end: bit-identical to the run never stopped.
    resumed = train_dito.main(
        run_args(
            train_dito, out, images, config_path, *common, "--resume_from_checkpoint", "latest",
            "--debug_dump_dir", str(tmp_path / "dump-b"),
        )
    )  # fmt: skip
    assert read_dump(tmp_path / "dump-b")["weights_sha256"] == read_dump(tmp_path / "dump-a")["weights_sha256"]
    for name, tensor in expected.state_dict().items():  # the EMA weights
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert checkpoint_steps(out) == [3, 4] and not list(out.glob(".tmp*"))
    for sub in ("vae", "vae_ema"):
        a, b = vae_weights(straight / "checkpoint-4" / sub), vae_weights(out / "checkpoint-4" / sub)
        assert all(torch.equal(a[k], b[k]) for k in a), sub
    optimizer_states = [
        torch.load(root / "checkpoint-4" / "optimizer.bin", weights_only=True) for root in (straight, out)
    ]
    for key, state in optimizer_states[0]["state"].items():
        assert torch.equal(state["exp_avg_sq"], optimizer_states[1]["state"][key]["exp_avg_sq"])
    schedulers = [torch.load(root / "checkpoint-4" / "scheduler.bin", weights_only=False) for root in (straight, out)]
    assert schedulers[0]["_last_lr"] == schedulers[1]["_last_lr"]


def test_soak_benchmark_reports_memory(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("soak_train", REPO / "benchmarks" / "soak_train.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    # 8 steps are no soak: a huge tolerance, since this checks the report, not the memory.
    argv = ["--steps", "8", "--validation_steps", "3", "--checkpointing_steps", "3", "--warmup_steps", "2"]
    argv += ["--tolerance", "100"]
    result = soak.main(soak.parse_args([*argv, "--json", str(tmp_path / "soak.json")]))
    assert result["warm_step"] == 5 and len(result["rss_mib_by_step"]) == 8 and result["rss_end_mib"] > 0
    assert json.loads((tmp_path / "soak.json").read_text())["passed"] == result["passed"]
