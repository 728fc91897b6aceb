import pytest
import torch

from diffusers_dito import AutoencoderDiTo, dito_flow_matching_loss


@pytest.fixture
def vae(tiny_config):
    torch.manual_seed(0)
    return AutoencoderDiTo(**tiny_config())


def batch(n=64):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_noise_sync_p1_draws_t_above_tau(vae):
    out = dito_flow_matching_loss(vae, batch(), noise_sync_prob=1.0, generator=torch.Generator().manual_seed(0))
    assert out.noise_synced.all()
    assert (out.tau > 0).all() and (out.tau < 1).all()
    assert (out.t >= out.tau).all() and (out.t <= 1).all()


def test_noise_sync_p0_never_noises_the_latent(vae, monkeypatch):
    seen = {}
    original = vae.upsample_latents

    def spy(z):
        seen["z"] = z
        return original(z)

    monkeypatch.setattr(vae, "upsample_latents", spy)
    x = batch()
    out = dito_flow_matching_loss(vae, x, noise_sync_prob=0.0, generator=torch.Generator().manual_seed(0))
    assert not out.noise_synced.any() and (out.tau == 0).all()
    assert torch.equal(seen["z"], vae.encode(x).latents)
    assert out.t.min() < 0.1 and out.t.max() > 0.9  # t ~ U[0, 1]


def test_noise_sync_reaches_the_decoder_input(vae, monkeypatch):
    seen = {}
    original = vae.upsample_latents

    def spy(z):
        seen["z"] = z
        return original(z)

    monkeypatch.setattr(vae, "upsample_latents", spy)
    x = batch()
    out = dito_flow_matching_loss(vae, x, noise_sync_prob=1.0, generator=torch.Generator().manual_seed(0))
    clean = vae.encode(x).latents
    diff = (seen["z"] - clean).flatten(1).norm(dim=1)
    assert (diff > 0).all()
    # Heavier noise moves the latent further: correlation between τ and the change.
    assert torch.corrcoef(torch.stack([diff, out.tau]))[0, 1] > 0.8


def test_loss_is_per_sample_mse_against_eps_minus_x(vae):
    x = batch(4)
    g = torch.Generator().manual_seed(5)
    out = dito_flow_matching_loss(vae, x, generator=g)
    # Recompute from the same random stream: (3, B) uniforms, latent noise, image noise.
    g = torch.Generator().manual_seed(5)
    u = torch.rand(3, 4, generator=g)
    z = vae.encode(x).latents
    torch.randn(z.shape, generator=g)
    eps = torch.randn(x.shape, generator=g)
    t = u[2].view(-1, 1, 1, 1)
    pred = vae.predict_velocity((1 - t) * x + t * eps, u[2] * 1000, vae.upsample_latents(z))
    expected = (pred - (eps - x)).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.per_sample_loss, expected)
    torch.testing.assert_close(out.loss, expected.mean())
    out.loss.backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0  # trained jointly through the encoder


def test_rejects_bad_probability(vae):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dito_flow_matching_loss(vae, batch(2), noise_sync_prob=1.5)


def test_latent_flow_matching_loss_target_and_class_dropout():
    from diffusers_dito import DIT_PRESETS, DiToDiTTransformer2DModel, latent_flow_matching_loss

    torch.manual_seed(0)
    dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
    z = torch.randn(64, 4, 4, 4)
    labels = torch.randint(0, 10, (64,))
    seen = {}
    dit.register_forward_hook(lambda m, args, kwargs, out: seen.update(kwargs), with_kwargs=True)
    out = latent_flow_matching_loss(
        dit, z, labels, num_classes=10, class_dropout_prob=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert 10 < out.dropped.sum() < 54  # about half
    assert torch.equal(seen["class_labels"], torch.where(out.dropped, 10, labels))
    torch.testing.assert_close(seen["timestep"], out.t * 1000)
    # Recompute the target from the same random stream: (2, B) uniforms, then the noise.
    g = torch.Generator().manual_seed(0)
    torch.rand(2, 64, generator=g)
    eps = torch.randn(z.shape, generator=g)
    t = out.t.view(-1, 1, 1, 1)
    pred = dit((1 - t) * z + t * eps, timestep=out.t * 1000, class_labels=seen["class_labels"]).sample
    torch.testing.assert_close(out.per_sample_loss, (pred - (eps - z)).pow(2).mean(dim=(1, 2, 3)))
    none = latent_flow_matching_loss(dit, z, labels, num_classes=10, class_dropout_prob=0.0)
    assert not none.dropped.any()


def test_laplacian_l2_loss_weights_the_finest_band():
    from diffusers_dito import laplacian_l2_loss
    from diffusers_dito.metrics.swd import laplacian_pyramid

    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert laplacian_l2_loss(target, target).tolist() == [0.0, 0.0]
    # fine_weight 1: the plain sum of the per-band mean squared differences
    sample = target + 0.1 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    bands = [
        (s - t).pow(2).mean(dim=(1, 2, 3)) for s, t in zip(laplacian_pyramid(sample, 3), laplacian_pyramid(target, 3))
    ]
    torch.testing.assert_close(laplacian_l2_loss(sample, target, fine_weight=1.0), sum(bands))
    # A pixel-scale error (a checkerboard) costs more as the finest band's weight grows; a smooth one (a constant
    # offset, which lives in the low-pass residual) costs less.
    checker = 0.1 * (torch.arange(32)[:, None] + torch.arange(32)).remainder(2).float().expand(2, 3, 32, 32)
    for error, rises in [(checker, True), (torch.full_like(target, 0.1), False)]:
        plain, weighted = (laplacian_l2_loss(target + error, target, fine_weight=w) for w in (1.0, 4.0))
        assert (weighted > plain).all() if rises else (weighted < plain).all(), (plain, weighted)
    # Differentiable, and per sample
    sample.requires_grad_(True)
    laplacian_l2_loss(sample, target)[0].backward()
    assert sample.grad[0].abs().sum() > 0 and sample.grad[1].abs().sum() == 0


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((2, 3, 32, 32), (2, 3, 16, 16)), {}, "of one shape"),
        (((2, 3, 32, 32),) * 2, {"num_levels": 5}, "at least 3 px"),
        (((2, 3, 32, 32),) * 2, {"num_levels": 0}, "at least 3 px"),
        (((2, 3, 32, 32),) * 2, {"fine_weight": 0.0}, "finite number > 0"),
    ],
)
def test_laplacian_l2_loss_rejects_bad_input(shapes, kwargs, match):
    from diffusers_dito import laplacian_l2_loss

    with pytest.raises(ValueError, match=match):
        laplacian_l2_loss(torch.zeros(shapes[0]), torch.zeros(shapes[1]), **kwargs)


def test_patch_sliced_wasserstein_loss_asks_for_grain_but_not_where_it_lies():
    from diffusers_dito import laplacian_l2_loss, patch_sliced_wasserstein_loss

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    smooth = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8, generator=gen(0)), size=32, mode="bilinear")
    target = smooth + 0.1 * torch.randn(8, 3, 32, 32, generator=gen(1))  # the teacher's grain, from one noise
    regrained = smooth + 0.1 * torch.randn(8, 3, 32, 32, generator=gen(2))  # the same grain from another noise
    swd = {name: float(patch_sliced_wasserstein_loss(x, target, generator=gen(3))) for name, x in
           [("regrained", regrained), ("smooth", smooth)]}  # fmt: skip
    paired = {
        name: float(laplacian_l2_loss(x, target).mean()) for name, x in [("regrained", regrained), ("smooth", smooth)]
    }
    # A paired L2 pays a decoder to drop grain it cannot place (the average); the set distance asks for the grain.
    assert paired["smooth"] < paired["regrained"], paired
    assert swd["regrained"] < swd["smooth"] / 10, swd
    # Indifferent to the order of the batch, deterministic for a generator, and differentiable
    assert float(patch_sliced_wasserstein_loss(target.flip(0), target, generator=gen(3))) < 1e-12
    assert patch_sliced_wasserstein_loss(smooth, target, generator=gen(3)) == swd["smooth"]
    sample = smooth.clone().requires_grad_(True)
    patch_sliced_wasserstein_loss(sample, target, generator=gen(3)).backward()
    assert sample.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        (((2, 3, 32, 32), (2, 3, 16, 16)), {}, "of one shape"),
        (((2, 3, 32, 32),) * 2, {"num_levels": 5}, "at least `patch_size`"),
        (((2, 3, 32, 32),) * 2, {"num_levels": 1}, "at least `patch_size`"),
        (((2, 3, 32, 32),) * 2, {"num_directions": 0}, "num_directions"),
    ],
)
def test_patch_sliced_wasserstein_loss_rejects_bad_input(shapes, kwargs, match):
    from diffusers_dito import patch_sliced_wasserstein_loss

    with pytest.raises(ValueError, match=match):
        patch_sliced_wasserstein_loss(torch.zeros(shapes[0]), torch.zeros(shapes[1]), **kwargs)
