"""Tiled encoding and decoding: global latent statistics, agreement with untiled decoding, and no seams."""

import pytest
import torch
import torch.nn.functional as F

from conftest import psnr, smooth_images
from diffusers_dito import AutoencoderDiTo
from diffusers_dito.models.tiling import tile_starts, tiled_map


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


def decode_both(vae, size):
    x = smooth_images(1, max(size), seed=3)[..., : size[0], : size[1]]
    with torch.no_grad():
        z = vae.encode(x).latents
        untiled = vae.decode(z, num_inference_steps=10, generator=torch.Generator().manual_seed(0)).sample
        vae.enable_tiling(32, 16)
        try:
            tiled = vae.decode(z, num_inference_steps=10, generator=torch.Generator().manual_seed(0)).sample
        finally:
            vae.disable_tiling()
    return tiled, untiled


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_tiled_decode_stays_close_to_untiled(overfit_tiny, size):
    # Regression guard at what per-tile GroupNorm statistics achieve today (19-23 dB on this model).
    tiled, untiled = decode_both(overfit_tiny[0], size)
    assert tiled.shape == untiled.shape and torch.isfinite(tiled).all()
    assert psnr(tiled, untiled) >= 18.0, psnr(tiled, untiled)


@pytest.mark.xfail(strict=True, reason="issue 7 target not reached: per-tile GroupNorm statistics in the decoder UNet")
def test_tiled_decode_reaches_30_db_of_untiled(overfit_tiny):
    tiled, untiled = decode_both(overfit_tiny[0], (96, 64))
    assert psnr(tiled, untiled) >= 30.0
