# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""What a run under accelerate's FSDP2 needs beyond DDP, in one place.

Under FSDP2 `accelerator.prepare` replaces every parameter of the prepared module with a sharded `DTensor`: each rank
holds a slice. So the trained parameters and their EMA are listed after `prepare` (the EMA then shards too: each
rank keeps the EMA of its own slice), clipping and the finite-weights check work on the shards (`local`, with the
verdict all-reduced), and whatever needs whole weights (validation, the `save_pretrained` folders in a checkpoint,
the final model) gathers them with `accelerator.get_state_dict` into a plain copy of the model on the main process
(`gathered_copy`). accelerate's own `save_state`/`load_state` write and read the sharded model and optimizer, so
resume stays exact. Without FSDP none of this changes anything: every helper returns its input.

accelerate never selects FSDP on a CPU: launched on CPU, an FSDP config runs as plain multi-process DDP
(`warn_if_fsdp_config_ignored` says so in one line). torch's FSDP2 itself runs on CPU over gloo, so the tests set
`DITO_TEST_FSDP_ON_CPU=1`, which switches accelerate's state to FSDP after the `Accelerator` is built
(`apply_test_fsdp_switch`). It is a test-only switch, not supported for real runs.
"""

import os

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor, distribute_tensor

TEST_FSDP_ON_CPU_ENV = "DITO_TEST_FSDP_ON_CPU"  # test-only: run an FSDP launch config's FSDP2 path on CPU processes


def fsdp_config_launched() -> bool:
    """Whether `accelerate launch` was given an FSDP config (it exports `ACCELERATE_USE_FSDP`)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def apply_test_fsdp_switch(accelerator: Accelerator) -> bool:
    """With `DITO_TEST_FSDP_ON_CPU=1` and an FSDP launch config on CPU processes, run accelerate's FSDP path: set the
    distributed type on both of accelerate's shared states (an `AcceleratorState` built later copies it from the
    `PartialState`) and build the FSDP plugin from the launcher's `FSDP_*` variables. Returns whether it did."""
    if os.environ.get(TEST_FSDP_ON_CPU_ENV) != "1" or not fsdp_config_launched() or is_sharded(accelerator):
        return False
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        raise RuntimeError(f"{TEST_FSDP_ON_CPU_ENV} is for CPU test processes, not {accelerator.distributed_type}")
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    return True


def fsdp_config_ignored_message(accelerator: Accelerator) -> str | None:
    """One line for an FSDP launch config that accelerate runs without FSDP (on CPU: no accelerators)."""
    if not fsdp_config_launched() or is_sharded(accelerator):
        return None
    run = "multi-process DDP" if accelerator.num_processes > 1 else "a single process"
    return f"FSDP needs accelerators: this {accelerator.device.type} run of an FSDP config is {run}, unsharded."


def original_class(model: torch.nn.Module) -> type:
    """The model's own class: FSDP2 gives a module it wraps a subclass named `FSDP<class>`."""
    return next(cls for cls in type(model).__mro__ if not cls.__name__.startswith("FSDP"))


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a sharded tensor; any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every rank for a sharded one (every rank must call it, in the same order)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def all_ranks_agree(flags: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    """`flags` (one per tensor, 1.0 = fine) AND-ed over the ranks when the tensors are shards; else as they are."""
    if any(isinstance(t, DTensor) for t in tensors) and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
    return flags


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` sharded as `like` is (a `DTensor`), or `whole` itself where `like` is not sharded."""
    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole.to(like.device, like.dtype), like.device_mesh, like.placements)


def module_prefix(root: torch.nn.Module, model: torch.nn.Module) -> str:
    """The state-dict prefix of `model` inside the prepared `root` ("" when it is the root itself)."""
    name = next(name for name, module in root.named_modules() if module is model)
    return f"{name}." if name else ""


def gathered_copy(accelerator: Accelerator, root: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module | None:
    """
    Under FSDP: a plain, unsharded copy of `model` (a module inside the prepared `root`, or `root` itself) with its
    whole weights, on the main process, and None on the others; every rank must call it. Without FSDP: `model`.
    """
    if not is_sharded(accelerator):
        return model
    state = accelerator.get_state_dict(root)  # collective; the whole state dict lands on the main process
    if not accelerator.is_main_process:
        return None
    prefix = module_prefix(root, model)
    copy = original_class(model).from_config(model.config)
    copy.load_state_dict({key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)})
    return copy.to(accelerator.device).eval()
