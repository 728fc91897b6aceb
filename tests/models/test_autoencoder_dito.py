import pytest
import torch
from diffusers import FlowMatchHeunDiscreteScheduler
from diffusers.models.autoencoders.vae import DecoderOutput

from diffusers_dito import AutoencoderDiTo
from diffusers_dito.models.autoencoder_dito import downsample_factor_of


def build(tiny_config, **overrides) -> AutoencoderDiTo:
    torch.manual_seed(0)
    return AutoencoderDiTo(**tiny_config(**overrides)).eval()


def images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("latent_channels", [4, 16])
@pytest.mark.parametrize("size", [(32, 32), (48, 64), (64, 40)])
def test_shapes(tiny_config, latent_channels, size):
    vae = build(tiny_config, latent_channels=latent_channels)
    x = images(2, 3, *size)
    with torch.no_grad():
        enc = vae.encode(x)
        assert enc.latents.shape == (2, latent_channels, size[0] // 8, size[1] // 8)
        dec = vae.decode(enc.latents, generator=torch.Generator().manual_seed(0))
    assert isinstance(dec, DecoderOutput)
    assert dec.sample.shape == (2, 3, *size)
    assert dec.sample.min() >= -1 and dec.sample.max() <= 1


def test_downsample_factor_16(tiny_config):
    vae = build(tiny_config, block_out_channels=(8, 16, 16, 16, 16), latent_channels=32)
    assert vae.downsample_factor == 16
    with torch.no_grad():
        z = vae.encode(images(1, 3, 32, 48)).latents
        assert z.shape == (1, 32, 2, 3)
        assert vae.decode(z).sample.shape == (1, 3, 32, 48)


def test_latent_is_layer_normalised_per_sample(tiny_config):
    vae = build(tiny_config)
    x = torch.cat([images(1, 3, 32, 32) * 0.1, images(1, 3, 32, 32, seed=1)])
    with torch.no_grad():
        z = vae.encode(x).latents
    flat = z.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(2), atol=1e-3, rtol=0)
    assert not any(p.requires_grad for n, p in vae.named_parameters() if "layer_norm" in n)


def test_encoder_output_api(tiny_config):
    vae = build(tiny_config)
    with torch.no_grad():
        out = vae.encode(images(2, 3, 32, 32))
        (dist,) = vae.encode(images(2, 3, 32, 32), return_dict=False)
    assert torch.equal(out.latent_dist.sample(generator=torch.Generator().manual_seed(3)), out.latents)
    assert torch.equal(out.latent_dist.mode(), out.latents)
    assert torch.equal(dist.mode(), out.latents)
    assert torch.equal(out.latent_dist.kl(), torch.zeros(2))


def test_decode_is_deterministic_with_seeded_generator(tiny_config):
    vae = build(tiny_config)
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        a = vae.decode(z, generator=torch.Generator().manual_seed(7)).sample
        b = vae.decode(z, generator=torch.Generator().manual_seed(7)).sample
        c = vae.decode(z, generator=torch.Generator().manual_seed(8)).sample
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_slicing_gives_the_same_images(tiny_config):
    vae = build(tiny_config)
    x = images(3, 3, 32, 32)
    with torch.no_grad():
        z = vae.encode(x).latents
        full = vae.decode(z, generator=torch.Generator().manual_seed(0)).sample
        vae.enable_slicing()
        z_sliced = vae.encode(x).latents
        sliced = vae.decode(z, generator=torch.Generator().manual_seed(0)).sample
    torch.testing.assert_close(z_sliced, z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sliced, full, atol=1e-5, rtol=1e-5)


def test_per_image_generators(tiny_config):
    vae = build(tiny_config)
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        both = vae.decode(z, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).sample
        second = vae.decode(z[1:], generator=[torch.Generator().manual_seed(2)]).sample
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


def test_default_step_count_comes_from_config(tiny_config):
    vae = build(tiny_config, num_inference_steps=3)
    calls = []
    vae.decoder_unet.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 4, 4))
        assert len(calls) == 3
        vae.decode(torch.randn(1, 4, 4, 4), num_inference_steps=5)
    assert len(calls) == 8


def test_default_grid_is_the_papers_uniform_euler_grid(tiny_config):
    vae = build(tiny_config)
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 4, 4), num_inference_steps=4)
    torch.testing.assert_close(vae.scheduler.sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    torch.testing.assert_close(vae.scheduler.timesteps, torch.tensor([1000.0, 750.0, 500.0, 250.0]))


def test_accepts_other_flow_match_schedulers(tiny_config):
    vae = build(tiny_config)
    calls = []
    vae.decoder_unet.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        out = vae.decode(torch.randn(1, 4, 4, 4), num_inference_steps=3, scheduler=FlowMatchHeunDiscreteScheduler())
    assert out.sample.shape == (1, 3, 32, 32)
    assert len(calls) == 5  # Heun: 2 evaluations per step except the last
    heun = FlowMatchHeunDiscreteScheduler()
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 4, 4), num_inference_steps=2, scheduler=heun)
    torch.testing.assert_close(heun.sigmas, torch.tensor([1.0, 0.5, 0.5, 0.0]))  # the paper's uniform grid
    assert heun.sigma_min == pytest.approx(1e-3)  # the scheduler's own setting is left as it was


@pytest.mark.parametrize(
    "heun, steps, evaluations", [(False, None, 2), (False, 3, 3), (True, None, 3), (True, 3, 5)]
)  # the config's 2 steps by default; Heun evaluates twice per step but the last
def test_decode_integrates_on_the_grid_of_retrieve_timesteps(tiny_config, heun, steps, evaluations):
    vae = build(tiny_config, num_inference_steps=2)
    scheduler = FlowMatchHeunDiscreteScheduler(shift=2.0) if heun else None
    timesteps = vae.retrieve_timesteps(steps, scheduler).tolist()
    seen = []
    with torch.no_grad():
        vae.decode(
            torch.randn(1, 4, 4, 4),
            num_inference_steps=steps,
            scheduler=scheduler,
            callback_on_step_end=lambda step, t, kwargs: seen.append(float(t)) or kwargs,
        )
    assert seen == timesteps and len(seen) == evaluations


def test_forward_is_encode_then_decode(tiny_config):
    vae = build(tiny_config)
    x = images(1, 3, 32, 32)
    with torch.no_grad():
        rec = vae(x, generator=torch.Generator().manual_seed(0)).sample
        ref = vae.decode(vae.encode(x).latents, generator=torch.Generator().manual_seed(0)).sample
    assert torch.equal(rec, ref)


def test_save_load_round_trip(tiny_config, tmp_path):
    vae = build(tiny_config)
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").exists()
    loaded = AutoencoderDiTo.from_pretrained(tmp_path / "vae").eval()
    strip = lambda cfg: {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert strip(loaded.config) == strip(vae.config)
    x = images(2, 3, 32, 32)
    with torch.no_grad():
        z, z2 = vae.encode(x).latents, loaded.encode(x).latents
        assert torch.equal(z, z2)
        a = vae.decode(z, generator=torch.Generator().manual_seed(0)).sample
        b = loaded.decode(z, generator=torch.Generator().manual_seed(0)).sample
    assert torch.equal(a, b)


def test_gradient_checkpointing_matches(tiny_config):
    vae = build(tiny_config)
    vae.train()
    x = images(2, 3, 32, 32)
    t = torch.tensor([100.0, 900.0])

    def grads():
        vae.zero_grad()
        z = vae.encode(x).latents
        vae.predict_velocity(torch.zeros_like(x), t, vae.upsample_latents(z)).square().mean().backward()
        return [p.grad.clone() for p in vae.parameters() if p.grad is not None]

    ref = grads()
    vae.enable_gradient_checkpointing()
    assert vae.is_gradient_checkpointing
    for a, b in zip(grads(), ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, 32, 32), "4-D"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.int64), "floating-point"),
        (torch.zeros(1, 4, 32, 32), r"\(batch, 3, H, W\)"),
        (torch.zeros(1, 3, 30, 32), "multiples of 8"),
        (torch.zeros(1, 3, 32, 36), "multiples of 8"),
        (torch.zeros(0, 3, 32, 32), "got shape"),
    ],
)
def test_bad_images_raise_value_error(tiny_config, bad, match):
    vae = build(tiny_config)
    with pytest.raises(ValueError, match=match):
        vae.encode(bad)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(1, 16, 4, 4), r"\(batch, 4, h, w\)"),
        (torch.zeros(4, 4, 4), "4-D"),
        (torch.zeros(1, 4, 4, 4, dtype=torch.int32), "floating-point"),
    ],
)
def test_bad_latents_raise_value_error(tiny_config, bad, match):
    vae = build(tiny_config)
    with pytest.raises(ValueError, match=match):
        vae.decode(bad)


def test_bad_step_count_and_non_tensor(tiny_config):
    vae = build(tiny_config)
    with pytest.raises(ValueError, match=">= 1"):
        vae.decode(torch.zeros(1, 4, 4, 4), num_inference_steps=0)
    with pytest.raises(TypeError, match="int"):
        vae.decode(torch.zeros(1, 4, 4, 4), num_inference_steps=2.5)
    with pytest.raises(TypeError, match="4-D"):
        vae.encode([[0.0]])


def test_config_is_flat_and_pipeline_compatible(tiny_config):
    vae = build(tiny_config)
    cfg = vae.config
    assert cfg.scaling_factor == 1.0 and cfg.shift_factor == 0.0 and cfg.force_upcast is False
    assert 2 ** (len(cfg.block_out_channels) - 1) == vae.downsample_factor == downsample_factor_of(cfg) == 8
    assert downsample_factor_of({}) == 8  # a config without `block_out_channels` has the default's factor
    assert all(not isinstance(v, dict) for v in cfg.values())


def test_decoder_depth_must_divide_encoder_factor(tiny_config):
    with pytest.raises(ValueError, match="must divide"):
        AutoencoderDiTo(**tiny_config(block_out_channels=(8, 16), decoder_block_out_channels=(8, 16, 32)))


def test_custom_and_shifted_sigma_grids(tiny_config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    vae = build(tiny_config)
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        vae.decode(z, num_inference_steps=3, sigmas=[1.0, 0.5, 0.1])
        torch.testing.assert_close(vae.scheduler.sigmas, torch.tensor([1.0, 0.5, 0.1, 0.0]))
        shifted = FlowMatchEulerDiscreteScheduler(shift=3.0)
        vae.decode(z, num_inference_steps=2, scheduler=shifted)
        torch.testing.assert_close(shifted.sigmas, torch.tensor([1.0, 0.75, 0.0]))  # 3σ / (1 + 2σ) at σ = 0.5
    with pytest.raises(ValueError, match="strictly decreasing"):
        vae.decode(z, num_inference_steps=2, sigmas=[0.5, 1.0])
    with pytest.raises(ValueError, match="2 values"):
        vae.decode(z, num_inference_steps=2, sigmas=[1.0])
    with pytest.raises(ValueError, match="custom"):
        vae.decode(z, num_inference_steps=2, sigmas=[1.0, 0.5], scheduler=FlowMatchHeunDiscreteScheduler())
