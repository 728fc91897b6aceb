import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_dito import DIT_PRESETS, AutoencoderDiTo, DiToDiTPipeline, DiToDiTTransformer2DModel

ID2LABEL = {0: "cat, kitty", 1: "dog", 2: "tench, Tinca tinca"}


@pytest.fixture
def pipe(tiny_config):
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_config()).eval()
    transformer = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"]).eval()
    pipeline = DiToDiTPipeline(transformer, vae, FlowMatchEulerDiscreteScheduler(), id2label=ID2LABEL)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_generation_output_slice(pipe):
    kwargs = {"num_inference_steps": 2, "decoder_num_inference_steps": 2, "output_type": "np"}
    images = pipe([0, 1], generator=gen(), **kwargs).images
    assert images.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(images, pipe([0, 1], generator=gen(), **kwargs).images)
    assert not np.allclose(images, pipe([0, 1], generator=gen(1), **kwargs).images)
    np.testing.assert_allclose(images[0, -3:, -3:, 0].flatten(), EXPECTED_SLICE, atol=1e-3)


EXPECTED_SLICE = [0.317, 0.0, 0.7472, 1.0, 0.8626, 0.6937, 0.9852, 0.2801, 0.717]


def test_cfg_uses_the_null_class_and_guidance_changes_the_result(pipe):
    seen = []
    pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["class_labels"]), with_kwargs=True
    )
    a = pipe([1], guidance_scale=2.0, num_inference_steps=2, generator=gen(), output_type="latent").images
    assert seen[0].tolist() == [1, pipe.num_classes]  # conditional, then null class 10
    b = pipe([1], guidance_scale=1.0, num_inference_steps=2, generator=gen(), output_type="latent").images
    assert seen[-1].tolist() == [1]  # guidance 1: no unconditional branch
    assert not torch.allclose(a, b)


def test_latent_ode_uses_velocity_with_sigma_times_1000(pipe):
    timesteps = []
    pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: timesteps.append(kwargs["timestep"]), with_kwargs=True
    )
    pipe([0], num_inference_steps=4, guidance_scale=1.0, generator=gen(), output_type="latent")
    assert [round(float(t[0])) for t in timesteps] == [1000, 750, 500, 250]


def test_get_label_ids(pipe):
    assert pipe.get_label_ids(["kitty", "dog", "Tinca tinca"]) == [0, 1, 2]
    assert pipe.get_label_ids("cat") == [0]
    with pytest.raises(ValueError, match="not a known label"):
        pipe.get_label_ids(["zebra"])


def test_decoder_steps_and_batch_split_determinism(pipe):
    calls = []
    pipe.vae.decoder_unet.register_forward_hook(lambda *a: calls.append(1))
    full = pipe(
        [0, 1], num_inference_steps=2, decoder_num_inference_steps=3, generator=[gen(0), gen(1)], output_type="np"
    )
    assert len(calls) == 3
    second = pipe([1], num_inference_steps=2, decoder_num_inference_steps=3, generator=[gen(1)], output_type="np")
    np.testing.assert_allclose(full.images[1:], second.images, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_labels": [10]}, r"\[0, 9\]"),
        ({"class_labels": [-1]}, r"\[0, 9\]"),
        ({"class_labels": ["dog"]}, r"\[0, 9\]"),
        ({"class_labels": []}, "non-empty"),
        ({"guidance_scale": 0.5}, ">= 1"),
        ({"num_inference_steps": 0}, ">= 1"),
        ({"decoder_num_inference_steps": 0}, ">= 1"),
        ({"output_type": "gif"}, "output_type"),
        ({"latents": torch.zeros(1, 4, 8, 8)}, "shape"),
    ],
)
def test_bad_inputs(pipe, kwargs, match):
    call = {"class_labels": [0], "num_inference_steps": 1, "decoder_num_inference_steps": 1}
    call.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pipe(**call)


def test_lora_adapter_on_transformer(pipe):
    from peft import LoraConfig

    pipe.transformer.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
    assert any("lora" in name for name, _ in pipe.transformer.named_parameters())


def test_generation_decodes_tile_by_tile_when_the_vae_tiles(pipe):
    kwargs = {"num_inference_steps": 2, "decoder_num_inference_steps": 2, "output_type": "np"}
    pipe.vae.enable_tiling(tile_sample_size=16, tile_overlap=8)
    widths = []
    hook = pipe.vae.decoder_unet.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[-1]))
    images = pipe([0, 1], generator=gen(), **kwargs).images
    hook.remove()
    assert set(widths) == {16} and images.shape == (2, 32, 32, 3)
    assert np.isfinite(images).all() and images.std() > 0.05
