"""Tests of `diffusers_dito.metrics`: each metric against its formula or a reference implementation, offline."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from conftest import run_python, smooth_images
from diffusers_dito.metrics import (
    DINOV2_PATH_ENV,
    INCEPTION_WEIGHTS_ENV,
    LPIPS_BACKBONE_ENV,
    MissingWeightsError,
    compute_generation_metrics,
    compute_metrics,
    frechet_dinov2_distance,
    frechet_distance,
    frechet_inception_distance,
    high_frequency_energy_ratio,
    lpips,
    psnr,
    sliced_wasserstein_distance,
    ssim,
)
from diffusers_dito.metrics._inputs import _to_uint8
from diffusers_dito.metrics.perceptual import _lpips_backbone
from diffusers_dito.metrics.swd import laplacian_pyramid

SWD_FAST = {"nhoods_per_image": 32, "dirs_per_repeat": 32}


@pytest.fixture(autouse=True)
def no_user_weights(monkeypatch, tmp_path):
    """Nothing from the developer's machine: no weight env vars, and an empty torch hub cache."""
    for env in (INCEPTION_WEIGHTS_ENV, DINOV2_PATH_ENV, LPIPS_BACKBONE_ENV):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def textured(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with an edge plus fine texture, in [-1, 1]: energy at every frequency."""
    noise = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed + 100)) * 2 - 1
    return (smooth_images(n, size, seed) * 0.8 + 0.2 * noise).clamp(-1, 1)


def box_blur(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="reflect"), k, stride=1)


def add_noise(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


def assert_one_line(err: Exception, *needles: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# --- PSNR / SSIM -----------------------------------------------------------------------------------------------------


def test_psnr_matches_the_formula_per_image_then_mean():
    x, y = textured(3), add_noise(textured(3), 0.1)
    mse = (x - y).square().mean(dim=(1, 2, 3))
    expected = (10 * torch.log10(4.0 / mse)).mean()  # peak-to-peak range of [-1, 1] is 2
    assert psnr(y, x) == pytest.approx(float(expected), rel=1e-5)
    assert psnr(x, x) == math.inf


def test_psnr_clamps_decoder_overshoot_to_the_valid_range():
    x = textured(2)
    assert psnr(x * 1.2, x.sign()) == pytest.approx(psnr(x.mul(1.2).clamp(-1, 1), x.sign()))


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = textured(2)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ssim(add_noise(x, 0.3), x) < ssim(add_noise(x, 0.05), x) < 1.0


# --- SWD -------------------------------------------------------------------------------------------------------------


def test_swd_of_a_set_with_itself_is_zero_and_levels_go_down_to_16px():
    x = textured(4, 64)
    out = sliced_wasserstein_distance(x, x, **SWD_FAST)
    assert list(out.per_level) == [64, 32, 16]
    assert out.mean == 0.0 and all(v == 0.0 for v in out.per_level.values())
    assert list(sliced_wasserstein_distance(x[..., :16, :20], x[..., :16, :20], **SWD_FAST).per_level) == [16]


def test_swd_grows_with_noise_and_blur():
    x = textured(8, 32)
    swd = lambda y: sliced_wasserstein_distance(y, x, **SWD_FAST).mean  # noqa: E731
    assert 0 < swd(add_noise(x, 0.02)) < swd(add_noise(x, 0.1)) < swd(add_noise(x, 0.4))
    assert 0 < swd(box_blur(x, 3)) < swd(box_blur(x, 7))


def test_swd_is_deterministic_for_a_seed():
    x, y = textured(4, 32), add_noise(textured(4, 32), 0.1)
    first = sliced_wasserstein_distance(y, x, seed=3, **SWD_FAST)
    assert sliced_wasserstein_distance(y, x, seed=3, **SWD_FAST) == first
    assert sliced_wasserstein_distance(y, x, seed=4, **SWD_FAST).mean != first.mean


def test_swd_pyramid_matches_the_reference_scipy_pyramid():
    ndimage = pytest.importorskip("scipy.ndimage")
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32)[None, None] / 256

    def reference(x, levels):  # Karras et al.'s generate_laplacian_pyramid, cropped for odd sizes
        pyramid = [x]
        for _ in range(1, levels):
            pyramid.append(ndimage.convolve(pyramid[-1], kernel, mode="mirror")[:, :, ::2, ::2])
            up = np.zeros((*x.shape[:2], 2 * pyramid[-1].shape[2], 2 * pyramid[-1].shape[3]), np.float32)
            up[:, :, ::2, ::2] = pyramid[-1]
            up = ndimage.convolve(up, kernel * 4, mode="mirror")
            pyramid[-2] = pyramid[-2] - up[:, :, : pyramid[-2].shape[2], : pyramid[-2].shape[3]]
        return pyramid

    for shape in [(2, 3, 64, 64), (1, 3, 37, 45)]:
        x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        ours = laplacian_pyramid(torch.from_numpy(x), 3)
        for level, expected in zip(ours, reference(x, 3), strict=True):
            np.testing.assert_allclose(level.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": torch.zeros(2, 3, 8, 8), "reference_images": torch.zeros(2, 3, 8, 8)}, "at least 16 px"),
        ({"images": torch.zeros(2, 3, 32, 32), "reference_images": torch.zeros(3, 3, 32, 32)}, "same shape"),
        ({"nhood_size": 6}, "odd"),
        ({"min_resolution": 4}, "at least `nhood_size`"),
    ],
)
def test_swd_rejects_bad_arguments(kwargs, match):
    arguments = {"images": textured(2), "reference_images": textured(2)} | kwargs
    with pytest.raises(ValueError, match=match):
        sliced_wasserstein_distance(**arguments)


# --- High-frequency energy ratio -------------------------------------------------------------------------------------


def test_hf_ratio_is_one_for_identical_below_one_when_blurred_above_when_noisy():
    x = textured(4, 64)
    assert high_frequency_energy_ratio(x, x) == pytest.approx(1.0)
    assert high_frequency_energy_ratio(box_blur(x, 3), x) < 0.5
    assert high_frequency_energy_ratio(add_noise(x, 0.2), x) > 1.2
    assert high_frequency_energy_ratio(box_blur(x, 5), x) < high_frequency_energy_ratio(box_blur(x, 3), x)


def test_hf_ratio_rejects_a_bad_cutoff_and_featureless_originals():
    with pytest.raises(ValueError, match="cutoff"):
        high_frequency_energy_ratio(textured(1), textured(1), cutoff=1.5)
    with pytest.raises(ValueError, match="no energy"):
        high_frequency_energy_ratio(textured(1), torch.zeros(1, 3, 32, 32))


# --- Fréchet distance ------------------------------------------------------------------------------------------------


def test_frechet_distance_is_zero_for_identical_sets_and_matches_the_scipy_formula():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), torch.randn(150, 16, generator=g) * 1.5 + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a + 2.0, a) == pytest.approx(4.0 * 16, rel=1e-8)  # covariances equal: ‖Δμ‖² only

    a64, b64 = a.double().numpy(), b.double().numpy()
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    expected = ((a64.mean(0) - b64.mean(0)) ** 2).sum() + np.trace(
        cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real
    )
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, b) > 0


def test_frechet_distance_handles_rank_deficient_covariances():
    a = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))  # N < D, as with few images and 2048 features
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a.flip(1)) > 0


@pytest.mark.parametrize(
    "a, b, match",
    [
        (torch.randn(1, 4), torch.randn(5, 4), "N >= 2"),
        (torch.randn(5, 4, 1), torch.randn(5, 4), r"\(N, D\)"),
        (torch.randn(5, 4), torch.randn(5, 3), "dimensions differ"),
        (torch.full((5, 4), math.nan), torch.randn(5, 4), "NaN"),
    ],
)
def test_frechet_distance_rejects_bad_features(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)


# --- FID -------------------------------------------------------------------------------------------------------------


class TinyInception(torch.nn.Module):
    """Random stand-in for Inception-v3 with its interface: uint8 (B, 3, H, W) -> (B, D) pooled features."""

    num_features = 12

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, self.num_features, 3, stride=2)

    def forward(self, x):
        assert x.dtype == torch.uint8
        return torch.relu(self.conv(x.float() / 255)).mean(dim=(2, 3))


def test_fid_with_a_custom_extractor_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = TinyInception()
    x, y = textured(16, 32), add_noise(textured(16, 32, seed=5), 0.2)
    ours = frechet_inception_distance(y, x, inception=extractor, batch_size=5)

    reference = FrechetInceptionDistance(feature=extractor)
    reference.update(_to_uint8(x), real=True)
    reference.update(_to_uint8(y), real=False)
    assert ours == pytest.approx(float(reference.compute()), rel=1e-4)
    assert ours > 0
    assert frechet_inception_distance(x, x, inception=extractor) == pytest.approx(0.0, abs=1e-8)


def test_fid_without_weights_says_in_one_line_how_to_provide_them(tmp_path):
    x = textured(2)
    with pytest.raises(MissingWeightsError) as err:
        frechet_inception_distance(x, x)
    assert_one_line(err.value, "inception=", INCEPTION_WEIGHTS_ENV, "weights-inception-2015-12-05-6726825d.pth")
    with pytest.raises(MissingWeightsError) as err:
        frechet_inception_distance(x, x, inception=tmp_path / "nope.pth")
    assert_one_line(err.value, "nope.pth", "not a file")


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
@pytest.mark.parametrize("where", ["env", "hub cache"])
def test_fid_weights_file_without_torch_fidelity_names_the_package(where, tmp_path, monkeypatch):
    folder = tmp_path / "torch_home" / "hub" / "checkpoints" if where == "hub cache" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    if where == "env":
        monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))
    with pytest.raises(ModuleNotFoundError) as err:  # the weights were found; the package is what is missing
        frechet_inception_distance(textured(2), textured(2))
    assert_one_line(err.value, "pip install torch-fidelity")


# --- FD-DINOv2 -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28, patch_size=14
    )
    path = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2Model(config).save_pretrained(path)
    return path


def test_fd_dinov2_from_a_local_folder(tiny_dinov2_dir, monkeypatch):
    x, y = textured(6, 32), add_noise(textured(6, 32, seed=7), 0.3)
    by_path = frechet_dinov2_distance(y, x, dinov2=str(tiny_dinov2_dir), resolution=28)
    assert by_path > 0
    assert frechet_dinov2_distance(x, x, dinov2=tiny_dinov2_dir, resolution=28) == pytest.approx(0.0, abs=1e-8)

    model = Dinov2Model.from_pretrained(tiny_dinov2_dir)
    assert frechet_dinov2_distance(y, x, dinov2=model, resolution=28, batch_size=4) == pytest.approx(by_path, rel=1e-5)
    monkeypatch.setenv(DINOV2_PATH_ENV, str(tiny_dinov2_dir))
    assert frechet_dinov2_distance(y, x, resolution=28) == pytest.approx(by_path, rel=1e-5)


def test_fd_dinov2_uses_the_cls_token_of_imagenet_normalised_resized_images(tiny_dinov2_dir):
    model = Dinov2Model.from_pretrained(tiny_dinov2_dir).eval()
    x, y = textured(4, 32), textured(4, 32, seed=9)

    def features(images):
        images = _to_uint8(images).float() / 255
        images = F.interpolate(images, size=(28, 28), mode="bicubic", antialias=True)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        with torch.no_grad():
            return model(pixel_values=(images - mean[:, None, None]) / std[:, None, None]).last_hidden_state[:, 0]

    expected = frechet_distance(features(y), features(x))
    assert frechet_dinov2_distance(y, x, dinov2=model, resolution=28) == pytest.approx(expected, rel=1e-5)


def test_fd_dinov2_without_weights_says_in_one_line_how_to_provide_them(tmp_path):
    x = textured(2)
    with pytest.raises(MissingWeightsError) as err:
        frechet_dinov2_distance(x, x)
    assert_one_line(err.value, "dinov2=", DINOV2_PATH_ENV, "config.json", "model.safetensors")
    (tmp_path / "config.json").write_text("{}")  # a folder without weights is no better
    with pytest.raises(MissingWeightsError) as err:
        frechet_dinov2_distance(x, x, dinov2=tmp_path)
    assert_one_line(err.value, str(tmp_path))


# --- LPIPS -----------------------------------------------------------------------------------------------------------


def save_random_backbone(net_type: str, folder: Path) -> Path:
    """A randomly initialised backbone checkpoint in torchvision's layout (with a classifier, which LPIPS drops)."""
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in _lpips_backbone(net_type).state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(2, 2)
    path = folder / {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}[net_type]
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def random_alexnet(tmp_path_factory):
    return save_random_backbone("alex", tmp_path_factory.mktemp("torchvision"))


def test_lpips_is_zero_for_identical_images_and_grows_with_distortion(random_alexnet):
    x = textured(2, 64)
    assert lpips(x, x, backbone=random_alexnet) == pytest.approx(0.0, abs=1e-7)
    assert (
        0
        < lpips(add_noise(x, 0.05), x, backbone=random_alexnet)
        < lpips(add_noise(x, 0.4), x, backbone=random_alexnet)
    )


@pytest.mark.parametrize("net_type", ["alex", "vgg"])
def test_lpips_matches_torchmetrics_with_the_same_backbone(net_type, random_alexnet, tmp_path, monkeypatch):
    from torchmetrics.functional.image import lpips as tm_lpips

    checkpoint = random_alexnet if net_type == "alex" else save_random_backbone("vgg", tmp_path)

    def local_backbone(net, pretrained=False):  # stands in for torchvision.models.<net>(weights=...).features
        features = _lpips_backbone(net_type)
        state = torch.load(checkpoint, weights_only=True)
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items() if "features" in k})
        return features

    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", local_backbone)
    x, y = textured(3, 32), add_noise(textured(3, 32, seed=4), 0.2)
    expected = tm_lpips.learned_perceptual_image_patch_similarity(y, x, net_type=net_type)
    ours = lpips(y, x, backbone=checkpoint, net_type=net_type, batch_size=2)
    assert ours == pytest.approx(float(expected), rel=1e-5)


def test_lpips_finds_the_backbone_in_the_torch_hub_cache(random_alexnet, tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / random_alexnet.name).write_bytes(random_alexnet.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    x = textured(1, 32)
    assert lpips(add_noise(x, 0.1), x) == pytest.approx(lpips(add_noise(x, 0.1), x, backbone=random_alexnet))


def test_lpips_without_weights_says_in_one_line_how_to_provide_them():
    x = textured(1, 32)
    with pytest.raises(MissingWeightsError) as err:
        lpips(x, x)
    assert_one_line(err.value, "backbone=", LPIPS_BACKBONE_ENV, "alexnet-owt-7be5be79.pth")
    with pytest.raises(MissingWeightsError) as err:
        lpips(x, x, net_type="vgg")
    assert_one_line(err.value, "vgg16-397923af.pth")
    with pytest.raises(ValueError, match="net_type"):
        lpips(x, x, net_type="squeeze")


# --- compute_metrics -------------------------------------------------------------------------------------------------


def test_compute_metrics_runs_the_weight_free_metrics_and_records_the_skipped_ones():
    x = textured(2, 32)
    report = compute_metrics(add_noise(x, 0.1), x)
    assert set(report.values) == {"psnr", "ssim", "swd", "swd_32", "swd_16", "hf_energy_ratio"}
    assert set(report.skipped) == {"lpips", "rfid", "fd_dinov2"}
    for reason in report.skipped.values():
        assert "\n" not in reason and "=" in reason
    assert report.values["psnr"] == pytest.approx(psnr(add_noise(x, 0.1), x))


def test_compute_metrics_with_all_weights(tiny_dinov2_dir, random_alexnet):
    x = textured(4, 32)
    report = compute_metrics(
        add_noise(x, 0.1), x, inception=TinyInception(), dinov2=tiny_dinov2_dir, lpips_backbone=random_alexnet
    )
    assert report.skipped == {}
    assert {"lpips", "rfid", "fd_dinov2"} <= set(report.values)
    assert all(math.isfinite(v) for v in report.values.values())


def test_compute_generation_metrics_subsamples_the_larger_set_for_swd_and_skips_missing_weights():
    samples, real = add_noise(textured(3, 32), 0.2), textured(5, 32, seed=3)
    report = compute_generation_metrics(samples, real)
    assert set(report.values) == {"swd", "swd_32", "swd_16"} and set(report.skipped) == {"gfid", "fd_dinov2"}
    for reason in report.skipped.values():
        assert "\n" not in reason and "=" in reason
    assert report.values["swd"] > 0
    assert compute_generation_metrics(samples, real).values == report.values  # the subset is drawn from `seed`
    assert compute_generation_metrics(real, real).values["swd"] == 0.0


def test_compute_generation_metrics_with_weights_and_bad_inputs(tiny_dinov2_dir):
    samples, real = add_noise(textured(4, 32), 0.2), textured(6, 32, seed=3)
    report = compute_generation_metrics(samples, real, inception=TinyInception(), dinov2=tiny_dinov2_dir)
    assert report.skipped == {}
    assert report.values["gfid"] == pytest.approx(frechet_inception_distance(samples, real, TinyInception()))
    with pytest.raises(ValueError, match="same image size"):
        compute_generation_metrics(samples, textured(4, 64))
    with pytest.raises(ValueError, match=">= 2 images"):
        compute_generation_metrics(samples[:1], real)


def test_public_names_are_importable_from_the_package():
    import diffusers_dito.metrics as package

    assert all(callable(getattr(package, name)) or name.endswith("_ENV") for name in package.__all__)
    assert package.MissingWeightsError.__mro__[1] is RuntimeError


def test_importing_the_package_leaves_torchmetrics_until_a_metric_needs_it(tmp_path):
    # torchmetrics costs seconds to import, which every training process and every test subprocess would pay
    code = "import sys, torch, diffusers_dito, diffusers_dito.metrics as m; print('torchmetrics' in sys.modules); "
    code += "m.psnr(-torch.ones(1, 3, 8, 8), torch.ones(1, 3, 8, 8)); print('torchmetrics' in sys.modules)"
    assert run_python(code, cwd=tmp_path).stdout.split() == ["False", "True"]


# --- Input validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, 32, 32), r"\(B, C, H, W\)"),
        (torch.zeros(0, 3, 32, 32), "non-empty"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float tensor"),
        (torch.full((2, 3, 32, 32), 255.0), r"\[0, 255\]"),
        (torch.full((2, 3, 32, 32), math.nan), "NaN"),
        (torch.zeros(2, 3, 32, 16), "same shape"),
    ],
)
@pytest.mark.parametrize("metric", [psnr, ssim, high_frequency_energy_ratio, sliced_wasserstein_distance])
def test_bad_images_raise_value_error(metric, bad, match):
    with pytest.raises(ValueError, match=match):
        metric(bad, torch.zeros(2, 3, 32, 32))


def test_network_metrics_check_channels_and_set_sizes(random_alexnet):
    grey = torch.zeros(4, 1, 32, 32)
    with pytest.raises(ValueError, match="3 channels"):
        frechet_inception_distance(grey, grey, inception=TinyInception())
    with pytest.raises(ValueError, match="3 channels"):
        lpips(grey, grey, backbone=random_alexnet)
    with pytest.raises(ValueError, match=">= 2 images"):
        frechet_dinov2_distance(textured(1), textured(3), dinov2="unused")
    with pytest.raises(ValueError, match="batch_size"):
        frechet_inception_distance(textured(2), textured(2), inception=TinyInception(), batch_size=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        psnr(np.zeros((1, 3, 8, 8)), torch.zeros(1, 3, 8, 8))
