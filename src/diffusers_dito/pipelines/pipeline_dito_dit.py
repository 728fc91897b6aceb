# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
# Structure adapted from diffusers `pipelines/dit/pipeline_dit.py`, with a flow-matching latent ODE and DiTo decoding.
import math
from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..models.autoencoder_dito import AutoencoderDiTo
from ..models.dit_transformer import DiToDiTTransformer2DModel
from ..scheduling import retrieve_flow_match_timesteps
from .serialization import DiToPipelineLoadingMixin

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_dito import DIT_PRESETS, DITO_PRESETS, AutoencoderDiTo, DiToDiTPipeline
        >>> from diffusers_dito import DiToDiTTransformer2DModel

        >>> pipe = DiToDiTPipeline(
        ...     transformer=DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"]),
        ...     vae=AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"]),
        ...     scheduler=FlowMatchEulerDiscreteScheduler(),
        ...     id2label={0: "cat, kitty", 1: "dog"},
        ... )
        >>> out = pipe(pipe.get_label_ids(["kitty", "dog"]), num_inference_steps=2, decoder_num_inference_steps=2)
        >>> [image.size for image in out.images]
        [(32, 32), (32, 32)]

        ```
"""


class DiToDiTPipeline(DiToPipelineLoadingMixin, DiffusionPipeline):
    r"""
    Class-conditional generation: a DiT samples DiTo latents by flow matching (with classifier-free guidance), and
    DiTo decodes them.

    Args:
        transformer ([`DiToDiTTransformer2DModel`]): Predicts the latent velocity ε − z from (z_t, σ·1000, class).
        vae ([`AutoencoderDiTo`]): Decodes the sampled latents.
        scheduler ([`SchedulerMixin`]): A diffusers `FlowMatch*` scheduler for the latent ODE.
        id2label (`dict[int, str]`, *optional*): Class names; comma-separated synonyms, as in [`DiTPipeline`].
        decoder_scheduler ([`SchedulerMixin`], *optional*): The scheduler DiTo decodes the sampled latents with; saved
            and loaded with the pipeline, so a saved folder says how its images are decoded. Defaults to a
            `FlowMatchEulerDiscreteScheduler` (Euler on DiTo's uniform grid), which is also what a folder without a
            `decoder_scheduler` loads with.
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["decoder_scheduler"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: DiToDiTTransformer2DModel,
        vae: AutoencoderDiTo,
        scheduler: SchedulerMixin,
        id2label: dict | None = None,
        decoder_scheduler: SchedulerMixin | None = None,
    ):
        super().__init__()
        if decoder_scheduler is None:
            decoder_scheduler = FlowMatchEulerDiscreteScheduler()
        self.register_modules(
            transformer=transformer, vae=vae, scheduler=scheduler, decoder_scheduler=decoder_scheduler
        )
        if id2label is not None:
            id2label = {int(k): v for k, v in id2label.items()}  # JSON turns int keys into strings
        self.register_to_config(id2label=id2label)
        self.labels = {}
        for key, value in (id2label or {}).items():
            for label in value.split(","):
                self.labels[label.strip()] = key
        self.labels = dict(sorted(self.labels.items()))
        self.vae_scale_factor = self.vae.downsample_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)

    @property
    def num_classes(self) -> int:
        return self.transformer.config.num_embeds_ada_norm

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        r"""
        Map class names (any of the comma-separated synonyms in `id2label`) to class ids.

        Args:
            label (`str` or `list[str]`): Class names.

        Returns:
            `list[int]`: Class ids for `__call__`.
        """
        labels = [label] if isinstance(label, str) else list(label)
        for name in labels:
            if name not in self.labels:
                raise ValueError(f"{name!r} is not a known label; choose from: {list(self.labels)}.")
        return [self.labels[name] for name in labels]

    def check_inputs(self, class_labels, guidance_scale, num_inference_steps, output_type) -> list[int]:
        if isinstance(class_labels, int) and not isinstance(class_labels, bool):
            class_labels = [class_labels]
        elif isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.reshape(-1).tolist()
        if not isinstance(class_labels, (list, tuple)) or len(class_labels) == 0:
            raise ValueError(f"`class_labels` must be a non-empty list of class ids, got {class_labels!r}.")
        for label in class_labels:
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < self.num_classes:
                raise ValueError(f"Class labels must be ints in [0, {self.num_classes - 1}], got {label!r}.")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 1:
            raise ValueError(f"`guidance_scale` must be finite and >= 1 (1: no guidance), got {guidance_scale!r}.")
        self.vae.check_steps(num_inference_steps)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        return list(class_labels)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | int,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        decoder_num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images of the given classes.

        Args:
            class_labels (`list[int]` or `int`):
                Class ids in `[0, num_classes)`; see [`~DiToDiTPipeline.get_label_ids`].
            guidance_scale (`float`, *optional*, defaults to 2.0): Classifier-free guidance scale (the paper's 2.0);
                1 disables guidance. The unconditional branch uses the null class `num_classes`.
            num_inference_steps (`int`, *optional*, defaults to 50): Steps of the latent ODE.
            decoder_num_inference_steps (`int`, *optional*): DiTo decoding steps; defaults to the VAE's config.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): For the latent and decoder noise.
            latents (`torch.Tensor`, *optional*): Initial latent noise of shape `(B, C, s, s)`.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, *optional*, defaults to `True`): Return an [`ImagePipelineOutput`].
            callback_on_step_end (`Callable`, *optional*): `callback(pipe, step, timestep, callback_kwargs)` after
                every latent ODE step; may return a replacement `"latents"`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): Tensors passed in `callback_kwargs`.

        Returns:
            [`ImagePipelineOutput`] or `tuple`.
        """
        class_labels = self.check_inputs(class_labels, guidance_scale, num_inference_steps, output_type)
        if decoder_num_inference_steps is not None:
            self.vae.check_steps(decoder_num_inference_steps)
        if set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs):
            raise ValueError(f"`callback_on_step_end_tensor_inputs` must be in {self._callback_tensor_inputs}.")
        device = self._execution_device
        batch_size = len(class_labels)
        size = self.transformer.config.sample_size
        channels = self.transformer.config.in_channels
        shape = (batch_size, channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.transformer.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=device, dtype=self.transformer.dtype)

        do_cfg = guidance_scale > 1
        labels = torch.tensor(class_labels, device=device)  # (B,)
        if do_cfg:
            null = torch.full_like(labels, self.num_classes)
            labels = torch.cat([labels, null])  # (2B,): conditional, then unconditional

        timesteps = retrieve_flow_match_timesteps(self.scheduler, num_inference_steps, device=device)
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = torch.cat([latents, latents]) if do_cfg else latents  # (2B or B, C, s, s)
            timestep = t.expand(model_input.shape[0])  # σ·1000, the scale the transformer was trained with
            velocity = self.transformer(model_input, timestep=timestep, class_labels=labels).sample
            if do_cfg:
                cond, uncond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)  # (B, C, s, s)
            latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                callback_kwargs = {name: {"latents": latents}[name] for name in callback_on_step_end_tensor_inputs}
                latents = callback_on_step_end(self, i, t, callback_kwargs).pop("latents", latents)

        if output_type == "latent":
            images = latents
        else:
            z = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
            sample = self.vae.decode(
                z.to(self.vae.dtype),
                generator=generator,
                num_inference_steps=decoder_num_inference_steps,
                scheduler=self.decoder_scheduler,
            ).sample
            images = self.image_processor.postprocess(sample, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


DiToDiTPipeline.__call__.__doc__ += EXAMPLE_DOC_STRING
