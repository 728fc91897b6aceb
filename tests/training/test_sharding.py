"""diffusers_dito.training.sharding without a process group: what it says and does outside FSDP."""

import torch
from accelerate import Accelerator
from script_helpers import fresh_accelerate_state  # noqa: F401 (autouse fixture)

from diffusers_dito.training import sharding


def test_an_fsdp_config_on_cpu_is_named_in_one_line_and_the_test_switch_stays_off(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` exports for an FSDP config
    monkeypatch.delenv(sharding.TEST_FSDP_ON_CPU_ENV, raising=False)
    accelerator = Accelerator(cpu=True)
    assert not sharding.apply_test_fsdp_switch(accelerator) and not sharding.is_sharded(accelerator)
    message = sharding.fsdp_config_ignored_message(accelerator)
    assert message == "FSDP needs accelerators: this cpu run of an FSDP config is a single process, unsharded."
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert sharding.fsdp_config_ignored_message(accelerator) is None


def test_helpers_pass_unsharded_tensors_and_models_through():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    tensor = torch.ones(3)
    assert sharding.local(tensor) is tensor and sharding.full(tensor) is tensor
    assert sharding.shard_like(tensor, tensor) is tensor
    assert sharding.gathered_copy(accelerator, model, model) is model
    assert sharding.module_prefix(torch.nn.Sequential(model), model) == "0."
    assert sharding.original_class(model) is torch.nn.Linear
