# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""diffusers' `DiTTransformer2DModel` with LoRA support, for class-conditional flow matching on DiTo latents."""

from diffusers import DiTTransformer2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import LabelEmbedding

# diffusers' pipeline loader finds a custom component's loading method by looking `ModelMixin` up in the module that
# `model_index.json` names (this one), so it must be importable from here.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from torch import nn

from ..hub import RemoteCodeMixin
from ..safe_loading import SafetensorsOnlyMixin


class DiToDiTTransformer2DModel(SafetensorsOnlyMixin, RemoteCodeMixin, DiTTransformer2DModel, PeftAdapterMixin):
    r"""
    The stock [`DiTTransformer2DModel`] plus [`PeftAdapterMixin`] (the stock class has no `add_adapter`), used by
    [`DiToDiTPipeline`]. Nothing else changes: same config, same weights layout, same forward. `save_pretrained` also
    writes the model's code and an `auto_map` ([`~hub.RemoteCodeMixin`]) for `diffusers.AutoModel`.

    For flow matching it is built with `out_channels == in_channels` (it predicts the velocity ε − z, not a learned
    variance) and is given the timestep as σ·1000, diffusers' flow-match convention. The class-label table has
    `num_embeds_ada_norm + 1` rows; the last one (index `num_embeds_ada_norm`) is the null class used for
    classifier-free guidance.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito import DIT_PRESETS, DiToDiTTransformer2DModel

        >>> dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
        >>> dit.initialize_weights()
        >>> v = dit(torch.randn(2, 4, 4, 4), timestep=torch.tensor([500.0, 500.0]), class_labels=torch.tensor([0, 1]))
        >>> v.sample.shape
        torch.Size([2, 4, 4, 4])

        ```
    """

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        attention_bias: bool = True,
        sample_size: int = 32,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_zero",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-5,
    ):
        # Same arguments as the stock class (documented there); repeated only so the config stays flat and typed.
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            num_layers=num_layers,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            attention_bias=attention_bias,
            sample_size=sample_size,
            patch_size=patch_size,
            activation_fn=activation_fn,
            num_embeds_ada_norm=num_embeds_ada_norm,
            upcast_attention=upcast_attention,
            norm_type=norm_type,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
        )
        # The stock label embedding drops labels at random (torch's global RNG) in training mode. DiTo's training
        # does class dropout itself, reproducibly, in `latent_flow_matching_loss`; two droppers would double the
        # rate and break exact resume. The null-class row (index `num_embeds_ada_norm`) is kept for guidance.
        for module in self.modules():
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0

    def initialize_weights(self) -> None:
        """DiT's from-scratch initialisation (Peebles & Xie, `models.py`): Xavier linears, zero adaLN and output."""

        def xavier(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(xavier)
        patch_proj = self.pos_embed.proj
        nn.init.xavier_uniform_(patch_proj.weight.view(patch_proj.weight.shape[0], -1))
        nn.init.zeros_(patch_proj.bias)
        for block in self.transformer_blocks:
            # adaLN-Zero: every residual branch starts as the identity.
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        for layer in (self.proj_out_1, self.proj_out_2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
