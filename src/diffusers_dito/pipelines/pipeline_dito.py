# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
# Structure adapted from diffusers `pipelines/dit/pipeline_dit.py`.
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import SchedulerMixin

from ..image_utils import to_rgb
from ..models.autoencoder_dito import AutoencoderDiTo
from .serialization import DiToPipelineLoadingMixin

OUTPUT_TYPES = ("pil", "np", "pt", "latent")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import numpy as np
        >>> import PIL.Image
        >>> import torch
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToPipeline

        >>> vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
        >>> pipe = DiToPipeline(vae, FlowMatchEulerDiscreteScheduler())
        >>> image = PIL.Image.fromarray(np.zeros((37, 53, 3), dtype=np.uint8))  # any size: padded, then cropped
        >>> out = pipe(image, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].size
        (53, 37)

        ```
"""


def _uint8_to_unit(image):
    """An 8-bit array or tensor (0–255, like PIL's pixels) as float in [0, 1], diffusers' convention for arrays."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
        return image.float() / 255.0
    return image


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom/right up to multiples of `multiple`, by reflection where the image allows."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    # Reflection needs the pad to be smaller than the side; tiny images fall back to edge replication.
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)  # (B, C, H + pad_h, W + pad_w)


class DiToPipeline(DiToPipelineLoadingMixin, DiffusionPipeline):
    r"""
    Reconstruction with a DiTo autoencoder: encode images to latent tokens, then decode them by integrating the
    flow-matching ODE with `scheduler`.

    Images of any size work: they are padded (by reflection) to multiples of the down-sampling factor, and the
    reconstruction is cropped back to the input size.

    Args:
        vae ([`AutoencoderDiTo`]): The DiTo autoencoder.
        scheduler ([`SchedulerMixin`]): A diffusers `FlowMatch*` scheduler, e.g. `FlowMatchEulerDiscreteScheduler`.
    """

    model_cpu_offload_seq = "vae"
    _callback_tensor_inputs = ["sample"]

    def __init__(self, vae: AutoencoderDiTo, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(vae=vae, scheduler=scheduler)
        self.vae_scale_factor = self.vae.downsample_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)

    # ------------------------------------------------------------------ inputs
    def _preprocess(self, image) -> torch.Tensor:
        valid = (PIL.Image.Image, np.ndarray, torch.Tensor)
        items = image if isinstance(image, list) else [image]
        if len(items) == 0 or not all(isinstance(i, valid) for i in items):
            raise TypeError(
                "`image` must be a PIL image, a numpy array, a torch tensor, or a list of them (diffusers "
                f"`VaeImageProcessor` conventions), got {type(image).__name__}."
            )
        kinds = {type(i) if not isinstance(i, PIL.Image.Image) else PIL.Image.Image for i in items}
        if len(kinds) > 1:
            raise TypeError(
                f"A list of images must hold one kind of image, got {sorted(k.__name__ for k in kinds)}; convert "
                "them all to PIL images (or all to arrays) first."
            )
        for item in items:
            size = item.size if isinstance(item, PIL.Image.Image) else None
            if size is not None and 0 in size:
                raise ValueError(f"`image` has size {size}; images must be at least 1×1 pixel.")
        items = [_uint8_to_unit(i) for i in items]  # uint8 means 0–255, as in PIL; floats are read as [0, 1]
        image = items if isinstance(image, list) else items[0]
        if isinstance(image, list) or isinstance(image, PIL.Image.Image):
            items = [to_rgb(i) if isinstance(i, PIL.Image.Image) else i for i in items]  # L, RGBA, P, CMYK, 16-bit
            image = items if isinstance(image, list) else items[0]
        sizes = {i.size if isinstance(i, PIL.Image.Image) else None for i in items}
        if len(sizes) > 1:
            raise ValueError(f"All images in a batch must have the same size, got sizes {sorted(sizes)}.")
        if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim not in (2, 3, 4):
            raise ValueError(f"Array images must be (H, W), (H, W, C), or (B, ...) arrays, got shape {image.shape}.")
        if isinstance(image, (np.ndarray, torch.Tensor)) and 0 in image.shape:
            raise ValueError(f"`image` has shape {tuple(image.shape)}; images must be at least 1×1 pixel.")
        try:
            x = self.image_processor.preprocess(image)  # (B, C, H, W) in [-1, 1]
        except (ValueError, TypeError, RuntimeError) as err:
            raise ValueError(f"Could not read `image` as an image batch: {err}") from err
        if x.shape[1] == 1:
            x = x.expand(-1, self.vae.config.in_channels, -1, -1)  # grayscale -> RGB
        if x.shape[1] != self.vae.config.in_channels:
            raise ValueError(
                f"`image` must have {self.vae.config.in_channels} channels (or 1, grayscale); got shape "
                f"{tuple(x.shape)} after preprocessing (channels-first for tensors, channels-last for arrays)."
            )
        return x

    def _scale_latents(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def _unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.vae.config.scaling_factor + self.vae.config.shift_factor

    def check_inputs(self, image, latents, height, width, output_type, callback_on_step_end_tensor_inputs) -> None:
        """Checks `__call__`'s arguments before any work, except the images, which are checked as they are read, and
        the step count and `sigmas`, which `vae.retrieve_timesteps` checks, for `vae.decode` too."""
        if (image is None) == (latents is None):
            raise ValueError("Pass exactly one of `image` (to reconstruct) or `latents` (to decode).")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs):
            raise ValueError(f"`callback_on_step_end_tensor_inputs` must be in {self._callback_tensor_inputs}.")
        if image is not None and (height is not None or width is not None):
            raise ValueError("`height` and `width` apply to `latents` only; an `image` keeps its own size.")
        if latents is not None:
            self.vae.check_latents(latents)
            self.check_output_size(height, width, latents.shape[-2:])

    def check_output_size(self, height, width, latent_size) -> None:
        """`height`/`width` with `latents`: ints that the latent's size could have come from (padding < f)."""
        f = self.vae_scale_factor
        for name, value, side in (("height", height, latent_size[0]), ("width", width, latent_size[1])):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"`{name}` must be an int, got {value!r}.")
            if not (side - 1) * f < value <= side * f:
                raise ValueError(
                    f"`{name}` {value} does not fit latents of size {side}: it must be in "
                    f"[{(side - 1) * f + 1}, {side * f}] (the image side before padding to a multiple of {f})."
                )

    @torch.no_grad()
    def encode(self, image) -> torch.Tensor:
        r"""
        Encode images to latents, scaled by the VAE's `scaling_factor`/`shift_factor` (identity for DiTo's default).

        Args:
            image: a PIL image, a numpy array or torch tensor in [0, 1] (diffusers' convention), or a list of them.
                Any size.

        Returns:
            `torch.Tensor` of shape `(B, latent_channels, ceil(H / f), ceil(W / f))`.
        """
        x = self._preprocess(image)
        x = pad_to_multiple(x, self.vae_scale_factor).to(device=self._execution_device, dtype=self.vae.dtype)
        return self._scale_latents(self.vae.encode(x).latents)

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | list | None = None,
        latents: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        sigmas: list[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("sample",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Reconstruct `image`, or decode `latents`.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them, *optional*):
                Images to reconstruct, following `VaeImageProcessor` conventions. Any size.
            latents (`torch.Tensor` of shape `(B, latent_channels, h, w)`, *optional*):
                Latents from [`~DiToPipeline.encode`] to decode instead of `image`.
            num_inference_steps (`int`, *optional*): ODE steps; defaults to `vae.config.num_inference_steps`.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator(s) for the decoder's initial noise; a list gives each image its own seed.
            height (`int`, *optional*), width (`int`, *optional*):
                With `latents`, crop the decoded images to this size (the size of the original images).
            sigmas (`list[float]`, *optional*): A custom descending σ grid (see `AutoencoderDiTo.decode`).
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"`, or `"latent"` (encode
                only).
            return_dict (`bool`, *optional*, defaults to `True`): Return an [`ImagePipelineOutput`].
            callback_on_step_end (`Callable`, *optional*):
                Called as `callback_on_step_end(pipe, step, timestep, callback_kwargs)` after every ODE step; may
                return a dict with a replacement `"sample"`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): Tensors passed in `callback_kwargs`.

        Returns:
            [`ImagePipelineOutput`] or `tuple`.
        """
        self.check_inputs(image, latents, height, width, output_type, callback_on_step_end_tensor_inputs)
        device = self._execution_device
        # The grid `vae.decode` will integrate on (Heun's has 2N - 1 steps): it checks the step count and `sigmas`
        # before any work, and its length is the bar's, per decode pass.
        num_steps = len(self.vae.retrieve_timesteps(num_inference_steps, self.scheduler, sigmas, device))

        if image is not None:
            x = self._preprocess(image)
            height, width = x.shape[-2:]
            x = pad_to_multiple(x, self.vae_scale_factor).to(device=device, dtype=self.vae.dtype)
            z = self.vae.encode(x).latents  # (B, C, H'/f, W'/f)
        else:
            z = self._unscale_latents(latents.to(device=device, dtype=self.vae.dtype))

        if output_type == "latent":
            images = self._scale_latents(z)
        else:
            passes = z.shape[0] if self.vae.use_slicing else 1
            with self.progress_bar(total=num_steps * passes) as progress:

                def on_step_end(step: int, timestep: torch.Tensor, callback_kwargs: dict) -> dict:
                    progress.update()
                    if callback_on_step_end is None:
                        return callback_kwargs
                    return callback_on_step_end(self, step, timestep, callback_kwargs)

                sample = self.vae.decode(
                    z,
                    generator=generator,
                    num_inference_steps=num_inference_steps,
                    scheduler=self.scheduler,
                    sigmas=sigmas,
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                ).sample  # (B, 3, h·f, w·f), finite, in [-1, 1]
            sample = sample[:, :, : height or sample.shape[-2], : width or sample.shape[-1]]  # crop the padding
            images = self.image_processor.postprocess(sample, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


DiToPipeline.__call__.__doc__ += EXAMPLE_DOC_STRING
