"""Every loading path of a saved DiTo pipeline returns the right class with identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from diffusers_dito import (
    DIT_PRESETS,
    AutoencoderDiTo,
    DiToDiTPipeline,
    DiToDiTTransformer2DModel,
    DiToPipeline,
)
from diffusers_dito.pipelines.loading import load_pipeline, load_reconstruction_pipeline, model_kind

REPO_ROOT = Path(__file__).resolve().parents[2]


def build(kind, tiny_config):
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_config())
    if kind == "dito":
        return DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    transformer = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
    return DiToDiTPipeline(transformer, vae, FlowMatchEulerDiscreteScheduler(), id2label={0: "cat", 1: "dog"})


def assert_same_weights(a, b):
    for name in ("vae", "transformer"):
        if hasattr(a, name):
            sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
            assert sa.keys() == sb.keys()
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name


@pytest.fixture(params=["dito", "dito_dit"])
def saved(request, tiny_config, tmp_path):
    pipe = build(request.param, tiny_config)
    pipe.save_pretrained(tmp_path / "pipe")
    return request.param, pipe, tmp_path / "pipe"


def test_folder_layout_and_model_index(saved):
    kind, pipe, folder = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", type(pipe).__name__]
    assert index["vae"] == ["diffusers_dito.models.autoencoder_dito", "AutoencoderDiTo"]
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").exists()
    assert "from diffusers_dito import" in (folder / "pipeline.py").read_text()
    card = (folder / "README.md").read_text()
    assert "Usage" in card and "latent_channels" in card and f"{type(pipe).__name__}.from_pretrained" in card


def test_own_class_from_pretrained_needs_no_remote_code(saved):
    kind, pipe, folder = saved
    cls = type(pipe)
    loaded = cls.from_pretrained(folder)  # no trust_remote_code
    assert type(loaded) is cls
    assert_same_weights(pipe, loaded)
    if kind == "dito_dit":
        assert loaded.get_label_ids(["dog"]) == [1]


def test_diffusion_pipeline_without_trust_remote_code_says_how(saved):
    _, _, folder = saved
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(folder)


def test_vae_subfolder(saved):
    _, pipe, folder = saved
    vae = AutoencoderDiTo.from_pretrained(folder, subfolder="vae")
    sa, sb = pipe.vae.state_dict(), vae.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_custom_pipeline_entry_point(saved, monkeypatch):
    kind, pipe, folder = saved
    # A folder's own shim takes precedence over `custom_pipeline` in diffusers; remove it to exercise the entry point.
    (folder / "pipeline.py").unlink()
    monkeypatch.chdir(REPO_ROOT)
    # diffusers caches every local `pipeline.py` under one module name and re-executes a new file into it, so a
    # process that loaded the other entry point would see both classes. Start from a clean module, as a user does.
    monkeypatch.delitem(sys.modules, "diffusers_modules.local.pipeline", raising=False)
    loaded = DiffusionPipeline.from_pretrained(folder, custom_pipeline=f"pipelines/{kind}", trust_remote_code=True)
    assert type(loaded).__name__ == type(pipe).__name__
    assert_same_weights(pipe, loaded)


FRESH_PROCESS = """
import sys, torch
from diffusers import DiffusionPipeline
assert "diffusers_dito" not in sys.modules
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
print(type(pipe).__module__, type(pipe).__name__)
torch.save({k: v for name in ("vae", "transformer") if hasattr(pipe, name)
            for k, v in ((name + "." + k, v) for k, v in getattr(pipe, name).state_dict().items())}, sys.argv[2])
"""


def test_fresh_process_trust_remote_code(saved, tmp_path):
    kind, pipe, folder = saved
    out = tmp_path / "state.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == type(pipe).__name__
    state = torch.load(out)
    for name in ("vae", "transformer"):
        if hasattr(pipe, name):
            for k, v in getattr(pipe, name).state_dict().items():
                assert torch.equal(state[f"{name}.{k}"], v), k


def test_pickle_weights_are_refused_with_the_opt_in_named(tiny_config, tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_config())
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)
    assert (tmp_path / "vae" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(ValueError, match=r"use_safetensors=False"):
        AutoencoderDiTo.from_pretrained(tmp_path / "vae")
    loaded = AutoencoderDiTo.from_pretrained(tmp_path / "vae", use_safetensors=False)  # explicit opt-in
    assert all(torch.equal(a, b) for a, b in zip(vae.state_dict().values(), loaded.state_dict().values()))

    pipe = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=False)
    with pytest.raises(ValueError, match=r"pickle weights \(vae/diffusion_pytorch_model.bin\)"):
        DiToPipeline.from_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="use_safetensors=False"):
        AutoencoderDiTo.from_pretrained(tmp_path / "pipe", subfolder="vae")
    assert type(DiToPipeline.from_pretrained(tmp_path / "pipe", use_safetensors=False)) is DiToPipeline

    dit = DiToDiTTransformer2DModel.from_config(DIT_PRESETS["dit-tiny"])
    dit.save_pretrained(tmp_path / "dit", safe_serialization=False)
    with pytest.raises(ValueError, match="use_safetensors=False"):
        DiToDiTTransformer2DModel.from_pretrained(tmp_path / "dit")


def test_training_state_beside_components_is_not_mistaken_for_weights(tiny_config, tmp_path):
    torch.manual_seed(0)
    pipe = DiToPipeline(vae=AutoencoderDiTo(**tiny_config()), scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "optimizer.bin").write_bytes(b"not loaded by from_pretrained")
    assert type(DiToPipeline.from_pretrained(tmp_path)) is DiToPipeline


def test_generation_pipeline_saves_the_scheduler_it_decodes_with(tiny_config, tmp_path):
    from diffusers import FlowMatchHeunDiscreteScheduler

    pipe = build("dito_dit", tiny_config)
    pipe.register_modules(decoder_scheduler=FlowMatchHeunDiscreteScheduler(shift=2.0))
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DiToDiTPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.decoder_scheduler) is FlowMatchHeunDiscreteScheduler
    assert loaded.decoder_scheduler.config.shift == 2.0


def test_generation_pipeline_saved_before_the_decoder_scheduler_still_loads(tiny_config, tmp_path):
    import shutil

    build("dito_dit", tiny_config).save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    del index["decoder_scheduler"]  # what an older release wrote
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(tmp_path / "pipe" / "decoder_scheduler")
    loaded = DiToDiTPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.decoder_scheduler) is FlowMatchEulerDiscreteScheduler


def test_a_missing_variant_raises_the_oserror_diffusers_raises(tiny_config, tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_config())
    reference = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4)  # a stock diffusers model
    for safe in (True, False):  # plain weights as safetensors, or as pickle: not the variant, so never loaded
        vae.save_pretrained(tmp_path / f"dito-{safe}", safe_serialization=safe)
        reference.save_pretrained(tmp_path / f"kl-{safe}", safe_serialization=safe)
        with pytest.raises(OSError) as ours:
            AutoencoderDiTo.from_pretrained(tmp_path / f"dito-{safe}", variant="fp16")
        with pytest.raises(OSError) as theirs:
            AutoencoderKL.from_pretrained(tmp_path / f"kl-{safe}", variant="fp16", use_safetensors=True)
        assert "no file named diffusion_pytorch_model.fp16.safetensors" in str(ours.value)
        assert str(ours.value) == str(theirs.value).replace(f"kl-{safe}", f"dito-{safe}")

    # A pipeline none of whose components has the variant: diffusers' own pipeline error (a ValueError in diffusers).
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(
        tmp_path / "pipe", safe_serialization=False
    )
    with pytest.raises(ValueError, match=r"load the model files of the `variant=fp16`, but no such modeling files"):
        DiToPipeline.from_pretrained(tmp_path / "pipe", variant="fp16")


def test_pickle_weights_of_the_requested_variant_are_refused(tiny_config, tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_config())
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False, variant="fp16")
    with pytest.raises(ValueError, match=r"pickle weights \(diffusion_pytorch_model.fp16.bin\)"):
        AutoencoderDiTo.from_pretrained(tmp_path / "vae", variant="fp16")
    pipe = DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=False, variant="fp16")
    with pytest.raises(ValueError, match=r"pickle weights \(vae/diffusion_pytorch_model.fp16.bin\)"):
        DiToPipeline.from_pretrained(tmp_path / "pipe", variant="fp16")


def test_one_loader_reads_every_kind_of_saved_folder(tiny_config, tmp_path):
    pipe = build("dito_dit", tiny_config)
    pipe.register_modules(decoder_scheduler=FlowMatchHeunDiscreteScheduler(shift=2.0))
    pipe.save_pretrained(tmp_path / "dit")
    pipe.vae.save_pretrained(tmp_path / "vae")
    assert [model_kind(tmp_path / name) for name in ("dit", "vae")] == ["DiToDiTPipeline", "AutoencoderDiTo"]
    assert type(load_pipeline(tmp_path / "dit")) is DiToDiTPipeline
    assert type(load_pipeline(tmp_path / "vae")) is DiToPipeline
    reconstruction = load_reconstruction_pipeline(tmp_path / "dit")  # decodes as the folder's generations are
    assert type(reconstruction) is DiToPipeline and type(reconstruction.scheduler) is FlowMatchHeunDiscreteScheduler
    assert reconstruction.scheduler.config.shift == 2.0


@pytest.mark.parametrize(
    "files, message",
    [
        (None, "no such folder"),
        ({}, "has no model_index.json or config.json"),
        ({"config.json": '{"_class_name": "AutoencoderKL"}'}, "holds a AutoencoderKL, not an AutoencoderDiTo"),
        ({"model_index.json": '{"_class_name": "DiTPipeline"}'}, "holds a DiTPipeline, not a DiTo pipeline"),
        ({"model_index.json": "{not json"}, "model_index.json is not a readable JSON file"),
    ],
)
def test_model_kind_says_what_the_folder_holds_instead(tmp_path, files, message):
    folder = tmp_path / "model"
    if files is not None:
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        model_kind(folder)
