"""train_dito.py on two CPU processes under DDP and under accelerate's FSDP2 (through the test-only switch
DITO_TEST_FSDP_ON_CPU, diffusers_dito.training.sharding): the same losses and weights, sharded parameters, a kill
inside a sharded checkpoint save, and an exact resume. Also the shipped accelerate configs that no other test launches.

One launch per scenario; the models are tiny, with GroupNorm groups of two channels: with one channel per group a
conv bias before a norm has an exactly-zero gradient, whose rounding noise Adam would amplify to ±lr."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from script_helpers import REPO, cpu_launch_env, free_port
from test_train_dito import write_images

from conftest import tiny_dito_config
from diffusers_dito import AutoencoderDiTo, DiToPipeline
from diffusers_dito.training.sharding import TEST_FSDP_ON_CPU_ENV

SCRIPT = REPO / "training" / "train_dito.py"
CONFIGS = REPO / "accelerate_configs"
STEPS = 4
pytestmark = pytest.mark.xdist_group("fsdp")  # one worker: the launches use both cores each


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fsdp-data")
    config = root / "config.json"
    config.write_text(json.dumps(tiny_dito_config(encoder_norm_num_groups=4, decoder_norm_num_groups=4)))
    return {"images": write_images(root / "images"), "config": config, "root": root}


def launch_command(config_file: str, data: dict, out: Path, *extra: str) -> list[str]:
    """`accelerate launch` of train_dito.py on 2 CPU processes (4 steps, EMA, validation at step 2)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config_file),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(SCRIPT),
        "--train_data_dir", str(data["images"]), "--model_config", str(data["config"]), "--resolution", "32",
        "--train_batch_size", "2", "--max_train_steps", str(STEPS), "--use_ema", "--ema_decay", "0.9",
        "--validation_steps", "2", "--num_validation_images", "2", "--report_to", "none",
        "--output_dir", str(out), "--cache_dir", str(out.parent / "cache"), "--debug_dump_dir", str(out / "dump"),
        *extra,
    ]  # fmt: skip


def run(command: list[str], tmp: Path, fsdp: bool) -> subprocess.CompletedProcess:
    env = {**cpu_launch_env(tmp), **({TEST_FSDP_ON_CPU_ENV: "1"} if fsdp else {})}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def dumps(out: Path) -> list[dict]:
    return [json.loads((out / "dump" / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "diffusion_pytorch_model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


@pytest.fixture(scope="module")
def ddp(data) -> Path:
    """The DDP reference, through the shipped DDP config with its GPU count and precision overridden."""
    out = data["root"] / "ddp"
    run(launch_command("ddp_8gpu.yaml", data, out, "--checkpointing_steps", "2"), data["root"], fsdp=False)
    return out


@pytest.fixture(scope="module")
def fsdp(data) -> Path:
    out = data["root"] / "fsdp"
    run(launch_command("fsdp_8gpu_dito_xl.yaml", data, out, "--checkpointing_steps", "2"), data["root"], fsdp=True)
    return out


def test_ddp_shards_the_data_and_stays_in_sync(ddp):
    ranks = dumps(ddp)
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["process_index"] for r in ranks] == [0, 1]
    # 8 images, 2 per rank per step: the first 2 steps are one epoch, split between the ranks without overlap.
    first_epoch = [set(r["sample_indices"][:4]) for r in ranks]
    assert first_epoch[0].isdisjoint(first_epoch[1]) and first_epoch[0] | first_epoch[1] == set(range(8))
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert ranks[0]["global_step"] == STEPS and ranks[0]["images_seen"] == 4 * STEPS
    assert ranks[0]["local_parameter_fraction"] == 1.0
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (ddp / "checkpoint-2").iterdir()}


def test_fsdp_trains_like_ddp_with_sharded_parameters(ddp, fsdp):
    reference, sharded = dumps(ddp), dumps(fsdp)
    # Every parameter really is split between the two processes.
    assert all(0.4 < r["local_parameter_fraction"] < 0.6 for r in sharded)
    assert sharded[0]["weights_sha256"] == sharded[1]["weights_sha256"]  # of the gathered weights
    losses = [[step["loss"] for step in r[0]["step_logs"]] for r in (reference, sharded)]
    assert len(losses[1]) == STEPS and max(abs(a - b) for a, b in zip(*losses)) < 1e-5
    # The final pipeline (EMA weights), and both folders of each checkpoint, whole and loadable.
    for folder in ("vae", "checkpoint-2/vae", "checkpoint-4/vae", "checkpoint-4/vae_ema"):
        assert max_difference(weights(ddp / folder), weights(fsdp / folder)) < 1e-5, folder
    assert (fsdp / "validation" / "step-0000002.png").is_file()  # validation on the gathered weights
    assert (fsdp / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()  # accelerate's sharded state, for resume
    DiToPipeline.from_pretrained(fsdp)


def test_a_kill_inside_a_sharded_save_resumes_exactly(data, fsdp):
    """1 step, a SIGKILL inside the save of checkpoint-2 (after the shards are written, before the marker), then a
    resume from checkpoint-1: the 4 steps end with the weights of the 4 straight steps, bit for bit."""
    out = data["root"] / "killed"
    command = launch_command("fsdp_8gpu_dito_xl.yaml", data, out, "--checkpointing_steps", "1")
    env = {**cpu_launch_env(data["root"]), TEST_FSDP_ON_CPU_ENV: "1"}
    process = subprocess.Popen(
        [*command, "--debug_pause_at", "save-2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / ".debug-paused-save-2").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run never reached the save"
            time.sleep(0.1)
    finally:  # torch's launcher starts each rank in a session of its own: kill them all by pid
        for pid in [*descendants(process.pid), process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
    assert (out / "checkpoint-1" / "checkpoint_complete.json").is_file()
    assert (out / ".tmp-checkpoint-2" / "pytorch_model_fsdp_0").is_dir() and not (out / "checkpoint-2").exists()

    result = run([*command, "--resume_from_checkpoint", "latest"], data["root"], fsdp=True)
    assert "Resuming from" in result.stderr and "checkpoint-1" in result.stderr
    assert not (out / ".tmp-checkpoint-2").exists()
    for folder in ("vae", "checkpoint-4/vae_ema"):
        assert max_difference(weights(fsdp / folder), weights(out / folder)) == 0.0, folder


def test_single_gpu_config_launches_one_process(data):
    """accelerate_configs/single_gpu_bf16.yaml, on CPU, with its precision kept: one process, one step."""
    out = data["root"] / "single"
    command = launch_command("single_gpu_bf16.yaml", data, out, "--max_train_steps", "1", "--checkpointing_steps", "1")
    command = [arg for arg in command if arg not in ("--mixed_precision", "no")]  # keep the config's bf16
    command.remove("--num_processes")
    command.remove("2")
    run(command, data["root"], fsdp=False)
    dump = json.loads((out / "dump" / "rank0.json").read_text())
    assert dump["num_processes"] == 1 and dump["global_step"] == 1
    assert AutoencoderDiTo.from_pretrained(out / "vae").dtype == torch.float32  # bf16 autocast, fp32 weights


def test_two_node_template_runs_on_one_node(data):
    """accelerate_configs/two_node_template.yaml with the overrides docs/training.md gives for one machine."""
    out = data["root"] / "two-node"
    command = launch_command("two_node_template.yaml", data, out, "--max_train_steps", "1", "--validation_steps", "9")
    at = command.index("--config_file") + 2
    command[at:at] = ["--num_machines", "1", "--machine_rank", "0", "--main_process_ip", "127.0.0.1"]
    run(command, data["root"], fsdp=False)
    ranks = dumps(out)
    assert [r["num_processes"] for r in ranks] == [2, 2] and ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
