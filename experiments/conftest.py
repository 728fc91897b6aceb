"""Fixtures of the studies' smoke tests (`python -m pytest experiments`); the default test run skips them."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToPipeline

TINY_DITO = {**DITO_PRESETS["dito-tiny"], "num_inference_steps": 2}  # 4.9M parameters; 2 decoding steps


@pytest.fixture
def tiny_teacher(tmp_path):
    """A seeded dito-tiny AutoencoderDiTo, saved as a DiToPipeline folder at tmp_path/teacher: (vae, folder)."""
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**TINY_DITO)
    folder = tmp_path / "teacher"
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(folder)
    return vae, folder


@pytest.fixture
def write_images():
    """write_images(folder, n, size): n random RGB PNGs of size² in `folder` (created), seeded."""

    def write(folder, n: int, size: int, seed: int = 0):
        folder.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(n):
            PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        return folder

    return write
