import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# No test may reach a model hub: everything is built or written locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# pytest-xdist (`-n auto` in pyproject.toml) runs one worker per core: each worker, and every process it starts,
# gets its share of the cores, so that workers do not fight over them (subprocesses' torch reads `OMP_NUM_THREADS`).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
# `trust_remote_code` loading copies the folder's pipeline.py into the modules cache: keep it out of ~/.cache, in a
# folder removed when the session ends (subprocesses of the tests inherit the variable and use the same folder).
if "HF_MODULES_CACHE" not in os.environ:
    _modules_cache = tempfile.TemporaryDirectory(prefix="dito-hf-modules-")
    os.environ["HF_MODULES_CACHE"] = _modules_cache.name
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from filelock import FileLock  # noqa: E402

torch.set_num_threads(THREADS)


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


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Photo-like test images in [-1, 1]: random low-frequency colour fields plus one sharp edge each."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    x = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x[:, :, size // 2 :, : size // 3] *= -1
    return x.clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).mean().item()
    return 10 * math.log10(4.0 / mse)  # peak-to-peak range of [-1, 1] is 2


def run_python(code: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -c code *args` in a fresh interpreter (offline, plus `env`); asserts it exited with 0."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_dito_tiny(next_batch, steps: int, config: dict | None = None, lr: float = 2e-3):
    """A DiTo (dito-tiny unless `config` is given) from seed 0, trained with AdamW at `lr` on `next_batch(generator)`
    for `steps` steps."""
    from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, dito_flow_matching_loss

    torch.manual_seed(0)
    vae = AutoencoderDiTo.from_config(config or DITO_PRESETS["dito-tiny"])
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = dito_flow_matching_loss(vae, next_batch(g), generator=g).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return vae.eval()


def trained_once(tmp_path_factory, name: str, train):
    """`train()`'s AutoencoderDiTo, trained once per test run. Under pytest-xdist, session fixtures run once per
    worker: the first worker to need the model trains and saves it, and any other loads it (the pattern of
    pytest-xdist's docs), so a run pays for each trained model once whatever the number of workers."""
    from diffusers_dito import AutoencoderDiTo

    if "PYTEST_XDIST_WORKER" not in os.environ:
        return train()
    folder = tmp_path_factory.getbasetemp().parent / name  # shared by the workers of this run
    with FileLock(f"{folder}.lock"):
        if not (folder / "config.json").is_file():
            train().save_pretrained(folder)
    return AutoencoderDiTo.from_pretrained(folder).eval()


# The test modules that use `overfit_tiny` or `photo_tiny`.
TRAINED_MODEL_MODULES = (
    "tests/test_sign_check.py::",
    "tests/models/test_tiling.py::",
    "tests/training/test_distill_dito.py::",
)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's `--dist loadgroup` (pyproject.toml), with the modules that use a trained model in one group:
    one worker runs them all, so the models are trained once and no worker waits idle for another's training, and
    the other tests are handed out one at a time. (The group is named here by module because pytest-xdist 3.8 cannot
    read `xdist_group` marks under pytest 9.2, whose node ids it no longer rewrites.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class TrainedModelGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "trained_tiny" if nodeid.startswith(TRAINED_MODEL_MODULES) else super()._split_scope(nodeid)

    return TrainedModelGroupScheduling(config, log)


@pytest.fixture(scope="session")
def overfit_tiny(tmp_path_factory):
    """The 0.3M-parameter `tiny_dito_config` DiTo trained for 350 steps on 4 smooth 32² images (lr 5e-3); shared by
    the sign check and the tiling tests. (dito-tiny, 4.9M parameters, needed 200 steps at twice the cost.)"""
    x = smooth_images(4, 32)

    def train():
        return train_dito_tiny(lambda g: x, steps=350, config=tiny_dito_config(), lr=5e-3)

    return trained_once(tmp_path_factory, "overfit_tiny", train), x


# dito-tiny's shape (four levels, two layers per decoder block, so the same receptive field for the tiling tests) at
# half its widths: 1.2M parameters against 4.9M, about a third of its time per training step and decode.
PHOTO_TINY_CONFIG = {
    **tiny_dito_config(),
    "block_out_channels": (16, 32, 32, 32),
    "decoder_block_out_channels": (16, 32, 48, 48),
    "decoder_layers_per_block": 2,
    "decoder_time_embedding_dim": 64,
    "num_inference_steps": 4,
}


@pytest.fixture(scope="session")
def photo_tiny(tmp_path_factory):
    """`PHOTO_TINY_CONFIG` trained for 150 steps on random 32² crops of the training photos. Unlike `overfit_tiny`
    it generalises to held-out photos and to larger images, which the tiling tests decode, and it is the distillation
    tests' teacher."""
    from diffusers_dito.sample_data import TRAIN_PHOTOS, photo_crops

    def train():
        data = photo_crops(256, 32, 32, TRAIN_PHOTOS, seed=0)  # (256, 3, 32, 32) in [-1, 1]
        return train_dito_tiny(
            lambda g: data[torch.randint(0, len(data), (8,), generator=g)], steps=150, config=PHOTO_TINY_CONFIG
        )

    return trained_once(tmp_path_factory, "photo_tiny", train)


@pytest.fixture(scope="session")
def cli_folders(tmp_path_factory):
    """Saved `dito/`, `bare-vae/` and `dit/` model folders and a few images, for the CLI tests."""
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from PIL import Image

    from diffusers_dito import (
        DIT_PRESETS,
        AutoencoderDiTo,
        DiToDiTPipeline,
        DiToDiTTransformer2DModel,
        DiToPipeline,
    )

    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_dito_config())
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(root / "dito")
    vae.save_pretrained(root / "bare-vae")
    dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
    DiToDiTPipeline(dit, vae, FlowMatchEulerDiscreteScheduler(), id2label={3: "cat"}).save_pretrained(root / "dit")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(root / "gray.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root
