import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, ImagePipelineOutput

from diffusers_dito import AutoencoderDiTo, DiToPipeline


@pytest.fixture
def pipe(tiny_config):
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_config()).eval()
    pipeline = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pil(h, w, seed=0, mode="RGB"):
    array = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return PIL.Image.fromarray(array).convert(mode)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_reconstruction_output_slice(pipe):
    out = pipe(pil(32, 32), num_inference_steps=2, generator=gen(), output_type="np")
    assert isinstance(out, ImagePipelineOutput)
    image = out.images
    assert image.shape == (1, 32, 32, 3)
    expected = pipe(pil(32, 32), num_inference_steps=2, generator=gen(), output_type="np").images
    np.testing.assert_array_equal(image, expected)
    # Regression slice (diffusers style): the bottom-right 3x3 of the first channel, seed 0, 2 Euler steps.
    expected_slice = np.array(EXPECTED_SLICE)
    np.testing.assert_allclose(image[0, -3:, -3:, 0].flatten(), expected_slice, atol=1e-3)
    assert np.abs(image - image.mean()).max() > 0.1  # not a constant image


EXPECTED_SLICE = [1.0, 0.4195, 0.5706, 0.619, 0.5975, 0.4087, 0.8151, 1.0, 0.0]


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types(pipe, output_type):
    images = pipe(pil(32, 48), num_inference_steps=2, generator=gen(), output_type=output_type).images
    if output_type == "pil":
        assert isinstance(images[0], PIL.Image.Image) and images[0].size == (48, 32)
    elif output_type == "np":
        assert images.shape == (1, 32, 48, 3) and images.min() >= 0 and images.max() <= 1
    elif output_type == "pt":
        assert images.shape == (1, 3, 32, 48) and images.min() >= 0 and images.max() <= 1
    else:
        assert images.shape == (1, 4, 4, 6)


def test_input_kinds_agree(pipe):
    image = pil(32, 32)
    array = np.asarray(image).astype(np.float32) / 255.0  # (H, W, C) in [0, 1]
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]  # (1, C, H, W) in [0, 1], diffusers' convention
    ref = pipe(image, num_inference_steps=2, generator=gen(), output_type="np").images
    for other in (array, tensor, [image]):
        out = pipe(other, num_inference_steps=2, generator=gen(), output_type="np").images
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_odd_size_round_trips(pipe):
    out = pipe(pil(37, 53), num_inference_steps=2, generator=gen())
    assert out.images[0].size == (53, 37)
    z = pipe.encode(pil(37, 53))
    assert z.shape == (1, 4, 5, 7)
    decoded = pipe(latents=z, height=37, width=53, num_inference_steps=2, generator=gen(), output_type="np").images
    assert decoded.shape == (1, 37, 53, 3)
    ref = pipe(pil(37, 53), num_inference_steps=2, generator=gen(), output_type="np").images
    np.testing.assert_allclose(decoded, ref, atol=1e-5)


def test_tiny_image_smaller_than_the_factor(pipe):
    out = pipe(pil(3, 5), num_inference_steps=1, generator=gen(), output_type="np").images
    assert out.shape == (1, 3, 5, 3)


def test_grayscale_and_rgba_images(pipe):
    for mode in ("L", "RGBA", "P"):
        out = pipe(pil(16, 16, mode=mode), num_inference_steps=1, generator=gen(), output_type="np").images
        assert out.shape == (1, 16, 16, 3)


def test_batch_split_determinism_with_per_image_generators(pipe):
    images = [pil(32, 32, seed=s) for s in range(3)]
    full = pipe(images, num_inference_steps=2, generator=[gen(s) for s in range(3)], output_type="np").images
    last = pipe(images[2:], num_inference_steps=2, generator=[gen(2)], output_type="np").images
    np.testing.assert_allclose(full[2:], last, atol=1e-5)
    pipe.vae.enable_slicing()
    sliced = pipe(images, num_inference_steps=2, generator=[gen(s) for s in range(3)], output_type="np").images
    np.testing.assert_allclose(sliced, full, atol=1e-5)


def test_callback_on_step_end_and_steps(pipe):
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append((step, float(timestep), tuple(kwargs["sample"].shape)))
        return {}

    pipe(pil(32, 32), num_inference_steps=3, generator=gen(), callback_on_step_end=callback)
    assert [s[0] for s in seen] == [0, 1, 2]
    assert [round(s[1]) for s in seen] == [1000, 667, 333]
    assert all(s[2] == (1, 3, 32, 32) for s in seen)


def test_default_steps_come_from_vae_config(pipe):
    calls = []
    pipe.vae.decoder_unet.register_forward_hook(lambda *a: calls.append(1))
    pipe.vae.register_to_config(num_inference_steps=3)
    pipe(pil(16, 16), generator=gen())
    assert len(calls) == 3


def test_heun_scheduler(pipe):
    pipe.scheduler = FlowMatchHeunDiscreteScheduler()
    out = pipe(pil(16, 16), num_inference_steps=2, generator=gen(), output_type="np").images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"image": "not-an-image"}, TypeError, "PIL image"),
        ({"image": 3}, TypeError, "PIL image"),
        ({"image": None}, ValueError, "exactly one"),
        ({"image": None, "latents": torch.zeros(1, 16, 2, 2)}, ValueError, r"\(batch, 4, h, w\)"),
        ({"num_inference_steps": 0}, ValueError, ">= 1"),
        ({"output_type": "jpeg"}, ValueError, "output_type"),
        ({"image": torch.zeros(1, 5, 16, 16)}, ValueError, "channels"),
        ({"image": [pil(16, 16), pil(16, 24)]}, ValueError, "same size"),
        ({"generator": [gen(0), gen(1)]}, ValueError, "generators"),
    ],
)
def test_bad_inputs(pipe, kwargs, error, match):
    call = {"image": pil(16, 16), "num_inference_steps": 1}
    call.update(kwargs)
    if call.get("image") is None:
        call.pop("image")
    with pytest.raises(error, match=match):
        pipe(**call)


def test_tiled_and_sliced_decoding_is_the_vaes_tiled_decode(pipe):
    z = pipe.encode([pil(32, 48, seed=0), pil(32, 48, seed=1)])  # (2, 4, 4, 6)
    pipe.vae.enable_tiling(tile_sample_size=16, tile_overlap=8)
    pipe.vae.enable_slicing()
    widths = []
    hook = pipe.vae.decoder_unet.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[-1]))
    images = pipe(latents=z, num_inference_steps=2, generator=[gen(0), gen(1)], output_type="pt").images
    hook.remove()
    assert set(widths) == {16}  # every decoder evaluation saw one tile
    with torch.no_grad():
        reference = pipe.vae.decode(z, generator=[gen(0), gen(1)], num_inference_steps=2).sample
    torch.testing.assert_close(images, (reference / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
