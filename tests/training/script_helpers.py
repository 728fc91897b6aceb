"""Shared by the training-script tests: load a script as a module, and keep in-process runs independent.

Not a conftest.py on purpose: a second conftest would shadow `tests/conftest.py` for `from conftest import ...`.
Test modules import the fixtures by name, which activates them there.
"""

import importlib.util
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
