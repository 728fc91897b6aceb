import os
import tempfile

# No test may reach a model hub: everything is built or written locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# `trust_remote_code` loading copies the folder's pipeline.py into the modules cache: keep it out of ~/.cache.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="dito-hf-modules-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_dito_config(**overrides) -> dict:
    """A ~0.1M-parameter f8 DiTo for fast unit tests (channels 8-32, seed-independent)."""
    config = {
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
    config.update(overrides)
    return config


@pytest.fixture
def tiny_config():
    return tiny_dito_config
