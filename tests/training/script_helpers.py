"""Shared by the training-script tests: load a script as a module, and keep in-process runs independent.

Not a conftest.py on purpose: a second conftest would shadow `tests/conftest.py` for `from conftest import ...`.
Test modules import the fixtures by name, which activates them there.
"""

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

REPO = Path(__file__).resolve().parents[2]


def load_script(path: Path):
    """Import a script file (e.g. `training/train_dito.py`) as a module named after the file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_launch_env(tmp_path: Path) -> dict:
    """The environment of an `accelerate launch` of 2 CPU processes (a gloo group, also on a machine with a GPU),
    offline, one thread each, ignoring any accelerate config of this machine."""
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a launch's `--main_process_port` (tests run side by side)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reset_accelerate() -> None:
    # Accelerator state is a process-wide singleton; each in-process run must start from scratch.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models are tiny: a second intra-op thread buys nothing, and costs a lot when the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    reset_accelerate()
