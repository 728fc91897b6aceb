"""Nothing in the package reaches the network unless the user asks for it: every hub and socket entry point is
replaced by one that fails the test, then the normal paths run."""

import socket

import huggingface_hub
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import AutoencoderDiTo, DiToPipeline
from diffusers_dito.metrics import compute_metrics


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    for name in ("hf_hub_download", "snapshot_download", "model_info"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_normal_paths_make_no_network_calls(no_network, tiny_config, tmp_path):
    torch.manual_seed(0)
    pipe = DiToPipeline(vae=AutoencoderDiTo(**tiny_config()), scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DiToPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    x = torch.rand(2, 3, 32, 32)
    rec = loaded(x, num_inference_steps=1, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    report = compute_metrics(rec * 2 - 1, x * 2 - 1)
    assert {"psnr", "ssim", "swd", "hf_energy_ratio"} <= set(report.values)
    assert set(report.skipped) == {"lpips", "rfid", "fd_dinov2"}  # weights are never fetched on their own
