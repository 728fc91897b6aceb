"""The training scripts' speed flags: --torch_compile, --channels_last, --optimizer_implementation, --allow_tf32.

Each must compute the same losses as the plain run (to float tolerance), train to the same weights up to Adam's
sensitivity, and save loadable folders. Their speed is measured by benchmarks/bench_train.py, never asserted here.
"""

import json
from pathlib import Path

import pytest
import torch
from script_helpers import fresh_accelerate_state, load_script, one_thread, reset_accelerate  # noqa: F401
from test_train_dito import run_args, train_dito, vae_weights, write_images  # noqa: F401

from conftest import tiny_dito_config
from diffusers_dito import AutoencoderDiTo
from diffusers_dito.training import performance


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    (root / "config.json").write_text(json.dumps(tiny_dito_config()))
    return write_images(root / "images"), root / "config.json"


@pytest.fixture(scope="module")
def plain_run(train_dito, setup, tmp_path_factory):
    run = run_with(train_dito, setup, tmp_path_factory.mktemp("plain") / "out")
    reset_accelerate()
    return run


def run_with(train_dito, setup, out: Path, *flags: str) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The weights saved after 2 steps, and each step's loss."""
    images, config = setup
    dump = out.parent / f"{out.name}-dump"
    train_dito.main(
        run_args(train_dito, out, images, config, "--max_train_steps", "2", "--checkpointing_steps", "1",
                 "--debug_dump_dir", str(dump), *flags)
    )  # fmt: skip
    AutoencoderDiTo.from_pretrained(out / "checkpoint-2" / "vae")  # the saved folder loads
    losses = [logs["loss"] for logs in json.loads((dump / "rank0.json").read_text())["step_logs"]]
    return vae_weights(out / "checkpoint-2" / "vae"), losses


@pytest.mark.parametrize(
    "flags",
    [
        ("--channels_last",),
        ("--optimizer_implementation", "foreach"),
        ("--optimizer_implementation", "fused"),
        ("--allow_tf32",),
        # aot_eager runs dynamo's capture and AOTAutograd, the parts that reject graph-unfriendly code, without
        # inductor's C++ code generation (minutes on 2 cores; docs/training.md#speed has that run's numbers).
        ("--torch_compile", "--torch_compile_backend", "aot_eager"),
    ],
    ids=lambda flags: "-".join(f.lstrip("-") for f in flags),
)
def test_speed_flags_train_the_same_model(train_dito, setup, plain_run, tmp_path, flags):
    tf32 = torch.backends.cuda.matmul.fp32_precision
    try:
        weights, losses = run_with(train_dito, setup, tmp_path / "out", *flags)
    finally:
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = tf32
    plain_weights, plain_losses = plain_run
    assert losses == pytest.approx(plain_losses, rel=1e-4)  # step 1: the same forward; step 2: after one update
    assert weights.keys() == plain_weights.keys()
    for name, tensor in weights.items():
        assert tensor.is_contiguous(), name  # what safetensors writes, whatever the layout in training
        # Adam's first steps move each weight by about the learning rate (1e-4) whatever the gradient's size, so a
        # rounding-level gradient difference can move a weight by up to that much; a wrong layout would move more.
        torch.testing.assert_close(tensor, plain_weights[name], rtol=0, atol=3e-4, msg=name)


def test_allow_tf32_sets_torch_precision(train_dito, setup, tmp_path):
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        performance.set_tf32(True)
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32",) * 2
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv


def test_optimizer_implementation_choices():
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert performance.optimizer_kwargs("auto", cpu) == {}  # torch's own choice on CPU: the numerics of before
    assert performance.optimizer_kwargs("fused", cpu) == {"fused": True}
    assert performance.optimizer_kwargs("foreach", cpu) == {"foreach": True}
    assert performance.optimizer_kwargs("for-loop", cpu) == {"foreach": False}


def test_bf16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, caplog):
    class CpuAccelerator:
        device, mixed_precision = torch.device("cpu"), "bf16"

    logger = __import__("logging").getLogger("speed-test")
    monkeypatch.setattr(performance, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="speed-test"):
        performance.warn_if_slow_precision(CpuAccelerator(), logger)
    assert "10.6x slower" in caplog.text
    caplog.clear()
    monkeypatch.setattr(performance, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="speed-test"):
        performance.warn_if_slow_precision(CpuAccelerator(), logger)
    assert not caplog.text
