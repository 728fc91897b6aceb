# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
#
# DiTo: "Diffusion Autoencoders are Scalable Image Tokenizers" (Chen et al., arXiv 2501.18593).
# Structure adapted from diffusers `models/autoencoders/consistency_decoder_vae.py` (an autoencoder whose decoder is
# a diffusion UNet) and `autoencoder_kl.py` (the encode/decode API that stock pipelines call).
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, Encoder
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DModel
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from diffusers.utils.torch_utils import randn_tensor

from ..hub import RemoteCodeMixin
from ..safe_loading import SafetensorsOnlyMixin
from ..scheduling import retrieve_flow_match_timesteps
from .group_norm_sync import GroupNormStatistics
from .latent_distribution import DiToLatentDistribution
from .tiling import iter_tiles, tiled_map


@dataclass
class AutoencoderDiToEncoderOutput(BaseOutput):
    r"""
    Output of [`AutoencoderDiTo.encode`].

    Args:
        latent_dist (`DiToLatentDistribution`):
            The deterministic latent, behind the `sample()`/`mode()` interface that stock pipelines use.
        latents (`torch.Tensor` of shape `(batch_size, latent_channels, height // f, width // f)`):
            The same latent as a plain tensor.
    """

    latent_dist: DiToLatentDistribution
    latents: torch.Tensor


MAX_INFERENCE_STEPS = 1000  # ODE steps: far past any quality gain, and a bound on the run time a typo can cost


def downsample_factor_of(config: dict) -> int:
    r"""
    The spatial down-sampling factor f of an [`AutoencoderDiTo`] config, `2 ** (len(block_out_channels) - 1)`, read
    from the dict (a `config.json`, a preset) without building the model; a config that leaves `block_out_channels`
    out has the default's f. A model's own is [`AutoencoderDiTo.downsample_factor`].

    Examples:
        ```py
        >>> from diffusers_dito import DITO_PRESETS
        >>> from diffusers_dito.models.autoencoder_dito import downsample_factor_of

        >>> downsample_factor_of(DITO_PRESETS["dito-tiny"]), downsample_factor_of({"block_out_channels": [8, 16]})
        (8, 2)

        ```
    """
    default = inspect.signature(AutoencoderDiTo.__init__).parameters["block_out_channels"].default
    return 2 ** (len(config.get("block_out_channels", default)) - 1)


def _check_config(config: dict) -> None:
    """A `ValueError` naming the field for a config no model can be built from (or that would decode to NaN)."""
    int_fields = (
        "in_channels",
        "out_channels",
        "latent_channels",
        "encoder_layers_per_block",
        "decoder_layers_per_block",
    )
    for name in int_fields:
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Config `{name}` must be an int >= 1, got {value!r}.")
    for widths_name, groups_name in (
        ("block_out_channels", "encoder_norm_num_groups"),
        ("decoder_block_out_channels", "decoder_norm_num_groups"),
    ):
        widths, groups = list(config[widths_name]), config[groups_name]
        if not widths or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in widths):
            raise ValueError(f"Config `{widths_name}` must be positive ints, got {widths}.")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"Config `{groups_name}` must be an int >= 1, got {groups!r}.")
        if any(c % groups for c in widths):
            raise ValueError(f"Config `{widths_name}` {widths} must be multiples of `{groups_name}` = {groups}.")
    eps = config["layer_norm_eps"]
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"Config `layer_norm_eps` must be a finite number > 0, got {eps!r}.")
    steps = config["num_inference_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_INFERENCE_STEPS:
        raise ValueError(f"Config `num_inference_steps` must be an int in [1, {MAX_INFERENCE_STEPS}], got {steps!r}.")
    for name in ("scaling_factor", "shift_factor"):
        value = config[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (name == "scaling_factor" and value == 0):
            raise ValueError(f"Config `{name}` must be a finite number (the scaling non-zero), got {value!r}.")
    proj_dim, shift = config.get("decoder_time_proj_dim"), config.get("decoder_freq_shift", 0)
    if proj_dim is not None and (isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 2):
        raise ValueError(f"Config `decoder_time_proj_dim` must be None or an int >= 2, got {proj_dim!r}.")
    half = (proj_dim or list(config["decoder_block_out_channels"])[0]) // 2
    if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift < half:
        raise ValueError(f"Config `decoder_freq_shift` must be an int in [0, {half}), got {shift!r}.")
    decoder_factor = 2 ** (len(config["decoder_block_out_channels"]) - 1)  # the decoder UNet's own down-sampling
    if downsample_factor_of(config) % decoder_factor != 0:
        raise ValueError(
            f"The decoder UNet down-samples by {decoder_factor}, which must divide the encoder's factor "
            f"{downsample_factor_of(config)}; use at most {len(config['block_out_channels'])} "
            "`decoder_block_out_channels`."
        )


def check_finite(tensor: torch.Tensor, what: str | Callable[[], str]) -> None:
    """A `ValueError` if `tensor` holds NaN or inf: such values would reach image files as black pixels. `what` names
    the tensor; a callable is called only on failure (a message that reads values would otherwise sync every call)."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        what = what() if callable(what) else what
        raise ValueError(f"{what} contains {bad} NaN or infinite values; expected finite numbers.")


def check_generators(generator, batch_size: int) -> None:
    """`generator` is None, one `torch.Generator`, or a list of exactly `batch_size` of them."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, list) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(
            f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}; "
            "for a seed, pass torch.Generator().manual_seed(seed)."
        )
    if len(generator) != batch_size:
        raise ValueError(f"Got {len(generator)} generators for a batch of {batch_size} images.")


def consistency_decoder_unet(
    in_channels: int,
    out_channels: int,
    block_out_channels: tuple[int, ...],
    layers_per_block: int,
    norm_num_groups: int,
    time_embedding_dim: int | None,
    time_proj_dim: int | None,
    freq_shift: int,
    add_attention: bool,
) -> UNet2DModel:
    """DiTo's decoder: diffusers' `UNet2DModel` in the consistency-decoder layout (ResNet-only down/up blocks with
    scale-shift time conditioning), its timestep sinusoid `time_proj_dim` wide (None: c0) with `freq_shift`."""
    unet = UNet2DModel(
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("ResnetDownsampleBlock2D",) * len(block_out_channels),
        up_block_types=("ResnetUpsampleBlock2D",) * len(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        time_embedding_type="positional",
        time_embedding_dim=time_embedding_dim,
        flip_sin_to_cos=True,
        freq_shift=freq_shift,
        resnet_time_scale_shift="scale_shift",
        add_attention=add_attention,
    )
    c0 = block_out_channels[0]
    if time_proj_dim is not None and time_proj_dim != c0:
        # UNet2DModel ties the sinusoid's width to c0; the official DiTo-B/L decoders use a 320-wide one. Only its
        # width differs, so diffusers' own `Timesteps` and `TimestepEmbedding` are built at that width instead.
        unet.time_proj = Timesteps(time_proj_dim, True, freq_shift)
        unet.time_embedding = TimestepEmbedding(time_proj_dim, time_embedding_dim or 4 * c0)
    return unet


class AutoencoderDiTo(
    SafetensorsOnlyMixin, RemoteCodeMixin, ModelMixin, AutoencoderMixin, ConfigMixin, PeftAdapterMixin
):
    r"""
    A DiTo diffusion autoencoder: an SD-VAE-style convolutional encoder whose layer-normalised output is decoded by
    a flow-matching diffusion UNet conditioned on the nearest-upsampled latent.

    The decoder predicts the velocity v = ε − x of the path x_t = (1 − t)·x + t·ε, which is exactly what diffusers'
    flow-match schedulers step with, so decoding is a stock `FlowMatchEulerDiscreteScheduler` loop.

    This model inherits from [`ModelMixin`]; check the superclass documentation for the generic methods (loading,
    saving, device placement). Its `encode`/`decode` follow [`AutoencoderKL`], so it works as `vae=` in stock
    diffusers pipelines. `save_pretrained` also writes the model's code and an `auto_map` into the folder
    ([`~hub.RemoteCodeMixin`]), so `diffusers.AutoModel.from_pretrained(folder, trust_remote_code=True)` loads it.

    Args:
        in_channels (`int`, *optional*, defaults to 3): Number of channels of the input image.
        out_channels (`int`, *optional*, defaults to 3): Number of channels of the decoded image.
        latent_channels (`int`, *optional*, defaults to 4): Number of channels of the latent tokens.
        block_out_channels (`tuple[int, ...]`, *optional*, defaults to `(128, 256, 512, 512)`):
            Encoder widths, one per level. The down-sampling factor is `2 ** (len(block_out_channels) - 1)`.
        encoder_layers_per_block (`int`, *optional*, defaults to 2): ResNet layers per encoder level.
        encoder_norm_num_groups (`int`, *optional*, defaults to 32): GroupNorm groups in the encoder.
        encoder_act_fn (`str`, *optional*, defaults to `"silu"`): Encoder activation.
        encoder_mid_block_add_attention (`bool`, *optional*, defaults to `True`):
            Whether the encoder's middle block has self-attention (as in the SD-VAE).
        decoder_block_out_channels (`tuple[int, ...]`, *optional*, defaults to `(128, 256, 512, 512)`):
            Decoder UNet widths (c0, c1, c2, c2). DiTo-B/L/XL use 128/256/512, 192/384/768 and 320/640/1024.
        decoder_layers_per_block (`int`, *optional*, defaults to 3): ResNet layers per decoder down level.
        decoder_norm_num_groups (`int`, *optional*, defaults to 32): GroupNorm groups in the decoder.
        decoder_time_embedding_dim (`int`, *optional*, defaults to 1280):
            Width of the time embedding (the consistency decoder uses 1280); `None` means `4 * c0`.
        decoder_time_proj_dim (`int`, *optional*, defaults to `None`):
            Width of the sinusoidal timestep projection that feeds the time embedding; `None` means c0, as in
            `UNet2DModel`. The official DiTo decoders use 320 at every size (`pe_dim`).
        decoder_freq_shift (`int`, *optional*, defaults to 0):
            `downscale_freq_shift` of that sinusoid: frequencies `10000^(-i / (half - shift))`, cosines first. The
            official decoders use 1, i.e. `(1e-4)^(i / (half - 1))`; 0 is `UNet2DModel`'s default.
        decoder_add_attention (`bool`, *optional*, defaults to `False`): Attention in the decoder's mid block.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6): Epsilon of the latent layer norm.
        num_inference_steps (`int`, *optional*, defaults to 50):
            Default number of ODE steps of `decode` (the paper uses 50 Euler steps).
        scaling_factor (`float`, *optional*, defaults to 1.0):
            The latent is already zero-mean and unit-variance, so pipelines need no rescaling.
        shift_factor (`float`, *optional*, defaults to 0.0): Likewise, no shift.
        force_upcast (`bool`, *optional*, defaults to `False`): DiTo runs in half precision as it is.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito import AutoencoderDiTo, DITO_PRESETS

        >>> vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> z = vae.encode(x).latents
        >>> z.shape
        torch.Size([1, 4, 4, 4])
        >>> vae.decode(z, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).sample.shape
        torch.Size([1, 3, 32, 32])

        ```
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        encoder_layers_per_block: int = 2,
        encoder_norm_num_groups: int = 32,
        encoder_act_fn: str = "silu",
        encoder_mid_block_add_attention: bool = True,
        decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        decoder_layers_per_block: int = 3,
        decoder_norm_num_groups: int = 32,
        decoder_time_embedding_dim: int | None = 1280,
        decoder_time_proj_dim: int | None = None,
        decoder_freq_shift: int = 0,
        decoder_add_attention: bool = False,
        layer_norm_eps: float = 1e-6,
        num_inference_steps: int = 50,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        force_upcast: bool = False,
    ):
        super().__init__()
        _check_config(self.config)  # `register_to_config` has recorded the arguments before this body runs

        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * len(block_out_channels),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=encoder_layers_per_block,
            norm_num_groups=encoder_norm_num_groups,
            act_fn=encoder_act_fn,
            double_z=False,  # deterministic latent: no log-variance channels
            mid_block_add_attention=encoder_mid_block_add_attention,
        )
        self.decoder_unet = consistency_decoder_unet(
            out_channels + latent_channels,  # noisy image ++ nearest-upsampled latent
            out_channels,
            decoder_block_out_channels,
            decoder_layers_per_block,
            decoder_norm_num_groups,
            decoder_time_embedding_dim,
            decoder_time_proj_dim,
            decoder_freq_shift,
            decoder_add_attention,
        )
        # Not saved with the weights: any diffusers FlowMatch* scheduler may be swapped in (`vae.scheduler = ...`).
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_size = 256
        self.tile_overlap = 64
        self.tile_group_norm_statistics = True

    @property
    def downsample_factor(self) -> int:
        """Spatial down-sampling factor f of the encoder (8 for f8c4): `downsample_factor_of(self.config)`."""
        return downsample_factor_of(self.config)

    # ------------------------------------------------------------------ validation
    def check_images(self, x: torch.Tensor, finite: bool = True) -> None:
        """Raise a `TypeError`/`ValueError` stating the expected shape unless `x` is a valid `encode` input; with
        `finite`, also unless every value is finite (a check that waits for the device)."""
        f, c = self.downsample_factor, self.config.in_channels
        expected = f"a 4-D floating-point tensor of shape (batch, {c}, H, W) with H and W positive multiples of {f}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Expected {expected}, got {type(x).__name__}.")
        if x.ndim != 4 or not x.is_floating_point() or x.shape[1] != c:
            raise ValueError(f"Expected {expected}, got shape {tuple(x.shape)} and dtype {x.dtype}.")
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0 or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"Expected {expected}, got shape {tuple(x.shape)}.")
        if finite:
            check_finite(x, "The image tensor")

    def check_latents(self, z: torch.Tensor) -> None:
        """Raise a `TypeError`/`ValueError` stating the expected shape unless `z` is a valid `decode` input."""
        c = self.config.latent_channels
        expected = f"a 4-D floating-point latent tensor of shape (batch, {c}, h, w) with batch, h, w >= 1"
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"Expected {expected}, got {type(z).__name__}.")
        if z.ndim != 4 or not z.is_floating_point() or z.shape[1] != c or 0 in z.shape:
            raise ValueError(f"Expected {expected}, got shape {tuple(z.shape)} and dtype {z.dtype}.")
        check_finite(z, "The latent tensor")

    @staticmethod
    def check_steps(num_inference_steps: int) -> None:
        """Raise unless `num_inference_steps` is an int in [1, MAX_INFERENCE_STEPS]."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}.")
        if not 1 <= num_inference_steps <= MAX_INFERENCE_STEPS:
            raise ValueError(
                f"`num_inference_steps` must be >= 1 and <= {MAX_INFERENCE_STEPS}, got {num_inference_steps}."
            )

    # ------------------------------------------------------------------ encoder
    def enable_tiling(
        self,
        tile_sample_size: int | None = None,
        tile_overlap: int | None = None,
        share_group_norm_statistics: bool | None = None,
    ) -> None:
        r"""
        Encode and decode large images tile by tile, so that peak memory is bounded by the tile size.

        The encoder runs on overlapping tiles whose raw outputs are blended before the latent layer norm, so the
        normalisation statistics are those of the whole latent. The decoder predicts the velocity on overlapping
        tiles of the current noisy image at every ODE step and blends the predictions with smooth weights before
        the scheduler step (as MultiDiffusion does), so no seams build up.

        Args:
            tile_sample_size (`int`, *optional*, defaults to 256): Tile side in pixels; a multiple of the
                down-sampling factor.
            tile_overlap (`int`, *optional*, defaults to 64): Minimum overlap of neighbouring tiles in pixels; a
                multiple of the down-sampling factor, smaller than the tile.
            share_group_norm_statistics (`bool`, *optional*, defaults to `True`): Normalise every decoder tile
                with GroupNorm statistics estimated over the whole image (`GroupNormStatistics`) rather than the
                tile's own, which brings the tiled decode closer to the untiled one (docs/benchmarks.md) at the price
                of a second network pass per step. `False` is about twice as fast.

        Examples:
            ```py
            >>> import torch
            >>> from diffusers_dito import DITO_PRESETS, AutoencoderDiTo
            >>> vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
            >>> vae.enable_tiling(tile_sample_size=32, tile_overlap=16)
            >>> vae.decode(torch.randn(1, 4, 8, 12), num_inference_steps=1).sample.shape  # 6 tiles of 32²
            torch.Size([1, 3, 64, 96])

            ```
        """
        tile = self.tile_sample_size if tile_sample_size is None else tile_sample_size
        overlap = self.tile_overlap if tile_overlap is None else tile_overlap
        f = self.downsample_factor
        if tile < f or tile % f or overlap < 0 or overlap % f or overlap >= tile:
            raise ValueError(
                f"Tiles must be positive multiples of {f} and the overlap a multiple of {f} smaller than the tile; "
                f"got tile_sample_size={tile}, tile_overlap={overlap}."
            )
        self.tile_sample_size, self.tile_overlap = tile, overlap
        if share_group_norm_statistics is not None:
            self.tile_group_norm_statistics = share_group_norm_statistics
        self.use_tiling = True

    def _tiled(self, height: int, width: int) -> bool:
        return self.use_tiling and max(height, width) > self.tile_sample_size

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.encoder.conv_in.weight.dtype)
        if self._tiled(*x.shape[-2:]):
            h = tiled_map(
                self.encoder,
                [x],
                self.tile_sample_size,
                self.tile_overlap,
                self.config.latent_channels,
                downscale=self.downsample_factor,
            )  # (B, 3, H, W) -> (B, C, H/f, W/f), blended before normalisation
        else:
            h = self.encoder(x)  # (B, 3, H, W) -> (B, C, H/f, W/f)
        # DiTo's latent layer norm: statistics over each sample's whole (C, h, w) tensor, no affine parameters, so
        # the latent is zero-mean/unit-variance at any resolution. Computed in fp32 for half-precision models.
        return F.layer_norm(h.float(), h.shape[1:], eps=self.config.layer_norm_eps).to(h.dtype)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderDiToEncoderOutput | tuple[DiToLatentDistribution]:
        r"""
        Encode a batch of images in [-1, 1] into layer-normalised latents.

        Args:
            x (`torch.Tensor` of shape `(batch_size, in_channels, height, width)`):
                Images; height and width must be multiples of the down-sampling factor.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return an [`AutoencoderDiToEncoderOutput`] instead of a tuple.

        Returns:
            [`AutoencoderDiToEncoderOutput`] or `tuple`: the latent (`.latents`) and its `.latent_dist` wrapper.
        """
        self.check_images(x)
        if self.use_slicing and x.shape[0] > 1:
            z = torch.cat([self._encode(x_slice) for x_slice in x.split(1)])
        else:
            z = self._encode(x)
        check_finite(z, "The encoder's output (check the weights and `layer_norm_eps`)")
        dist = DiToLatentDistribution(z)
        if not return_dict:
            return (dist,)
        return AutoencoderDiToEncoderOutput(latent_dist=dist, latents=z)

    # ------------------------------------------------------------------ decoder
    def upsample_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour up-sampling of the latent to image size: the decoder's conditioning."""
        return F.interpolate(z, scale_factor=self.downsample_factor, mode="nearest")  # (B,C,h,w) -> (B,C,h*f,w*f)

    def predict_velocity(
        self, noisy_sample: torch.Tensor, timestep: torch.Tensor | float, conditioning: torch.Tensor
    ) -> torch.Tensor:
        r"""
        One decoder evaluation: the velocity v = ε − x at `noisy_sample`.

        Args:
            noisy_sample (`torch.Tensor` of shape `(B, out_channels, H, W)`): x_t = (1 − t)·x + t·ε.
            timestep (`torch.Tensor` or `float`): t·1000 (diffusers' flow-match timestep), scalar or shape `(B,)`.
            conditioning (`torch.Tensor` of shape `(B, latent_channels, H, W)`): `upsample_latents(z)`.
        """
        model_input = torch.cat([noisy_sample, conditioning], dim=1)  # (B, out_channels + latent_channels, H, W)
        return self.decoder_unet(model_input, timestep).sample  # (B, out_channels, H, W)

    def velocity_field(
        self, noisy_sample: torch.Tensor, timestep: torch.Tensor | float, conditioning: torch.Tensor
    ) -> torch.Tensor:
        r"""
        `predict_velocity` for sampling: tile by tile with blending when tiling is enabled for this size.

        Args:
            noisy_sample (`torch.Tensor` of shape `(B, out_channels, H, W)`): The current x_t.
            timestep (`torch.Tensor` or `float`): t·1000.
            conditioning (`torch.Tensor`): `decoder_conditioning(z)`: `upsample_latents(z)`, of shape
                `(B, latent_channels, H, W)`, or, when this size is decoded tile by tile, `z` itself (`(B,
                latent_channels, H / f, W / f)`), up-sampled one tile at a time so that no full-resolution copy
                exists.
        """
        if not self._tiled(*noisy_sample.shape[-2:]):
            return self.predict_velocity(noisy_sample, timestep, conditioning)  # conditioning = upsample_latents(z)
        # Tiled: `conditioning` is z itself, and each tile up-samples its own part of it.
        predict = functools.partial(self._predict_tile, timestep)
        inputs, tile, overlap = [noisy_sample, conditioning], self.tile_sample_size, self.tile_overlap
        if not self.tile_group_norm_statistics:
            return tiled_map(predict, inputs, tile, overlap, self.config.out_channels)
        statistics = GroupNormStatistics(self.decoder_unet)
        with torch.no_grad(), statistics.collect():  # pass 1: image-wide statistics, blend-weighted over the tiles
            for _, _, weight, tiles in iter_tiles(inputs, tile, overlap):
                statistics.add_tile(predict, *tiles, weight=weight)
        with statistics.apply():  # pass 2: every tile normalised with them
            return tiled_map(predict, inputs, tile, overlap, self.config.out_channels)

    def _predict_tile(self, timestep: torch.Tensor | float, noisy_tile: torch.Tensor, latent_tile: torch.Tensor):
        return self.predict_velocity(noisy_tile, timestep, self.upsample_latents(latent_tile))

    def decoder_conditioning(self, z: torch.Tensor) -> torch.Tensor:
        """What `velocity_field` is conditioned on: `upsample_latents(z)`, computed once per decode, or, for a tiled
        decode, `z` itself (each tile up-samples its own part)."""
        f = self.downsample_factor
        return z if self._tiled(z.shape[-2] * f, z.shape[-1] * f) else self.upsample_latents(z)

    def initial_noise(self, z: torch.Tensor, generator=None) -> torch.Tensor:
        """x_1 = ε for decoding `z`: `(B, out_channels, h·f, w·f)` standard normal noise."""
        batch_size, _, h, w = z.shape
        f = self.downsample_factor
        shape = (batch_size, self.config.out_channels, h * f, w * f)
        return randn_tensor(shape, generator=generator, device=z.device, dtype=z.dtype)

    def retrieve_timesteps(
        self,
        num_inference_steps: int | None = None,
        scheduler: SchedulerMixin | None = None,
        sigmas: list[float] | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        r"""
        Put `scheduler` on the grid that `decode` integrates on and return its timesteps (σ·1000), one per decoder
        evaluation: `num_inference_steps` for Euler, `2 * num_inference_steps - 1` for Heun. `decode` takes its grid
        from here, so this is where its defaults are filled in and its `num_inference_steps` and `sigmas` are checked;
        a caller that needs the length of a decode (a progress bar) asks here. The arguments are `decode`'s.

        Examples:
            ```py
            >>> from diffusers import FlowMatchHeunDiscreteScheduler
            >>> from diffusers_dito import DITO_PRESETS, AutoencoderDiTo

            >>> vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
            >>> vae.retrieve_timesteps(4).tolist(), len(vae.retrieve_timesteps(4, FlowMatchHeunDiscreteScheduler()))
            ([1000.0, 750.0, 500.0, 250.0], 7)

            ```
        """
        num_inference_steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        self.check_steps(num_inference_steps)
        scheduler = self.scheduler if scheduler is None else scheduler
        return retrieve_flow_match_timesteps(scheduler, num_inference_steps, device=device, sigmas=sigmas)

    def _integrate(
        self,
        z: torch.Tensor,
        num_inference_steps: int | None,
        scheduler: SchedulerMixin,
        sigmas: list[float] | None,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str],
        noise: torch.Tensor | None = None,
        generator=None,
    ) -> torch.Tensor:
        """The ODE from t = 1 to 0: the only sampling loop of DiTo's decoder."""
        # Every pass (one per image, with slicing) starts the scheduler afresh on the grid.
        timesteps = self.retrieve_timesteps(num_inference_steps, scheduler, sigmas, device=z.device)
        conditioning = self.decoder_conditioning(z)  # once, not per step
        # Drawn here, the initial noise is referenced by `sample` alone, so the first step frees it: a tiled decode of
        # a large image never holds two image-sized noise tensors. Slicing hands in this image's part of a batch draw.
        sample = self.initial_noise(z, generator) if noise is None else noise
        del noise
        for i, t in enumerate(timesteps):
            velocity = self.velocity_field(sample, t, conditioning)  # (B, 3, H, W)
            sample = scheduler.step(velocity, t, sample, return_dict=False)[0]
            if callback_on_step_end is not None:
                callback_kwargs = {name: {"sample": sample}[name] for name in callback_on_step_end_tensor_inputs}
                sample = self._callback_sample(callback_on_step_end(i, t, callback_kwargs), sample)
        return sample.clamp(-1, 1)

    def _describe_decoded(self, z: torch.Tensor) -> str:
        """What `decode`'s finiteness check calls its output, with the likely cause: the decoder's own weights where
        they hold NaN or inf, else the range of `z`."""
        broken = [name for name, weight in self.decoder_unet.named_parameters() if not torch.isfinite(weight).all()]
        if broken:
            return (
                f"The decoded images (the decoder's weights hold NaN or inf, in {len(broken)} tensors such as "
                f"`decoder_unet.{broken[0]}`: the model's weights are broken, not the latents)"
            )
        return (
            f"The decoded images (latents ranged over [{z.min().item():.3g}, {z.max().item():.3g}]; DiTo latents are "
            "layer-normalised, so values far beyond ±10 mean they were scaled wrongly)"
        )

    @staticmethod
    def _callback_sample(callback_outputs, sample: torch.Tensor) -> torch.Tensor:
        """The sample a step callback hands back: a dict, whose optional `"sample"` keeps the sample's shape."""
        if not isinstance(callback_outputs, dict):
            raise TypeError(
                "`callback_on_step_end` must return a dict (e.g. the `callback_kwargs` it was given), got "
                f"{type(callback_outputs).__name__}."
            )
        new = callback_outputs.pop("sample", sample)
        if not isinstance(new, torch.Tensor) or new.shape != sample.shape:
            shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(f"`callback_on_step_end` returned a sample of {shape}; expected {tuple(sample.shape)}.")
        return new

    @apply_forward_hook
    def decode(
        self,
        z: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        num_inference_steps: int | None = None,
        scheduler: SchedulerMixin | None = None,
        sigmas: list[float] | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("sample",),
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""
        Decode latents by integrating the flow-matching ODE from pure noise (t = 1) to the image (t = 0). This is the
        one place DiTo's decoding loop lives: the pipelines call it.

        Args:
            z (`torch.Tensor` of shape `(batch_size, latent_channels, h, w)`): Latents from `encode`.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Generator(s) for the initial noise; a list gives one per image.
            return_dict (`bool`, *optional*, defaults to `True`): Return a [`DecoderOutput`] instead of a tuple.
            num_inference_steps (`int`, *optional*): ODE steps; defaults to `config.num_inference_steps`.
            scheduler (`SchedulerMixin`, *optional*): A diffusers `FlowMatch*` scheduler; defaults to
                `self.scheduler` (Euler on the paper's uniform grid).
            sigmas (`list[float]`, *optional*): A custom descending σ grid of `num_inference_steps` values in
                (0, 1] (the final 0 is appended); only for schedulers whose `set_timesteps` accepts `sigmas`.
            callback_on_step_end (`Callable`, *optional*): Called as `callback_on_step_end(step, timestep,
                callback_kwargs)` after every scheduler step (of every image, with slicing); returns a dict, which
                may hold a replacement `"sample"` of the same shape.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `["sample"]`): The tensors in
                `callback_kwargs`.

        Returns:
            [`DecoderOutput`] or `tuple`: images of shape `(batch_size, out_channels, h * f, w * f)` in [-1, 1].
        """
        self.check_latents(z)
        if set(callback_on_step_end_tensor_inputs) - {"sample"}:
            raise ValueError(
                "`callback_on_step_end_tensor_inputs` must be in ['sample'], got "
                f"{list(callback_on_step_end_tensor_inputs)}."
            )
        z = z.to(self.decoder_unet.conv_in.weight.dtype)
        check_generators(generator, z.shape[0])
        loop = functools.partial(
            self._integrate,
            num_inference_steps=num_inference_steps,
            scheduler=self.scheduler if scheduler is None else scheduler,
            sigmas=sigmas,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=list(callback_on_step_end_tensor_inputs),
        )
        if self.use_slicing and z.shape[0] > 1:
            noise = self.initial_noise(z, generator)  # all up front: each image gets the noise of a full batch
            sample = torch.cat([loop(z_i, noise=noise_i) for z_i, noise_i in zip(z.split(1), noise.split(1))])
        else:
            sample = loop(z, generator=generator)
        check_finite(sample, lambda: self._describe_decoded(z))
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""
        Reconstruct `sample`: encode, then decode with `num_inference_steps` ODE steps.

        Args:
            sample (`torch.Tensor` of shape `(batch_size, in_channels, height, width)`): Images in [-1, 1].
            sample_posterior (`bool`, *optional*, defaults to `False`): Accepted for `AutoencoderKL`
                compatibility; DiTo's latent is deterministic, so it changes nothing.
            return_dict (`bool`, *optional*, defaults to `True`): Return a [`DecoderOutput`] instead of a tuple.
            generator (`torch.Generator`, *optional*): Generator(s) for the decoder's initial noise.
            num_inference_steps (`int`, *optional*): ODE steps; defaults to `config.num_inference_steps`.
        """
        z = self.encode(sample).latents
        return self.decode(z, generator=generator, return_dict=return_dict, num_inference_steps=num_inference_steps)
