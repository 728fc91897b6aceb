"""AutoencoderDiTo as an unchanged `vae=` in stock diffusers pipelines.

Every component is a tiny, randomly initialised model built here (no hub access), so these tests check the
plumbing between a pipeline and DiTo (shapes, scaling/shift factors, generators, decode steps), not image quality.
"""

import json
import re
import string
from pathlib import Path
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from diffusers_dito import AutoencoderDiTo

PROMPT = "a photo of a cat"
SIZE = 32  # pixels; the tiny DiTo is f8, so latents are 4x4
STEPS = 2  # pipeline denoising steps


# ---------------------------------------------------------------------------------------------------- components
def tiny_dito(tiny_config, **overrides) -> AutoencoderDiTo:
    torch.manual_seed(0)
    return AutoencoderDiTo(**tiny_config(**overrides)).eval()


@pytest.fixture
def clip_tokenizer(tmp_path) -> CLIPTokenizer:
    # Adapted from transformers tests/models/clip/test_tokenization_clip.py: a byte-level BPE vocabulary of single
    # letters (plus end-of-word forms) and a few merges, written to disk like a hub checkpoint's tokenizer files.
    letters = string.ascii_lowercase
    merges = ["c a", "ca t</w>", "o f</w>"]
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters), "ca", "cat</w>", "of</w>"]
    (tmp_path / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    return CLIPTokenizer.from_pretrained(tmp_path, model_max_length=16)


def tiny_clip_config(tokenizer: CLIPTokenizer, hidden_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def sd_components(tiny_config, tokenizer: CLIPTokenizer) -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=16,
        attention_head_dim=8,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer, hidden_size=16))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "vae": tiny_dito(tiny_config),
        "unet": unet.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def sd_pipeline(tiny_config, tokenizer) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(**sd_components(tiny_config, tokenizer))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_call(pipe, seed: int = 0, **kwargs):
    # Height and width default to `unet.config.sample_size * vae_scale_factor` = SIZE.
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs).images


def assert_valid_np_images(images: np.ndarray, batch_size: int = 1) -> None:
    assert isinstance(images, np.ndarray)
    assert images.shape == (batch_size, SIZE, SIZE, 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1


def count_decoder_calls(vae: AutoencoderDiTo) -> list:
    """Record one entry per forward of DiTo's decoder UNet, i.e. per ODE step."""
    calls = []
    vae.decoder_unet.register_forward_hook(lambda module, args, output: calls.append(output.sample.shape))
    return calls


# ---------------------------------------------------------------------------------------------------- DiT
def dit_pipeline(tiny_config) -> DiTPipeline:
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # learned sigma, as in the released DiT checkpoints
        num_layers=2,
        sample_size=SIZE // 8,
        patch_size=2,
        norm_num_groups=8,
        num_embeds_ada_norm=1000,  # DiTPipeline hard-codes class 1000 as the null label
    )
    pipe = DiTPipeline(transformer=transformer.eval(), vae=tiny_dito(tiny_config), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_dit_pipeline(tiny_config):
    pipe = dit_pipeline(tiny_config)
    calls = count_decoder_calls(pipe.vae)
    # DiTPipeline calls `vae.decode(latents)` without its generator, so DiTo's decoder noise comes from torch's
    # global RNG. Seeding it through `torch.manual_seed`, as DiTPipeline's own docstring does, is deterministic.
    images = pipe([1, 2], num_inference_steps=STEPS, generator=torch.manual_seed(0), output_type="np").images
    again = pipe([1, 2], num_inference_steps=STEPS, generator=torch.manual_seed(0), output_type="np").images

    assert_valid_np_images(images, batch_size=2)
    np.testing.assert_array_equal(images, again)
    assert len(calls) == 2 * pipe.vae.config.num_inference_steps  # two pipeline calls
    assert calls[0] == (2, 3, SIZE, SIZE)


def test_dit_pipeline_decoder_noise_follows_global_rng(tiny_config):
    """A caveat, pinned: pipelines that do not pass `generator` to `vae.decode` draw DiTo's noise globally."""
    pipe = dit_pipeline(tiny_config)

    def run(global_seed: int) -> np.ndarray:
        torch.manual_seed(global_seed)
        generator = torch.Generator().manual_seed(0)  # same DiT latents every time
        return pipe([1], num_inference_steps=STEPS, generator=generator, output_type="np").images

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


# ---------------------------------------------------------------------------------------------------- SD 1.x
def test_stable_diffusion_pipeline(tiny_config, clip_tokenizer):
    pipe = sd_pipeline(tiny_config, clip_tokenizer)
    assert pipe.vae_scale_factor == 8

    images = sd_call(pipe)
    assert_valid_np_images(images)
    np.testing.assert_array_equal(images, sd_call(pipe))
    assert not np.array_equal(images, sd_call(pipe, seed=1))

    pil = sd_call(pipe, output_type="pil")
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (SIZE, SIZE)


def test_vae_slicing_and_tiling(tiny_config, clip_tokenizer):
    pipe = sd_pipeline(tiny_config, clip_tokenizer)
    images = sd_call(pipe, num_images_per_prompt=2)
    assert_valid_np_images(images, batch_size=2)

    pipe.vae.enable_slicing()  # decodes image by image with the same noise per image
    np.testing.assert_allclose(sd_call(pipe, num_images_per_prompt=2), images, atol=1e-6, rtol=0)
    pipe.vae.enable_tiling(tile_sample_size=16, tile_overlap=8)  # tiles smaller than the image: really tiled
    calls = []
    hook = pipe.vae.decoder_unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[-1]))
    tiled = sd_call(pipe, num_images_per_prompt=2)
    hook.remove()
    assert_valid_np_images(tiled, batch_size=2)
    assert set(calls) == {16}  # every decoder evaluation saw one 16-px tile


def test_stable_diffusion_image_is_dito_decode_of_its_latents(tiny_config, clip_tokenizer):
    """StableDiffusionPipeline passes its generator to `vae.decode`, so the image is reproducible from its latents."""
    pipe = sd_pipeline(tiny_config, clip_tokenizer)
    generator = torch.Generator().manual_seed(0)
    latents = pipe(PROMPT, num_inference_steps=STEPS, generator=generator, output_type="latent").images
    assert latents.shape == (1, 4, SIZE // 8, SIZE // 8)
    with torch.no_grad():  # `generator` is now where the pipeline left it before decoding
        expected = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, generator=generator).sample

    images = sd_call(pipe, output_type="pt")
    assert images.shape == (1, 3, SIZE, SIZE)
    torch.testing.assert_close(images, (expected / 2 + 0.5).clamp(0, 1))


def test_stable_diffusion_img2img_pipeline(tiny_config, clip_tokenizer):
    pipe = StableDiffusionImg2ImgPipeline(**sd_components(tiny_config, clip_tokenizer))
    pipe.set_progress_bar_config(disable=True)

    def run(image_seed: int = 0, seed: int = 0) -> np.ndarray:
        image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(image_seed))  # in [0, 1]
        # strength 0.5 of 4 steps: 2 denoising steps starting from the noised DiTo latent of `image`
        return sd_call(pipe, seed=seed, image=image, strength=0.5, num_inference_steps=2 * STEPS)

    with mock.patch.object(pipe.vae, "encode", wraps=pipe.vae.encode) as encode:
        images = run()
    encode.assert_called_once()  # through `retrieve_latents(vae.encode(image), generator)`
    assert encode.call_args.args[0].shape == (1, 3, SIZE, SIZE)
    assert encode.call_args.args[0].min() < 0  # the pipeline normalised the image to [-1, 1] for the encoder

    assert_valid_np_images(images)
    np.testing.assert_array_equal(images, run())
    assert not np.array_equal(images, run(image_seed=1))  # the encoded image reaches the output


# ---------------------------------------------------------------------------------------------------- decode steps
def test_decode_steps_come_from_vae_config(tiny_config, clip_tokenizer):
    """Pipelines call `vae.decode` without `num_inference_steps`, so `vae.config.num_inference_steps` decides."""
    pipe = sd_pipeline(tiny_config, clip_tokenizer)
    calls = count_decoder_calls(pipe.vae)
    with mock.patch.object(pipe.vae, "decode", wraps=pipe.vae.decode) as decode:
        two_steps = sd_call(pipe)
    assert "num_inference_steps" not in decode.call_args.kwargs
    assert len(calls) == pipe.vae.config.num_inference_steps == 2

    calls.clear()
    pipe.vae.register_to_config(num_inference_steps=3)
    three_steps = sd_call(pipe)
    assert len(calls) == 3
    assert_valid_np_images(three_steps)
    np.testing.assert_array_equal(three_steps, sd_call(pipe))
    assert not np.array_equal(two_steps, three_steps)


# ---------------------------------------------------------------------------------------------------- SD3, 16 channels
def sd3_pipeline(tiny_config, tokenizer) -> StableDiffusion3Pipeline:
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,  # the two CLIPs' hidden states, concatenated (there is no T5 here)
        caption_projection_dim=16,
        pooled_projection_dim=32,  # the two CLIPs' pooled projections, concatenated
        pos_embed_max_size=SIZE // 8,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(tiny_clip_config(tokenizer, hidden_size=16))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config(tokenizer, hidden_size=16))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_dito(tiny_config, latent_channels=16, scaling_factor=0.5, shift_factor=0.1),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer,
        text_encoder_3=None,  # the pipeline then feeds zeros in place of the T5 embedding
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_stable_diffusion_3_pipeline_honours_scaling_and_shift(tiny_config, clip_tokenizer):
    pipe = sd3_pipeline(tiny_config, clip_tokenizer)
    assert pipe.vae_scale_factor == 8

    def run(output_type: str, global_seed: int = 0) -> torch.Tensor:
        # SD3 calls `vae.decode(latents)` without its generator: DiTo's decoder noise comes from the global RNG.
        torch.manual_seed(global_seed)
        generator = torch.Generator().manual_seed(0)
        kwargs = {"height": SIZE, "width": SIZE, "max_sequence_length": 16}
        return pipe(PROMPT, num_inference_steps=STEPS, generator=generator, output_type=output_type, **kwargs).images

    latents = run("latent")
    assert latents.shape == (1, 16, SIZE // 8, SIZE // 8)

    with mock.patch.object(pipe.vae, "decode", wraps=pipe.vae.decode) as decode:
        images = run("pt")
    decoded_latents = decode.call_args.args[0]
    torch.testing.assert_close(decoded_latents, latents / 0.5 + 0.1)

    assert images.shape == (1, 3, SIZE, SIZE)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, run("pt"))
    assert not torch.equal(images, run("pt", global_seed=1))  # same latents, other decoder noise
    torch.manual_seed(0)  # the global RNG state `run` left for the pipeline's decode
    with torch.no_grad():
        expected = pipe.vae.decode(decoded_latents).sample
    torch.testing.assert_close(images, (expected / 2 + 0.5).clamp(0, 1))


# ---------------------------------------------------------------------------------------------------- loading
def test_from_pretrained_accepts_dito_vae(tiny_config, clip_tokenizer, tmp_path):
    """The documented recipe: `StableDiffusionPipeline.from_pretrained(..., vae=AutoencoderDiTo(...))`."""
    components = sd_components(tiny_config, clip_tokenizer)
    dito = components.pop("vae")
    torch.manual_seed(0)
    kl = AutoencoderKL(block_out_channels=(8, 16, 16, 16), norm_num_groups=8, layers_per_block=1, latent_channels=4)
    StableDiffusionPipeline(vae=kl, **components).save_pretrained(tmp_path / "sd")  # a checkpoint with an SD-VAE

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", vae=dito)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae is dito
    assert_valid_np_images(sd_call(pipe))

    # A pipeline saved with DiTo records its module and reloads it without `vae=`.
    pipe.save_pretrained(tmp_path / "sd-dito")
    library, class_name = json.loads((tmp_path / "sd-dito" / "model_index.json").read_text())["vae"]
    assert library.startswith("diffusers_dito") and class_name == "AutoencoderDiTo"
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "sd-dito")
    reloaded.set_progress_bar_config(disable=True)
    assert isinstance(reloaded.vae, AutoencoderDiTo)
    # Equal weights, but not bit-exact: weights memory-mapped from safetensors are not 64-byte aligned, so CPU
    # convolutions may take another kernel (differences ~1e-6).
    np.testing.assert_allclose(sd_call(reloaded), sd_call(pipe), atol=1e-5, rtol=0)


def test_docs_offline_example_runs():
    """Keep the runnable example in docs/drop_in_vae.md working."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "drop_in_vae.md").read_text()
    example = re.search(r"## A version that runs offline.*?```python\n(.*?)```", doc, re.S).group(1)
    namespace = {}
    exec(example, namespace)
    assert namespace["images"].shape == (1, 32, 32, 3)
    assert namespace["vae"].config.num_inference_steps == 4
