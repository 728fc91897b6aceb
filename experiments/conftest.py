"""Fixtures of the studies' smoke tests (`python -m pytest experiments`); the default test run skips them."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import AutoencoderDiTo, DiToPipeline

# A ~0.1M-parameter f8 DiTo decoding in 2 steps: the shape of the unit tests' `tiny_dito_config`.
TINY_DITO = {
    "latent_channels": 4,
    "block_out_channels": (8, 16, 16, 16),
    "encoder_layers_per_block": 1,
    "encoder_norm_num_groups": 8,
    "decoder_block_out_channels": (8, 16, 32, 32),
    "decoder_layers_per_block": 1,
    "decoder_norm_num_groups": 8,
    "decoder_time_embedding_dim": 32,
    "num_inference_steps": 2,
}


@pytest.fixture
def tiny_teacher(tmp_path):
    """A seeded tiny AutoencoderDiTo, saved as a DiToPipeline folder at tmp_path/teacher: (vae, folder)."""
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
