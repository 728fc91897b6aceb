"""Property-based tests: random shapes, dtypes, sizes and arguments either work with the right output shape, or
raise a `ValueError`/`TypeError` — never an opaque error from deep inside torch."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffusers_dito import DIT_PRESETS, AutoencoderDiTo, DiToDiTPipeline, DiToDiTTransformer2DModel, DiToPipeline

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.uint8])


@pytest.fixture(scope="module")
def vae():
    from conftest import tiny_dito_config

    torch.manual_seed(0)
    return AutoencoderDiTo(**tiny_dito_config()).eval()


@pytest.fixture(scope="module")
def pipes(vae):
    dito = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"]).eval()
    dito_dit = DiToDiTPipeline(dit, vae, FlowMatchEulerDiscreteScheduler())
    for pipe in (dito, dito_dit):
        pipe.set_progress_bar_config(disable=True)
    return dito, dito_dit


@SETTINGS
@given(
    batch=st.integers(0, 2),
    channels=st.integers(1, 4),
    height=st.integers(0, 40),
    width=st.integers(0, 40),
    dtype=DTYPES,
    ndim_drop=st.booleans(),
)
def test_encode(vae, batch, channels, height, width, dtype, ndim_drop):
    x = torch.zeros(batch, channels, height, width, dtype=dtype)
    if ndim_drop:
        x = x[0] if batch else x.reshape(-1)
    valid = (
        not ndim_drop
        and dtype.is_floating_point
        and channels == 3
        and batch > 0
        and height > 0
        and width > 0
        and height % 8 == 0
        and width % 8 == 0
    )
    if valid:
        with torch.no_grad():
            assert vae.encode(x).latents.shape == (batch, 4, height // 8, width // 8)
    else:
        with pytest.raises(ValueError):
            vae.encode(x)


@SETTINGS
@given(
    batch=st.integers(0, 2),
    channels=st.integers(1, 5),
    h=st.integers(0, 4),
    w=st.integers(0, 4),
    dtype=DTYPES,
    steps=st.one_of(st.integers(-1, 2), st.floats(0.5, 2.5), st.none()),
)
def test_decode(vae, batch, channels, h, w, dtype, steps):
    z = torch.zeros(batch, channels, h, w, dtype=dtype)
    valid_z = dtype.is_floating_point and channels == 4 and batch > 0 and h > 0 and w > 0
    valid_steps = steps is None or (isinstance(steps, int) and steps >= 1)
    if valid_z and valid_steps:
        with torch.no_grad():
            out = vae.decode(z, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).sample
        assert out.shape == (batch, 3, 8 * h, 8 * w) and out.dtype == torch.float32
    else:
        with pytest.raises((ValueError, TypeError)):
            vae.decode(z, num_inference_steps=steps)


@SETTINGS
@given(
    kind=st.sampled_from(["numpy", "torch", "list"]),
    height=st.integers(1, 20),
    width=st.integers(1, 20),
    channels=st.integers(1, 5),
    steps=st.integers(-1, 1),
    output_type=st.sampled_from(["pil", "np", "pt", "latent", "bad"]),
)
def test_reconstruction_pipeline(pipes, kind, height, width, channels, steps, output_type):
    pipe = pipes[0]
    array = np.random.default_rng(0).random((height, width, channels), dtype=np.float32)
    image = {
        "numpy": array,
        "torch": torch.from_numpy(array).permute(2, 0, 1)[None],
        "list": [array, array],
    }[kind]
    try:
        out = pipe(
            image, num_inference_steps=steps, output_type=output_type, generator=torch.Generator().manual_seed(0)
        )
    except (ValueError, TypeError):
        assert channels not in (1, 3) or steps < 1 or output_type == "bad"
        return
    assert channels in (1, 3) and steps >= 1 and output_type != "bad"
    n = 2 if kind == "list" else 1
    images = out.images
    if output_type == "pil":
        assert len(images) == n and images[0].size == (width, height)
    elif output_type == "np":
        assert images.shape == (n, height, width, 3)
    elif output_type == "pt":
        assert images.shape == (n, 3, height, width)
    else:
        assert images.shape == (n, 4, -(-height // 8), -(-width // 8))


@SETTINGS
@given(
    labels=st.lists(st.integers(-2, 12), min_size=0, max_size=3),
    guidance=st.floats(-1.0, 3.0, allow_nan=False),
    steps=st.integers(0, 2),
)
def test_generation_pipeline(pipes, labels, guidance, steps):
    pipe = pipes[1]
    valid = bool(labels) and all(0 <= c < 10 for c in labels) and guidance >= 1 and steps >= 1
    kwargs = {"guidance_scale": guidance, "num_inference_steps": steps, "decoder_num_inference_steps": 1}
    if valid:
        out = pipe(labels, output_type="np", generator=torch.Generator().manual_seed(0), **kwargs)
        assert out.images.shape == (len(labels), 32, 32, 3)
    else:
        with pytest.raises(ValueError):
            pipe(labels, **kwargs)
