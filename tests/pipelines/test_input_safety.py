"""Bad input never becomes a silent black image or a traceback that says nothing: encode/decode and the pipelines
reject non-finite numbers, misread uint8, wrong generators, sizes and callbacks with a message that names the cause."""

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from conftest import tiny_dito_config
from diffusers_dito import DIT_PRESETS, AutoencoderDiTo, DiToDiTPipeline, DiToDiTTransformer2DModel, DiToPipeline


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderDiTo(**tiny_dito_config()).eval()


@pytest.fixture(scope="module")
def pipe(vae):
    return DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_rejects_non_finite_images(vae, value):
    x = torch.zeros(1, 3, 16, 16)
    x[0, 1, 3, 4] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        vae.encode(x)


def test_decode_rejects_non_finite_latents(vae):
    z = torch.zeros(1, 4, 2, 2)
    z[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        vae.decode(z)


def test_decode_of_absurdly_scaled_latents_raises_instead_of_a_black_image(vae):
    z = vae.encode(torch.rand(1, 3, 16, 16) * 2 - 1).latents * 1e30
    with pytest.raises(ValueError, match="decoded images"):
        vae.decode(z, num_inference_steps=1)


def test_nan_weights_are_named_as_the_cause_not_the_latents(vae):
    broken = AutoencoderDiTo(**tiny_dito_config())
    broken.load_state_dict(vae.state_dict())
    with torch.no_grad():
        broken.decoder_unet.conv_out.weight[0, 0, 0, 0] = math.nan
    z = vae.encode(torch.rand(1, 3, 16, 16) * 2 - 1).latents
    cause = r"the decoder's weights hold NaN or inf.*decoder_unet\.conv_out\.weight"
    with pytest.raises(ValueError, match=cause) as err:
        broken.decode(z, num_inference_steps=1)
    assert "scaled wrongly" not in str(err.value)


def test_pipeline_rejects_non_finite_arrays(pipe):
    image = np.full((16, 16, 3), 0.5, dtype=np.float32)
    image[2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        pipe(image, num_inference_steps=1)


@pytest.mark.parametrize(
    "field, value",
    [
        ("layer_norm_eps", -1.0),
        ("layer_norm_eps", 0.0),
        ("latent_channels", -4),
        ("block_out_channels", (8, -16, 16, 16)),
        ("decoder_block_out_channels", (8, 16, 0, 32)),
        ("decoder_block_out_channels", (8, 12, 32, 32)),  # not a multiple of the 8 GroupNorm groups
        ("num_inference_steps", 0),
        ("num_inference_steps", 10**12),
        ("scaling_factor", 0.0),
        ("scaling_factor", None),  # `null` in a config.json
        ("shift_factor", None),
        ("encoder_norm_num_groups", None),
    ],
)
def test_impossible_configs_raise_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AutoencoderDiTo(**tiny_dito_config(**{field: value}))


def test_from_pretrained_checks_the_config_too(tmp_path, vae):
    import json

    vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "layer_norm_eps": -1}))
    with pytest.raises(ValueError, match="layer_norm_eps"):
        AutoencoderDiTo.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "change",
    [{"decoder_layers_per_block": 2}, {"decoder_add_attention": True}],  # other shapes; layers the weights lack
)
def test_weights_that_do_not_fit_the_config_are_named(tmp_path, vae, change):
    import json

    vae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match="do not match"):
        AutoencoderDiTo.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: [torch.Generator()], ValueError),  # one for a batch of two
        (lambda: [torch.Generator() for _ in range(3)], ValueError),
        (lambda: [], ValueError),
        (lambda: 123, TypeError),
        (lambda: [torch.Generator(), "seed"], TypeError),
    ],
)
def test_decode_checks_generators_like_the_pipeline(vae, pipe, make, error):
    z = torch.zeros(2, 4, 2, 2)
    with pytest.raises(error, match="generator"):
        vae.decode(z, generator=make(), num_inference_steps=1)
    with pytest.raises(error, match="generator"):
        pipe(latents=z, generator=make(), num_inference_steps=1)


def test_uint8_arrays_and_tensors_mean_0_to_255_like_pil(pipe):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    from_pil = pipe.encode(PIL.Image.fromarray(pixels))
    torch.testing.assert_close(pipe.encode(pixels), from_pil)
    torch.testing.assert_close(pipe.encode(torch.from_numpy(pixels).permute(2, 0, 1)[None]), from_pil)
    torch.testing.assert_close(pipe.encode(pixels.astype(np.float32) / 255), from_pil)


@pytest.mark.parametrize("height, error", [(-5, ValueError), (100, ValueError), (8, ValueError), (10.5, TypeError)])
def test_output_size_must_fit_the_latents(pipe, height, error):
    z = torch.zeros(1, 4, 3, 3)  # f = 8: images of 17..24 px
    with pytest.raises(error, match="height"):
        pipe(latents=z, height=height, num_inference_steps=1)
    out = pipe(latents=z, height=17, width=24, num_inference_steps=1, output_type="pt").images
    assert out.shape[-2:] == (17, 24)


def test_a_list_mixing_pil_images_and_arrays_says_so(pipe):
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="one kind of image"):
        pipe([PIL.Image.fromarray(pixels), pixels], num_inference_steps=1)


@pytest.mark.parametrize("image", [PIL.Image.new("RGB", (0, 0)), np.zeros((0, 0, 3), dtype=np.float32)])
def test_an_empty_image_says_so(pipe, image):
    with pytest.raises(ValueError, match="at least 1×1"):
        pipe(image, num_inference_steps=1)


def test_a_callback_must_return_a_dict_with_a_same_shaped_sample(pipe):
    image = np.zeros((16, 16, 3), dtype=np.float32)
    with pytest.raises(TypeError, match="must return a dict"):
        pipe(image, num_inference_steps=1, callback_on_step_end=lambda *args: None)
    with pytest.raises(ValueError, match="expected"):
        pipe(
            image,
            num_inference_steps=1,
            callback_on_step_end=lambda pipe, i, t, kwargs: {"sample": kwargs["sample"][:, :, :4]},
        )


@pytest.mark.parametrize("scale", [math.nan, math.inf])
def test_generation_rejects_non_finite_guidance(vae, scale):
    dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
    pipe = DiToDiTPipeline(dit, vae, FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="guidance_scale"):
        pipe([1], guidance_scale=scale, num_inference_steps=1)


@pytest.mark.parametrize("content", ["null", "[1, 2]", "{broken"])
def test_from_pretrained_names_a_broken_model_index(tmp_path, pipe, content):
    pipe.save_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(content)
    with pytest.raises(ValueError, match="model_index.json"):
        DiToPipeline.from_pretrained(tmp_path)
