# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""The training objectives as modules, so that DistributedDataParallel (which syncs gradients only for computations run
through the wrapped module's `forward`) and FSDP see the whole step: `DiToTrainingObjective` (train_dito.py) and
`DistillationObjective` with its teacher targets and its student (distill_dito.py). The loss math itself lives in
`diffusers_dito.losses`.
"""

import inspect
import json
import os
import types
import typing

import torch
from accelerate.logging import get_logger

from ..losses import dito_flow_matching_loss, laplacian_l2_loss, patch_sliced_wasserstein_loss
from ..models.autoencoder_dito import AutoencoderDiTo
from ..models.presets import STUDENT_DECODER_PRESETS
from ..pipelines.loading import load_component
from ..safe_loading import read_json_object
from .data import seed_from

logger = get_logger(__name__, log_level="INFO")

LOSS_TYPES = ("l2", "laplacian")  # the distillation loss between the student's and the teacher's decodes
SWD_NOISES = ("fresh", "paired")  # the noise the distribution term's student decode starts from
_CONFIG_PARAMETERS = inspect.signature(AutoencoderDiTo.__init__).parameters
# What a student's config may change: its decoder alone. The encoder, the latent channels and the latent layer norm
# stay the teacher's, so the student decodes the teacher's latents (and those of every cache and DiT trained on them).
STUDENT_CONFIG_KEYS = tuple(name for name in _CONFIG_PARAMETERS if name.startswith("decoder_"))


class DiToTrainingObjective(torch.nn.Module):
    """`dito_flow_matching_loss` as a module's forward: DistributedDataParallel syncs gradients only for computations
    run through the wrapped module's `forward`, and the loss calls `vae.encode`/`vae.predict_velocity` directly."""

    def __init__(
        self,
        vae: AutoencoderDiTo,
        noise_sync_prob: float,
        lpips_model=None,
        lpips_weight: float = 0.0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        super().__init__()
        self.vae, self.noise_sync_prob = vae, noise_sync_prob
        self.lpips_model, self.lpips_weight = lpips_model, lpips_weight  # frozen: not in the optimizer or checkpoints
        self.memory_format = memory_format  # of each batch, the same as the weights' (--channels_last)

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        out = dito_flow_matching_loss(
            self.vae,
            images.contiguous(memory_format=self.memory_format),
            noise_sync_prob=self.noise_sync_prob,
            generator=generator,
            lpips_model=self.lpips_model,
            lpips_weight=self.lpips_weight,
        )
        return dict(out)  # a plain dict survives accelerate's fp32 output conversion; rebuilt by the caller


class DistillationObjective(torch.nn.Module):
    """The student's decode of (z, ε) against the teacher's, as a module's forward: DistributedDataParallel syncs
    gradients only for computations run through the wrapped module's `forward`."""

    def __init__(
        self,
        student: AutoencoderDiTo,
        student_steps: int,
        data_loss_weight: float,
        loss_type: str = "l2",
        laplacian_levels: int = 3,
        laplacian_fine_weight: float = 4.0,
        swd_loss_weight: float = 0.0,
        swd_noise: str = "fresh",
    ):
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}.")
        if swd_noise not in SWD_NOISES:
            raise ValueError(f"`swd_noise` must be one of {SWD_NOISES}, got {swd_noise!r}.")
        self.student, self.student_steps, self.data_loss_weight = student, student_steps, data_loss_weight
        self.loss_type = loss_type
        self.laplacian = {"num_levels": laplacian_levels, "fine_weight": laplacian_fine_weight}
        self.swd_loss_weight, self.swd_noise = swd_loss_weight, swd_noise

    def forward(
        self,
        latents: torch.Tensor,
        targets: torch.Tensor,
        images: torch.Tensor,
        noise_seed: int | list[int],
        fresh_seed: int = 0,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        # The same seed(s) as the teacher's decode: the same ε, drawn by `decode` itself.
        generator = noise_generators(noise_seed, latents.device)
        sample = self.student.decode(latents, generator=generator, num_inference_steps=self.student_steps).sample
        if self.loss_type == "laplacian":
            distill_loss = laplacian_l2_loss(sample, targets, **self.laplacian)  # (B,)
        else:
            distill_loss = (sample.float() - targets.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        data_loss = (sample.float() - images.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        loss = distill_loss + self.data_loss_weight * data_loss if self.data_loss_weight else distill_loss
        swd_loss = self.distribution_loss(latents, targets, sample, fresh_seed, valid)  # scalar: one per batch
        if self.swd_loss_weight:
            loss = loss + self.swd_loss_weight * swd_loss
        swd_loss = swd_loss.detach().expand_as(distill_loss)  # (B,), for the per-sample logs
        return {"per_sample_loss": loss, "distill_loss": distill_loss, "data_loss": data_loss, "swd_loss": swd_loss}

    def distribution_loss(
        self, latents: torch.Tensor, targets: torch.Tensor, sample: torch.Tensor, fresh_seed: int, valid
    ) -> torch.Tensor:
        """The batch's patch SWD to the teacher's decodes (0 without --swd_loss_weight), on the readable images.
        With fresh noise the student decodes the same latents again from ε drawn from `fresh_seed`: the term
        needs no teacher decode of that noise, so the student meets new noise every step."""
        keep = slice(None) if valid is None else valid.bool()
        if not self.swd_loss_weight or (valid is not None and not keep.any()):
            return sample.new_zeros(())
        if self.swd_noise == "fresh":
            generator = torch.Generator(device=latents.device).manual_seed(fresh_seed)
            sample = self.student.decode(latents, generator=generator, num_inference_steps=self.student_steps).sample
        directions = torch.Generator().manual_seed(fresh_seed)  # CPU: the same directions on every device
        return patch_sliced_wasserstein_loss(sample[keep], targets[keep], generator=directions)


def noise_generators(noise_seed: int | list[int], device) -> torch.Generator | list[torch.Generator]:
    """One generator for the batch's ε, or one per image (`--cache_teacher_targets`: ε fixed per image)."""
    if isinstance(noise_seed, int):
        return torch.Generator(device=device).manual_seed(noise_seed)
    return [torch.Generator(device=device).manual_seed(seed) for seed in noise_seed]


@torch.no_grad()
def teacher_targets(
    teacher: AutoencoderDiTo, images: torch.Tensor, noise_seed: int | list[int], steps: int, accelerator
) -> tuple[torch.Tensor, torch.Tensor]:
    """z = E(x) and the teacher's `steps`-step decode of (z, ε), with ε drawn from `noise_seed` (one per image when
    a list)."""
    generator = noise_generators(noise_seed, images.device)
    with accelerator.autocast():
        latents = teacher.encode(images).latents  # (B, C, h, w)
        targets = teacher.decode(latents, generator=generator, num_inference_steps=steps).sample  # (B, 3, H, W)
    return latents, targets


class TeacherTargetCache:
    """`--cache_teacher_targets`: each training image's (image, z, teacher decode), decoded the first time the image
    is drawn, from ε fixed per image (seeded by (seed, index)), and reused in later epochs.

    On a CPU the teacher's many-step decode costs about ten student steps, so with a small dataset (choose its size
    with --max_train_samples) the student takes many more steps in the same time on a fixed set of (z, ε) pairs.
    Resuming stays exact: a batch with any new image is decoded whole, so the teacher always decodes full batches,
    and each image's decode does not depend on the others in its batch. Memory: three image-sized tensors per image.
    """

    NOISE_KEY = 0x7461726765  # keeps these seeds apart from the per-batch ones: seed_from(seed, NOISE_KEY, index)

    def __init__(self, teacher: AutoencoderDiTo, steps: int, seed: int):
        self.teacher, self.steps, self.seed = teacher, steps, seed
        self.entries: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def noise_seeds(self, indices: list[int]) -> list[int]:
        return [seed_from(self.seed, self.NOISE_KEY, index) for index in indices]

    def lookup(self, batch: dict, accelerator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """The batch's images, latents and targets (each `(B, ...)`), and its per-image noise seeds."""
        indices = batch["index"].tolist()
        seeds = self.noise_seeds(indices)
        if any(index not in self.entries for index in indices):
            images = batch["pixel_values"]  # (B, 3, R, R)
            latents, targets = teacher_targets(self.teacher, images, seeds, self.steps, accelerator)
            for k, index in enumerate(indices):
                self.entries.setdefault(index, (images[k], latents[k], targets[k]))
        images, latents, targets = (torch.stack(column) for column in zip(*(self.entries[i] for i in indices)))
        return images, latents, targets, seeds


def build_student(
    teacher_path: str,
    student_steps: int,
    cache_dir: str | None = None,
    gradient_checkpointing: bool = False,
    student_config: dict | None = None,
    seed: int = 0,
) -> AutoencoderDiTo:
    """A copy of the teacher at `teacher_path` whose config decodes in `student_steps`, its decoder reshaped by
    `student_config` (decoder overrides, `student_decoder_overrides`; None or `{}`: the teacher's own shape, and
    `seed` is not used). Only its decoder trains, so its encoder (and the latent space) stays the teacher's, bit for
    bit."""
    student = load_component(AutoencoderDiTo, teacher_path, "vae", cache_dir)
    if student_config:
        student = reshaped_student(student, student_config, student_steps, seed)
    student.register_to_config(num_inference_steps=student_steps)
    student.requires_grad_(False)
    student.decoder_unet.requires_grad_(True).train()
    if gradient_checkpointing:
        student.enable_gradient_checkpointing()
    return student


def reshaped_student(teacher: AutoencoderDiTo, overrides: dict, student_steps: int, seed: int) -> AutoencoderDiTo:
    """A new model of the teacher's config with the decoder `overrides`: the teacher's encoder bit for bit, and each
    decoder tensor whose name and shape are the teacher's with the teacher's values (with fewer ResNets per level, the
    first ones of each level, and the outer layers where their widths are kept); the others keep diffusers' fresh
    initialisation, drawn from `seed` alone."""
    # A one-step student need not be a good multi-step denoiser, only map (z, ε) to the teacher's decode in one
    # evaluation, so it need not keep the teacher's shape: a lighter decoder decodes faster. Where its tensors keep
    # the teacher's name and shape they start from what the teacher learned rather than from noise.
    config = student_model_config(dict(teacher.config), overrides, student_steps)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(seed)
        student = AutoencoderDiTo.from_config(config)
    for name, module in student.named_children():  # strict: every non-decoder weight is the teacher's
        if name != "decoder_unet":
            module.load_state_dict(getattr(teacher, name).state_dict())
    source = teacher.decoder_unet.state_dict()
    fresh = student.decoder_unet.state_dict()
    copied = {name: source[name] for name, t in fresh.items() if name in source and source[name].shape == t.shape}
    student.decoder_unet.load_state_dict(copied, strict=False)
    copied_numel = sum(t.numel() for t in copied.values())
    fresh_numel = sum(t.numel() for name, t in fresh.items() if name not in copied)
    logger.info(
        f"Student decoder {json.dumps(overrides)}: {len(copied)} tensors ({copied_numel / 1e6:.3f}M values) start "
        f"from the teacher's, {len(fresh) - len(copied)} ({fresh_numel / 1e6:.3f}M) freshly initialised (seed "
        f"{seed}); the encoder is the teacher's, bit for bit."
    )
    return student


def student_decoder_overrides(value: str) -> dict:
    r"""
    The decoder overrides that `--student_config` names: a `STUDENT_DECODER_PRESETS` name, an inline JSON object, or
    the path of a JSON file holding one. Only the decoder's keys (`STUDENT_CONFIG_KEYS`) are allowed, each of its
    config type; JSON lists become tuples, as in the presets.

    Raises:
        `ValueError`: One line that says what is wrong with `value` (it reads after the flag's name).

    Examples:
        ```py
        >>> from diffusers_dito.training.objectives import student_decoder_overrides

        >>> student_decoder_overrides("slim"), student_decoder_overrides('{"decoder_block_out_channels": [16, 32]}')
        ({'decoder_layers_per_block': 1}, {'decoder_block_out_channels': (16, 32)})

        ```
    """
    if value in STUDENT_DECODER_PRESETS:
        overrides = STUDENT_DECODER_PRESETS[value]
    elif value.lstrip().startswith("{"):
        try:
            overrides = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{value} is not valid JSON ({err}).") from None
    elif os.path.isfile(value):
        overrides = read_json_object(value)
    else:
        presets = ", ".join(STUDENT_DECODER_PRESETS)
        raise ValueError(f"{value} is neither a preset ({presets}), a JSON object nor an existing JSON file.")
    if not isinstance(overrides, dict):
        raise ValueError(f"{value} must be a JSON object of decoder settings, got {overrides!r:.60}.")
    return {name: _decoder_setting(name, setting) for name, setting in overrides.items()}


def _decoder_setting(name: str, value):
    """`value` of the config key `name` as its `AutoencoderDiTo.__init__` annotation has it (int, `int | None`, bool
    or `tuple[int, ...]`, a JSON list as a tuple), or a `ValueError`."""
    if name not in STUDENT_CONFIG_KEYS:
        what = "an encoder or latent setting" if name in _CONFIG_PARAMETERS else "not an AutoencoderDiTo config key"
        raise ValueError(
            f"sets `{name}`, {what}: a student keeps the teacher's encoder and latents, and may change only "
            f"{', '.join(STUDENT_CONFIG_KEYS)}."
        )
    annotation = _CONFIG_PARAMETERS[name].annotation
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if (value is None and type(None) in options) or (isinstance(value, bool) and bool in options):
        return value
    least = 0 if name == "decoder_freq_shift" else 1  # a width, count or size of 0 builds a degenerate decoder
    if _is_int(value) and int in options:
        if value < least:
            raise ValueError(f"sets `{name}` to {value}; it must be at least {least}.")
        return value
    if tuple[int, ...] in options and isinstance(value, list | tuple) and all(_is_int(v) for v in value):
        if not value or min(value) < 1:
            raise ValueError(f"sets `{name}` to {list(value)}; it must list widths of at least 1.")
        return tuple(value)
    raise ValueError(f"sets `{name}` to {value!r}; it must be {inspect.formatannotation(annotation)}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def student_model_config(teacher_config: dict, overrides: dict, student_steps: int) -> dict:
    """The student's `AutoencoderDiTo` config: the teacher's, with the decoder `overrides` and `num_inference_steps =
    student_steps`; a one-line `ValueError` where no model can be built from it (checked on the meta device: no
    memory, no initialisation)."""
    config = {**teacher_config, **overrides, "num_inference_steps": student_steps}
    try:
        with torch.device("meta"):
            AutoencoderDiTo.from_config(config)
    except (ValueError, TypeError, RuntimeError) as err:
        message = " ".join(str(err).split())  # one line
        raise ValueError(f"{json.dumps(overrides)} gives a decoder that cannot be built: {message}") from None
    return config
