# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""The weights a run trains, and their companions: the EMA (diffusers' `EMAModel`), peft LoRA adapters, the casting of
frozen weights, and a digest of a model's weights."""

import contextlib
import hashlib
import os

import safetensors.torch
import torch
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel, cast_training_params
from peft import LoraConfig
from peft.utils import set_peft_model_state_dict

from . import sharding
from .performance import memory_format

logger = get_logger(__name__, log_level="INFO")

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_adapter writes


def create_ema(
    trainable: list[torch.nn.Parameter], model: torch.nn.Module, decay: float, lora: bool, device
) -> EMAModel:
    """diffusers' EMA of `trainable`; of a whole model it can `save_pretrained` (a LoRA adapter has no model class)."""
    model_args = {} if lora else {"model_cls": type(model), "model_config": model.config}
    ema = EMAModel(trainable, decay=decay, **model_args)
    ema.to(device)
    return ema


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, params: list[torch.nn.Parameter]):
    """Swap the EMA weights into `params` for the duration of the block (no-op without EMA)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def load_ema_folder(ema: EMAModel, folder: str, model_cls: type) -> None:
    """Restore an EMA written by `EMAModel.save_pretrained`: weights in the model file, counters in its config. A
    sharded EMA (FSDP) gets each rank's slice of the saved weights."""
    state = {k: v for k, v in model_cls.load_config(folder).items() if k in ema.state_dict()}
    saved = [p.detach() for p in model_cls.from_pretrained(folder).parameters()]
    state["shadow_params"] = [sharding.shard_like(whole, p) for whole, p in zip(saved, ema.shadow_params)]
    ema.load_state_dict(state)


def save_ema_folder(ema: EMAModel, shadows: list[torch.Tensor], model: torch.nn.Module, folder: str) -> None:
    """`EMAModel.save_pretrained` from the EMA's whole tensors `shadows` (gathered from the shards under FSDP):
    `model`, a plain copy of the model whose parameters the EMA follows, takes them and the EMA's counters."""
    state = ema.state_dict()
    state.pop("shadow_params")
    model.register_to_config(**state)
    with torch.no_grad():
        for param, shadow in zip(model.parameters(), shadows, strict=True):
            param.copy_(shadow)
    model.save_pretrained(folder)


def trained_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that train. List them after `accelerator.prepare`: FSDP replaces them with sharded ones."""
    return [p for p in model.parameters() if p.requires_grad]


def add_lora(model: torch.nn.Module, rank: int, alpha: float | None, target_regex: str) -> None:
    """Freeze the model and inject peft LoRA adapters into the modules whose full name matches `target_regex`."""
    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha if alpha is not None else rank,
            target_modules=target_regex,  # a regex string: peft full-matches module names
            init_lora_weights=True,  # B = 0, so training starts from the pretrained model exactly
        )
    )


def setup_trained_weights(
    model: torch.nn.Module, args, device: torch.device, mixed_precision: str, lora_target_regex: str
) -> list[torch.nn.Parameter]:
    """LoRA adapters (with --lora_rank), gradient checkpointing and the device; returns the trained parameters, for
    the optimizer. The EMA is made after `accelerator.prepare` (`trained_parameters`)."""
    lora = args.lora_rank > 0
    if lora:
        add_lora(model, args.lora_rank, args.lora_alpha, lora_target_regex)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(device, memory_format=memory_format(args))  # --channels_last: NHWC conv weights
    if lora:
        cast_frozen_weights(model, mixed_precision)
    return trained_parameters(model)


def cast_frozen_weights(model: torch.nn.Module, mixed_precision: str) -> None:
    """With LoRA and fp16/bf16: frozen weights in half precision save memory; the adapters stay fp32 for Adam."""
    if mixed_precision in ("fp16", "bf16"):
        model.to(dtype=torch.float16 if mixed_precision == "fp16" else torch.bfloat16)
        cast_training_params(model, dtype=torch.float32)


def load_lora_state(model: torch.nn.Module, folder: str) -> None:
    state = safetensors.torch.load_file(os.path.join(folder, LORA_WEIGHT_NAME))
    result = set_peft_model_state_dict(model, state, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{folder} holds LoRA weights this model has no slot for: {result.unexpected_keys[:4]}")


def save_lora_adapter(model: torch.nn.Module, output_dir: str) -> None:
    """The adapter weights alone, with their LoRA config in the file's metadata."""
    model.save_lora_adapter(output_dir)
    logger.info(f"Saved the LoRA adapter to {os.path.join(output_dir, LORA_WEIGHT_NAME)}")


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(sharding.full(tensor).detach().float().cpu().numpy().tobytes())  # collective under FSDP
    return digest.hexdigest()
