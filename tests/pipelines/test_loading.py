"""Every loading path of a saved DiTo pipeline returns the right class with identical weights."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from huggingface_hub.errors import OfflineModeIsEnabled

from conftest import run_python
from diffusers_dito import (
    DIT_PRESETS,
    AutoencoderDiTo,
    DiToDiTPipeline,
    DiToDiTTransformer2DModel,
    DiToPipeline,
    hub,
)
from diffusers_dito.pipelines.loading import (
    load_component,
    load_pipeline,
    load_reconstruction_pipeline,
    local_model_config,
    model_kind,
    update_model_card,
)

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
    result = run_python(FRESH_PROCESS, str(folder), str(out), cwd=tmp_path)
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


def test_generation_pipeline_folder_without_a_decoder_scheduler_loads_with_euler(tiny_config, tmp_path):
    import shutil

    build("dito_dit", tiny_config).save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    del index["decoder_scheduler"]
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


def test_one_loader_reads_a_component_from_a_bare_folder_or_a_pipeline_folder(tiny_config, tmp_path):
    pipe = build("dito_dit", tiny_config)
    pipe.save_pretrained(tmp_path / "dit")
    pipe.vae.save_pretrained(tmp_path / "vae")
    for folder in ("dit", "vae"):
        assert local_model_config(tmp_path / folder, "vae")["latent_channels"] == pipe.vae.config.latent_channels
        assert_same_weights(SimpleNamespace(vae=load_component(AutoencoderDiTo, tmp_path / folder, "vae")), pipe)
    transformer = load_component(DiToDiTTransformer2DModel, tmp_path / "dit", "transformer")
    assert_same_weights(SimpleNamespace(transformer=transformer), pipe)
    assert local_model_config(tmp_path / "dit", "transformer")["_class_name"] == "DiToDiTTransformer2DModel"
    assert local_model_config(tmp_path / "missing", "vae") is None and local_model_config(tmp_path / "dit") is None


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


METRICS = {  # the keys of evaluate_dito.py's metrics.json that the model card shows
    "data_dir": "/data/val",
    "num_images": 4,
    "resolution": 32,
    "steps": 2,
    "sampler": "euler",
    "psnr": 20.5,
    "ssim": 0.5,
    "swd": 0.25,
    "hf_energy_ratio": 0.9,
}


def table_rows(card: str) -> list[str]:
    return [line for line in card.splitlines() if line.startswith("| `")]


def test_update_model_card_keeps_one_row_per_data_and_steps_and_the_rest_of_the_card(saved):
    _, _, folder = saved
    path = folder / "README.md"
    original = path.read_text()
    assert "Not evaluated yet" in original and not table_rows(original)
    update_model_card(folder, METRICS)
    first = path.read_text()
    assert table_rows(first) == ["| `val` (4 images, 32 px) | 2 euler | 20.50 | 0.5000 | 0.2500 | 0.900 |"]
    assert "Not evaluated yet" not in first
    update_model_card(folder, METRICS)
    assert path.read_text() == first  # the same metrics again change nothing
    update_model_card(folder, {**METRICS, "psnr": 21.0})  # the same data and steps: the row is replaced
    update_model_card(folder, {**METRICS, "steps": 4, "swd": None})  # other steps: a second row; a skipped metric
    card = path.read_text()
    assert table_rows(card) == [
        "| `val` (4 images, 32 px) | 2 euler | 21.00 | 0.5000 | 0.2500 | 0.900 |",
        "| `val` (4 images, 32 px) | 4 euler | 20.50 | 0.5000 | n/a | 0.900 |",
    ]
    start, end = original.index("<!-- diffusers-dito evaluation -->"), original.index("## Components")
    assert card.startswith(original[:start]) and card.endswith(original[end:])


def test_update_model_card_adds_a_section_to_a_card_without_one_and_a_card_to_a_bare_model(tiny_config, tmp_path):
    torch.manual_seed(0)
    pipe = DiToPipeline(vae=AutoencoderDiTo(**tiny_config()), scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    without = "---\nlibrary_name: diffusers\n---\n\n# DiToPipeline\n\n## Components\n\nconfigs\n"  # no evaluation
    (tmp_path / "pipe" / "README.md").write_text(without)
    card = update_model_card(tmp_path / "pipe", METRICS).read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n---\n\n# DiToPipeline\n\n<!-- diffusers-dito evaluation")
    assert card.endswith("<!-- /diffusers-dito evaluation -->\n\n## Components\n\nconfigs\n")
    assert len(table_rows(card)) == 1

    pipe.vae.save_pretrained(tmp_path / "vae")
    assert not (tmp_path / "vae" / "README.md").exists()
    card = update_model_card(tmp_path / "vae", METRICS).read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n") and "# AutoencoderDiTo" in card
    assert len(table_rows(card)) == 1


def test_update_model_card_finds_the_components_heading_not_the_words(tiny_config, tmp_path):
    torch.manual_seed(0)
    AutoencoderDiTo(**tiny_config()).save_pretrained(tmp_path / "vae")
    intro = "# My VAE\n\nThe configs are under ## Components below.\n\n"
    (tmp_path / "vae" / "README.md").write_text(intro + "## Components\n\nconfigs\n")
    updated = update_model_card(tmp_path / "vae", METRICS).read_text()
    assert updated.startswith(intro + "<!-- diffusers-dito evaluation")
    assert updated.endswith("<!-- /diffusers-dito evaluation -->\n\n## Components\n\nconfigs\n")


def test_update_model_card_keeps_crlf_line_endings(saved):
    _, _, folder = saved
    path = folder / "README.md"
    card = path.read_text()
    path.write_bytes(card.replace("\n", "\r\n").encode())
    update_model_card(folder, METRICS)
    updated = path.read_bytes().decode()
    assert updated.count("\r\n") == updated.count("\n")  # every line still ends in CRLF
    text = updated.replace("\r\n", "\n")
    start, end = card.index("<!-- diffusers-dito evaluation -->"), card.index("\n## Components")
    assert len(table_rows(text)) == 1 and text.startswith(card[:start]) and text.endswith(card[end:])
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_update_model_card_keeps_a_users_text_between_the_markers(saved):
    _, _, folder = saved
    path = folder / "README.md"
    note = "Measured on my laptop.\n<!-- /diffusers-dito evaluation -->"
    path.write_text(path.read_text().replace("<!-- /diffusers-dito evaluation -->", note))
    update_model_card(folder, METRICS)
    update_model_card(folder, {**METRICS, "steps": 4})
    card = path.read_text()
    assert note in card and len(table_rows(card)) == 2 and "Not evaluated yet" not in card


def test_the_card_says_what_trust_remote_code_runs_and_what_to_use_instead(saved):
    _, pipe, folder = saved
    card = (folder / "README.md").read_text()
    usage = card[card.index("## Usage") : card.index("<!-- diffusers-dito evaluation")]
    code = usage[usage.index("```python") : usage.index("```\n", usage.index("```python") + 3)]
    first_call = next(line for line in code.splitlines() if "from_pretrained" in line)
    assert f"{type(pipe).__name__}.from_pretrained" in first_call and "trust_remote_code" not in first_call
    advice = usage[usage.index("```\n", usage.index("```python") + 3) :]
    assert "imports and runs the Python files of this folder" in advice
    assert "only for a folder you saved yourself" in advice and "runs no code from the folder" in advice


@pytest.fixture
def fake_hub(monkeypatch):
    """huggingface_hub's `create_repo` and `upload_folder` where `diffusers_dito.hub` calls them: the calls are
    recorded, with the uploaded folder's files and card at the time of the upload, and nothing reaches the network."""
    calls = []

    def create_repo(repo_id, token=None, private=None, exist_ok=False):
        calls.append({"created": repo_id, "token": token, "exist_ok": exist_ok})
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"user/{repo_id}")

    def upload_folder(*, repo_id, folder_path, path_in_repo, token, commit_message, create_pr):
        folder = Path(folder_path)
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        card = (folder / "README.md").read_text() if (folder / "README.md").exists() else None
        calls.append({"uploaded": repo_id, "files": files, "card": card, "token": token})
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(hub, "create_repo", create_repo)
    monkeypatch.setattr(hub, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_folder_once_complete(saved, fake_hub, tmp_path):
    kind, pipe, _ = saved
    # files that diffusers' own save_pretrained(push_to_hub=True) would upload before they are written
    complete = {"model_index.json", "pipeline.py", "README.md", "vae/autoencoder_dito.py", "vae/dito_auto_model.py"}
    pipe.save_pretrained(tmp_path / "my-dito", push_to_hub=True, token="secret")
    created, uploaded = fake_hub
    assert created == {"created": "my-dito", "token": "secret", "exist_ok": True}  # as in diffusers: the folder name
    assert uploaded["uploaded"] == "user/my-dito" and uploaded["token"] == "secret"
    assert complete <= uploaded["files"] and "vae/diffusion_pytorch_model.safetensors" in uploaded["files"]
    assert "<!-- diffusers-dito evaluation -->" in uploaded["card"]  # this package's card

    fake_hub.clear()
    assert pipe.push_to_hub("org/dito") == "https://huggingface.co/org/dito/commit/0"
    assert complete <= fake_hub[1]["files"] and "<!-- diffusers-dito evaluation -->" in fake_hub[1]["card"]

    fake_hub.clear()
    pipe.vae.save_pretrained(tmp_path / "vae", push_to_hub=True, repo_id="org/vae")
    assert fake_hub[1]["uploaded"] == "org/vae" and "autoencoder_dito.py" in fake_hub[1]["files"]


def test_push_to_hub_offline_raises_huggingface_hubs_error_after_saving(saved, tmp_path, monkeypatch):
    _, pipe, _ = saved
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineModeIsEnabled, match="offline mode is enabled"):
        pipe.save_pretrained(tmp_path / "my-dito", push_to_hub=True)
    assert (tmp_path / "my-dito" / "vae" / "autoencoder_dito.py").exists()  # the local folder is complete
