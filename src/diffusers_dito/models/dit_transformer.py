# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""diffusers' `DiTTransformer2DModel` with LoRA support, for class-conditional flow matching on DiTo latents."""

from diffusers import DiTTransformer2DModel
from diffusers.loaders import PeftAdapterMixin

# diffusers' pipeline loader finds a custom component's loading method by looking `ModelMixin` up in the module that
# `model_index.json` names (this one), so it must be importable from here.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from torch import nn

from ..safe_loading import SafetensorsOnlyMixin


class DiToDiTTransformer2DModel(SafetensorsOnlyMixin, DiTTransformer2DModel, PeftAdapterMixin):
    r"""
    The stock [`DiTTransformer2DModel`] plus [`PeftAdapterMixin`] (the stock class has no `add_adapter`), used by
    [`DiToDiTPipeline`]. Nothing else changes: same config, same weights layout, same forward.

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
