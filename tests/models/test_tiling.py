"""Tiled encoding and decoding: global latent statistics, agreement with untiled decoding, and no seams."""

import pytest
import torch
import torch.nn.functional as F

from conftest import psnr, smooth_images
from diffusers_dito import AutoencoderDiTo
from diffusers_dito.models.tiling import tile_border_gradient_ratio, tile_starts, tile_weights, tiled_map
from diffusers_dito.sample_data import photo_crops


def test_tile_grid_covers_and_blend_is_exact_for_pointwise_functions():
    assert tile_starts(96, 32, 8) == [0, 24, 48, 64]
    assert tile_starts(32, 32, 8) == [0]
    assert tile_starts(20, 32, 8) == [0]
    x = torch.randn(2, 3, 72, 96)
    # A pointwise function must come back unchanged: the blend weights sum to one everywhere.
    out = tiled_map(lambda t: t * 2 + 1, [x], tile=32, overlap=16, out_channels=3)
    torch.testing.assert_close(out, x * 2 + 1)
    pooled = tiled_map(lambda t: F.avg_pool2d(t, 8), [x], tile=32, overlap=16, out_channels=3, downscale=8)
    torch.testing.assert_close(pooled, F.avg_pool2d(x, 8))


def test_enable_tiling_validates(tiny_config):
    vae = AutoencoderDiTo(**tiny_config())
    for tile, overlap in [(30, 8), (32, 4), (32, 32), (0, 0)]:
        with pytest.raises(ValueError, match="multiples of 8"):
            vae.enable_tiling(tile, overlap)
    vae.enable_tiling(32, 16)
    assert vae.use_tiling and vae.tile_sample_size == 32


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_tiled_latent_is_normalised_over_the_whole_latent(overfit_tiny, size):
    vae, _ = overfit_tiny
    x = smooth_images(1, max(size), seed=3)[..., : size[0], : size[1]]
    with torch.no_grad():
        ref = vae.encode(x).latents
        vae.enable_tiling(32, 16)
        try:
            tiled = vae.encode(x).latents
        finally:
            vae.disable_tiling()
    flat = tiled.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(1), atol=1e-5, rtol=0)  # one set of statistics
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(1), atol=1e-4, rtol=0)
    # The encoder's own GroupNorms and mid-block attention see one tile at a time, so tiles cannot match exactly;
    # they must still agree closely with the untiled latent.
    assert F.cosine_similarity(tiled.flatten(), ref.flatten(), dim=0) > 0.95


def decode_tiled(vae, z, tile, overlap, share_group_norm_statistics, steps=4):
    vae.enable_tiling(tile, overlap, share_group_norm_statistics=share_group_norm_statistics)
    try:
        return decode(vae, z, steps)
    finally:
        vae.disable_tiling()


def decode(vae, z, steps=4):
    generators = [torch.Generator().manual_seed(i) for i in range(len(z))]
    return vae.decode(z, num_inference_steps=steps, generator=generators).sample


@pytest.fixture(scope="module", params=[(64, 64), (96, 64)], ids=["64x64", "96x64"])
def tiled_decodes(request, photo_tiny):
    """The sizes of docs/benchmarks.md's tiling table (tiles of 32 on 64-96 px): 2 crops of photos the model never
    saw, decoded untiled and tiled from the same noise with the model's default 4 Euler steps."""
    with torch.no_grad():
        z = photo_tiny.encode(photo_crops(2, *request.param, seed=1)).latents
        return {
            "untiled": decode(photo_tiny, z),
            "shared": decode_tiled(photo_tiny, z, 32, 16, share_group_norm_statistics=True),
            "per_tile": decode_tiled(photo_tiny, z, 32, 16, share_group_norm_statistics=False),
            "abutting": decode_tiled(photo_tiny, z, 32, 0, share_group_norm_statistics=False),  # no blending
        }


def test_tiled_decode_matches_untiled_to_30_db(tiled_decodes):
    untiled, shared, per_tile = tiled_decodes["untiled"], tiled_decodes["shared"], tiled_decodes["per_tile"]
    assert shared.shape == untiled.shape and torch.isfinite(shared).all()
    print(f"PSNR to the untiled decode: shared {psnr(shared, untiled):.2f}, per tile {psnr(per_tile, untiled):.2f} dB")
    assert psnr(shared, untiled) >= 30.0, psnr(shared, untiled)
    # Per-tile statistics (one pass, the cheaper mode) stay close too; a guard below what they reached when written.
    assert psnr(per_tile, untiled) >= 25.0, psnr(per_tile, untiled)
    assert psnr(shared, untiled) > psnr(per_tile, untiled)  # what the second pass buys


def test_tiled_decode_leaves_no_seams(tiled_decodes):
    # Mean |gradient| across tile borders over that across the other pixel lines. The borders lie on multiples of
    # 8, the edges of the nearest-neighbour up-sampled latent cells, where any DiTo decode changes a little faster
    # (the untiled decode scores 1.05-1.07 on these crops), so the tiled score is divided by the untiled decode's
    # score at the same lines: what is left is what the tiling adds.
    untiled = tile_border_gradient_ratio(tiled_decodes["untiled"], 32, 16)
    ratio = tile_border_gradient_ratio(tiled_decodes["shared"], 32, 16) / untiled
    assert abs(ratio - 1) <= 0.10, ratio
    # The control: the same measure does see the seams of abutting tiles that are not blended (about 2.7x).
    abutting = tile_border_gradient_ratio(tiled_decodes["abutting"], 32, 0)
    assert abutting / tile_border_gradient_ratio(tiled_decodes["untiled"], 32, 0) > 1.10


def test_tiled_decode_never_builds_a_full_resolution_conditioning(tiny_config):
    vae = AutoencoderDiTo(**tiny_config())
    z = torch.randn(1, 4, 12, 8)
    assert vae.decoder_conditioning(z).shape[-2:] == (96, 64)
    vae.enable_tiling(32, 16)
    assert vae.decoder_conditioning(z) is z  # each tile up-samples its own part of z
    assert vae.decoder_conditioning(z[..., :4, :4]).shape[-2:] == (32, 32)  # one tile: up-sampled once


def test_tile_weights_are_a_partition_of_unity_at_every_resolution():
    for length, tile, overlap, s in [(96, 32, 16, 1), (96, 32, 8, 8), (40, 32, 8, 1), (1024, 256, 64, 8)]:
        total = torch.zeros(length // s)
        for start, w in tile_weights(length, tile, overlap, s):
            total[start // s : start // s + len(w)] += w
        torch.testing.assert_close(total, torch.ones(length // s))
