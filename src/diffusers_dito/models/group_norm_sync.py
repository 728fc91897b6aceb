"""GroupNorm statistics shared by the tiles of one tiled network evaluation.

A GroupNorm normalises with the mean and variance of a whole (sample, group), so a network run on one tile sees
other statistics than the same network run on the whole image: tiled and untiled decodes drift apart. diffusers has
no such feature (its `AutoencoderKL` tiling accepts the difference), so DiTo adds it here: a first pass over the
tiles accumulates, for every GroupNorm, the blend-weighted sums of its input over the whole image, and a second pass
normalises every tile with those image-wide statistics. The GroupNorms are redirected with `diffusers.hooks` (a
`ModelHook` per layer, for the duration of a pass), not by replacing their `forward`. Memory stays bounded by the
tile (the statistics are two numbers per sample and group); the price is a second network pass.

The first pass normalises each tile with its own statistics, so the image-wide statistics it collects are an
estimate: exact ones would need every tile to stop at every GroupNorm until all tiles reach it, which costs either
the full-image activations or one pass per layer. Iterating the estimate (collecting again in the second pass)
does not converge: an error in one layer's statistics moves every later layer's, and the errors compound.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

_HOOK_NAME = "dito_group_norm_statistics"


class _GroupNormHook(ModelHook):
    """Runs one GroupNorm through `forward(norm, index, x)`: collecting, or normalising with shared statistics."""

    def __init__(self, forward, index: int):
        super().__init__()
        self.forward, self.index = forward, index

    def new_forward(self, module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return self.forward(module, self.index, x)


class GroupNormStatistics:
    r"""
    Collects image-wide GroupNorm statistics over weighted tiles of a module, then normalises with them.

    Args:
        module (`nn.Module`): The network whose `nn.GroupNorm` layers are shared (e.g. the decoder UNet).

    Examples:
        ```py
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8))  # pointwise, so tiles can match exactly
        >>> image = torch.randn(1, 3, 16, 16)
        >>> stats = GroupNormStatistics(net)
        >>> with torch.no_grad(), stats.collect():
        ...     for half in (image[..., :8], image[..., 8:]):  # two tiles, weight 1 each
        ...         _ = stats.add_tile(net, half, weight=torch.ones(16, 8))
        >>> with torch.no_grad(), stats.apply():
        ...     tiled = torch.cat([net(image[..., :8]), net(image[..., 8:])], dim=-1)
        >>> bool(torch.allclose(tiled, net(image), atol=1e-5))  # per-tile statistics would differ
        True

        ```
    """

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        self._sums: list[list[torch.Tensor] | None] = []
        self._statistics: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._weight: torch.Tensor | None = None

    @contextmanager
    def _hooked(self, forward) -> Iterator[None]:
        # diffusers' own mechanism for changing how a submodule runs (a `ModelHook` in the module's `HookRegistry`),
        # removed afterwards, leaving each GroupNorm as it was found.
        for index, norm in enumerate(self.norms):
            registry = HookRegistry.check_if_exists_or_initialize(norm)
            registry.register_hook(_GroupNormHook(forward, index), _HOOK_NAME)
        try:
            yield
        finally:
            for norm in self.norms:
                registry = norm._diffusers_hook
                registry.remove_hook(_HOOK_NAME, recurse=False)
                if not registry.hooks:  # the registry was ours alone: drop it, and the class's forward is back
                    del norm._diffusers_hook
                    if getattr(norm.__dict__.get("forward"), "__func__", None) is type(norm).forward:
                        del norm.forward

    @contextmanager
    def collect(self) -> Iterator[None]:
        """Within this context, `add_tile` accumulates statistics (each tile still normalises with its own)."""
        self._sums = [None] * len(self.norms)
        with self._hooked(self._collecting_forward):
            yield
        self._statistics = []
        for norm, sums in zip(self.norms, self._sums):
            if sums is None:
                raise RuntimeError(f"A GroupNorm ({norm}) saw no tile while collecting statistics.")
            total, mean, spread = sums
            self._statistics.append((mean, spread / total))

    def add_tile(self, module: nn.Module, *inputs, weight: torch.Tensor, **kwargs):
        r"""
        Run `module(*inputs, **kwargs)` on one tile, adding its GroupNorm inputs to the sums with `weight`
        (the tile's blend weights, shape `(th, tw)` at the resolution of the first input; down-sampled by averaging
        for deeper layers). Weights that sum to one over the tiles count every pixel once.
        """
        self._weight = weight
        try:
            return module(*inputs, **kwargs)
        finally:
            self._weight = None

    def _collecting_forward(self, norm: nn.GroupNorm, index: int, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        weight = self._weight.float()
        if weight.shape != (height, width):  # a deeper layer: average the weights over each cell
            weight = F.adaptive_avg_pool2d(weight[None, None], (height, width))[0, 0]
        weight = weight.reshape(-1)  # (h*w,)
        # This tile's weighted mean and sum of squared deviations per (sample, group), from matrix-vector products
        # on one group at a time in float32 (a temporary of one group's size, whatever the model's dtype, so memory
        # stays that of the plain forward), merged into the running totals with Chan et al.'s pairwise update, which
        # stays exact when the mean is large against the spread.
        groups = x.detach().reshape(batch, norm.num_groups, -1, height * width)  # (B, G, C/G, h*w)
        count = weight.sum().double() * groups.shape[2]
        means, spreads = [], []
        for g in range(norm.num_groups):
            values = groups[:, g].float()  # (B, C/G, h*w)
            mean = (values @ weight).sum(-1) / count.float()  # (B,)
            means.append(mean.double())
            spreads.append(((values - mean[:, None, None]).square_() @ weight).sum(-1).double())
        mean, spread = torch.stack(means, dim=1), torch.stack(spreads, dim=1)  # (B, G) each
        if self._sums[index] is None:
            self._sums[index] = [count, mean, spread]
        else:
            total, total_mean, total_spread = self._sums[index]
            delta = mean - total_mean
            merged = total + count
            self._sums[index] = [
                merged,
                total_mean + delta * count / merged,
                total_spread + spread + delta.square() * total * count / merged,
            ]
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

    @contextmanager
    def apply(self) -> Iterator[None]:
        """Within this context, every GroupNorm normalises with the collected image-wide statistics."""
        if len(self._statistics) != len(self.norms):
            raise RuntimeError("No statistics collected: run the tiles under `collect()` first.")
        with self._hooked(self._shared_forward):
            yield

    def _shared_forward(self, norm: nn.GroupNorm, index: int, x: torch.Tensor) -> torch.Tensor:
        mean, var = self._statistics[index]  # (B, G) each
        batch, channels = x.shape[:2]
        if mean.shape[0] != batch:
            raise RuntimeError(f"Statistics were collected for batch {mean.shape[0]}, got batch {batch}.")
        # Folded into one per-channel affine map, y = x·a + b, so that the output is the only new tensor.
        scale = torch.rsqrt(var + norm.eps).repeat_interleave(channels // norm.num_groups, dim=1)  # (B, C)
        shift = -mean.repeat_interleave(channels // norm.num_groups, dim=1) * scale
        if norm.affine:
            scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
        scale, shift = scale.to(x.dtype)[..., None, None], shift.to(x.dtype)[..., None, None]
        return torch.addcmul(shift, x, scale)  # (B, C, h, w)
