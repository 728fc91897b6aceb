"""GroupNormStatistics: image-wide statistics from weighted tiles, and clean patching of the GroupNorms."""

import pytest
import torch
from torch import nn

from diffusers_dito.models.group_norm_sync import GroupNormStatistics
from diffusers_dito.models.tiling import iter_tiles, tiled_map


def pointwise_net(num_norms: int = 2):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8)]
    if num_norms == 2:
        layers += [nn.SiLU(), nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8)]
    return nn.Sequential(*layers)


def tiled_outputs(net, image):
    """(tiled with shared statistics, tiled with per-tile statistics, untiled) outputs of `net`."""
    stats = GroupNormStatistics(net)
    with torch.no_grad():
        with stats.collect():
            for _, _, weight, tiles in iter_tiles([image], tile=16, overlap=8):
                stats.add_tile(net, *tiles, weight=weight)
        with stats.apply():
            shared = tiled_map(net, [image], tile=16, overlap=8, out_channels=8)
        per_tile = tiled_map(net, [image], tile=16, overlap=8, out_channels=8)
        return shared, per_tile, net(image)


# A batch of two differently scaled images with a brighter corner: statistics are per sample and differ per tile.
def batch_of_images():
    image = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    image[..., :16, :16] += 2.0
    return image * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)


def test_one_groupnorm_gets_exactly_the_whole_image_statistics():
    # Pointwise, so no border effects: with the image-wide statistics, overlapping weighted tiles must be exact.
    shared, per_tile, reference = tiled_outputs(pointwise_net(num_norms=1), batch_of_images())
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=1e-4)
    assert (per_tile - reference).abs().max() > 0.1  # what the shared statistics fix


def test_later_groupnorms_get_estimates_much_closer_than_per_tile_statistics():
    # The first pass normalises each tile with its own statistics, so a second GroupNorm's image-wide statistics
    # are an estimate (see the module's docstring); it must still beat per-tile statistics by far.
    shared, per_tile, reference = tiled_outputs(pointwise_net(num_norms=2), batch_of_images())
    assert (shared - reference).abs().mean() < 0.2 * (per_tile - reference).abs().mean()


def test_patching_is_undone_and_misuse_is_reported():
    net = pointwise_net()
    stats = GroupNormStatistics(net)
    with pytest.raises(RuntimeError, match="collect"):
        with stats.apply():
            pass
    with pytest.raises(RuntimeError, match="saw no tile"):
        with stats.collect():
            pass  # no tile added
    assert all("forward" not in norm.__dict__ for norm in stats.norms)  # the class's forward is back
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad(), stats.collect():
        stats.add_tile(net, x, weight=torch.ones(8, 8))
    with pytest.raises(RuntimeError, match="batch 1"), torch.no_grad(), stats.apply():
        net(torch.randn(2, 3, 8, 8))
    assert all("forward" not in norm.__dict__ for norm in stats.norms)
    torch.testing.assert_close(net(x), nn.Sequential(*net)(x))


def test_half_precision_models_collect_in_float32():
    net = pointwise_net(num_norms=1).to(torch.bfloat16)
    shared, per_tile, reference = tiled_outputs(net, batch_of_images().to(torch.bfloat16))
    assert shared.dtype == torch.bfloat16
    error = (shared.float() - reference.float()).abs().mean()
    assert error < 0.02 < (per_tile.float() - reference.float()).abs().mean(), error
