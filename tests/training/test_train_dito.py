"""Tests of training/train_dito.py: a few steps of a tiny DiTo on a folder of 32-px images, mostly in-process."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import safetensors.torch
import torch
from script_helpers import cpu_launch_env, fresh_accelerate_state, load_script, one_thread, reset_accelerate  # noqa: F401

from conftest import tiny_dito_config
from diffusers_dito import AutoencoderDiTo
from diffusers_dito.training import objectives

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "train_dito.py"


@pytest.fixture(scope="module")
def train_dito():
    return load_script(SCRIPT)


def write_images(folder: Path, count: int = 8, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        width = 40 if i % 2 else 32  # some wider than the crop, to exercise resize + random crop
        PIL.Image.fromarray(rng.integers(0, 256, (32, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(tiny_dito_config()))
    return path


def run_args(train_dito, out: Path, image_dir: Path, model: Path, *extra: str, pretrained: bool = False):
    """Arguments of a short CPU run; `model` is a config.json, or with `pretrained` a saved model folder."""
    return train_dito.parse_args(
        [
            "--train_data_dir", str(image_dir),
            "--pretrained_model_name_or_path" if pretrained else "--model_config", str(model),
            "--resolution", "32",
            "--train_batch_size", "2",
            "--output_dir", str(out),
            "--cache_dir", str(out.parent / f"{out.name}-cache"),
            "--report_to", "none",
            "--checkpointing_steps", "100",
            "--validation_steps", "100",
            "--validation_inference_steps", "2",
            "--num_validation_images", "2",
            *extra,
        ]
    )  # fmt: skip


def read_dump(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


def vae_weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "diffusion_pytorch_model.safetensors")


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def full_run(train_dito, image_dir, config_path, tmp_path_factory):
    """One 4-step run with EMA, tensorboard, validation and a checkpoint every step (limit 2)."""
    out = tmp_path_factory.mktemp("full") / "out"
    args = run_args(
        train_dito, out, image_dir, config_path,
        "--max_train_steps", "4", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
        "--validation_steps", "2", "--use_ema", "--report_to", "tensorboard",
    )  # fmt: skip
    vae = train_dito.main(args)
    reset_accelerate()
    return out, vae


def test_checkpoints_honour_total_limit_and_hold_pretrained_folders(full_run):
    out, _ = full_run
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    for checkpoint in out.glob("checkpoint-*"):
        for sub in ("vae", "vae_ema"):
            vae = AutoencoderDiTo.from_pretrained(checkpoint / sub)
            assert vae.downsample_factor == 8
        assert {"optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl"} <= {p.name for p in checkpoint.iterdir()}
    # The EMA (decay warms up from 0) differs from the raw weights, and both were saved.
    raw, ema = vae_weights(out / "checkpoint-4" / "vae"), vae_weights(out / "checkpoint-4" / "vae_ema")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_validation_grids_and_logs_are_written(full_run):
    out, _ = full_run
    grids = sorted((out / "validation").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000002.png", "step-0000004.png"]
    assert PIL.Image.open(grids[0]).size == (64, 64)  # 2 images, each (original | reconstruction) at 32 px
    assert list((out / "logs").rglob("events.out.tfevents*"))


def test_final_pipeline_loads_and_runs(full_run):
    from diffusers_dito import DiToPipeline

    out, vae = full_run
    pipe = DiToPipeline.from_pretrained(out)
    for name, tensor in pipe.vae.state_dict().items():  # the final model is the EMA, as returned by main()
        assert torch.equal(tensor, vae.state_dict()[name]), name
    image = PIL.Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    result = pipe(image, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert result.images.shape == (1, 32, 32, 3) and np.isfinite(result.images).all()


# --------------------------------------------------------------------------------------------------------- resume
def test_resume_is_exact(train_dito, image_dir, config_path, tmp_path):
    # 6 samples in batches of 2: 3 steps per epoch, so the resumed run starts mid-epoch and crosses an epoch.
    common = ("--max_train_samples", "6", "--checkpointing_steps", "2", "--use_ema", "--noise_sync_prob", "0.5")
    train_dito.main(
        run_args(train_dito, tmp_path / "straight", image_dir, config_path, "--max_train_steps", "4", *common)
    )
    reset_accelerate()
    split = tmp_path / "split"
    train_dito.main(run_args(train_dito, split, image_dir, config_path, "--max_train_steps", "2", *common))
    reset_accelerate()
    assert sorted(p.name for p in split.glob("checkpoint-*")) == ["checkpoint-2"]
    resumed = run_args(
        train_dito,
        split,
        image_dir,
        config_path,
        "--max_train_steps",
        "4",
        "--resume_from_checkpoint",
        "latest",
        *common,
    )
    train_dito.main(resumed)

    for sub in ("vae", "vae_ema"):
        straight, split_run = (
            vae_weights(tmp_path / "straight" / "checkpoint-4" / sub),
            vae_weights(split / "checkpoint-4" / sub),
        )
        assert straight.keys() == split_run.keys()
        for name in straight:
            assert torch.equal(straight[name], split_run[name]), f"{sub}/{name}"
    optimizer_states = [
        torch.load(root / "checkpoint-4" / "optimizer.bin", weights_only=True)["state"]
        for root in (tmp_path / "straight", split)
    ]
    for key, state in optimizer_states[0].items():
        assert torch.equal(state["exp_avg"], optimizer_states[1][key]["exp_avg"])


# ----------------------------------------------------------------------------------------------------- multi-process
# ------------------------------------------------------------------------------------------------------------ LoRA
def test_lora_trains_only_adapters_and_reloads(train_dito, image_dir, config_path, tmp_path):
    base_dir = tmp_path / "base"
    with open(config_path) as f:
        AutoencoderDiTo.from_config(json.load(f)).save_pretrained(base_dir)
    out = tmp_path / "lora"
    args = run_args(
        train_dito, out, image_dir, base_dir, "--max_train_steps", "3", "--checkpointing_steps", "2",
        "--lora_rank", "4", "--learning_rate", "1e-2", pretrained=True,
    )  # fmt: skip
    trained = train_dito.main(args)

    base = vae_weights(base_dir)
    lora_params = {n: p for n, p in trained.named_parameters() if "lora_" in n}
    assert lora_params and all(n.startswith("decoder_unet.") for n in lora_params)
    for name, param in trained.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
            assert not param.requires_grad
    assert any(p.abs().sum() > 0 for n, p in lora_params.items() if "lora_B" in n)  # B starts at zero

    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["pytorch_lora_weights.safetensors"]
    assert (out / "checkpoint-2" / "vae_lora" / "pytorch_lora_weights.safetensors").is_file()
    reloaded = AutoencoderDiTo.from_pretrained(base_dir)
    reloaded.load_lora_adapter(out, weight_name="pytorch_lora_weights.safetensors", prefix=None)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = trained(images, generator=torch.Generator().manual_seed(0), num_inference_steps=2).sample
        actual = reloaded(images, generator=torch.Generator().manual_seed(0), num_inference_steps=2).sample
    assert torch.equal(expected, actual)


# ------------------------------------------------------------------------------------------------- loss and data
@pytest.mark.parametrize("noise_sync_prob", [0.0, 1.0])
def test_noise_sync_prob_reaches_the_loss(train_dito, image_dir, config_path, tmp_path, monkeypatch, noise_sync_prob):
    seen = []
    original = objectives.dito_flow_matching_loss

    def spy(vae, images, noise_sync_prob=0.0, **kwargs):
        seen.append(noise_sync_prob)
        return original(vae, images, noise_sync_prob=noise_sync_prob, **kwargs)

    monkeypatch.setattr(objectives, "dito_flow_matching_loss", spy)
    args = run_args(
        train_dito, tmp_path / "out", image_dir, config_path, "--max_train_steps", "2",
        "--noise_sync_prob", str(noise_sync_prob), "--debug_dump_dir", str(tmp_path / "dump"),
    )  # fmt: skip
    train_dito.main(args)
    assert seen == [noise_sync_prob] * 2
    assert read_dump(tmp_path / "dump")["noise_sync_fraction"] == noise_sync_prob


def test_non_finite_loss_skips_the_step_and_corrupt_images_are_skipped(train_dito, config_path, tmp_path, monkeypatch):
    images = write_images(tmp_path / "images", count=7)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    calls = []
    original = objectives.dito_flow_matching_loss

    def nan_on_second_call(vae, images, **kwargs):
        out = original(vae, images, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            poisoned = out.per_sample_loss * float("nan")
            return dataclasses.replace(out, loss=poisoned.mean(), per_sample_loss=poisoned)
        return out

    monkeypatch.setattr(objectives, "dito_flow_matching_loss", nan_on_second_call)
    out = tmp_path / "out"
    args = run_args(
        train_dito, out, images, config_path, "--max_train_steps", "4", "--checkpointing_steps", "1",
        "--debug_dump_dir", str(tmp_path / "dump"),
    )  # fmt: skip
    train_dito.main(args)

    dump = read_dump(tmp_path / "dump")
    assert dump["skipped_steps"] == 1
    assert dump["corrupt_images"] == 1 and dump["images_seen"] == 7  # one epoch of 4 batches, one slot corrupt
    step1, step2 = vae_weights(out / "checkpoint-1" / "vae"), vae_weights(out / "checkpoint-2" / "vae")
    assert all(torch.equal(step1[k], step2[k]) for k in step1)  # the NaN step left the weights alone
    step4 = vae_weights(out / "checkpoint-4" / "vae")
    assert all(torch.isfinite(t).all() for t in step4.values())
    assert any(not torch.equal(step2[k], step4[k]) for k in step2)  # and training went on afterwards


def test_streaming_runs(train_dito, image_dir, config_path, tmp_path):
    args = run_args(
        train_dito, tmp_path / "out", image_dir, config_path, "--streaming", "--max_train_steps", "5",
        "--shuffle_buffer_size", "4", "--debug_dump_dir", str(tmp_path / "dump"),
    )  # fmt: skip
    train_dito.main(args)
    dump = read_dump(tmp_path / "dump")
    assert dump["global_step"] == 5 and dump["images_seen"] == 10  # crossed into a second pass over the stream


# ------------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "change, message",
    [
        ({"--train_data_dir": "/nonexistent/images"}, "is not a folder"),
        ({"--model_config": None, "--model_preset": "dito-huge"}, "invalid choice: 'dito-huge'"),
        ({"--resolution": "36"}, "not divisible by the model's down-sampling factor 8"),
        ({"--lora_rank": "4"}, "--pretrained_model_name_or_path"),
        ({"--noise_sync_prob": "1.5"}, "--noise_sync_prob must be in [0, 1]"),
    ],
)
def test_bad_arguments_stop_at_start_up(
    train_dito, image_dir, config_path, tmp_path, capsys, monkeypatch, change, message
):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(AutoencoderDiTo, "from_config", no_model)
    argv = {
        "--train_data_dir": str(image_dir),
        "--model_config": str(config_path),
        "--resolution": "32",
        "--output_dir": str(tmp_path / "out"),
    }
    argv.update(change)
    flat = [item for key, value in argv.items() if value is not None for item in (key, value)]
    with pytest.raises(SystemExit) as error:
        train_dito.main(train_dito.parse_args(flat))
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
