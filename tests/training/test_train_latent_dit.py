"""Tests of training/train_latent_dit.py: a few steps of dit-tiny on a tiny DiTo's latents, 2 classes x 4 images."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import safetensors.torch
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from script_helpers import cpu_launch_env, free_port, fresh_accelerate_state, load_script, one_thread, reset_accelerate  # noqa: F401

from conftest import tiny_dito_config
from diffusers_dito import AutoencoderDiTo, DiToDiTPipeline, DiToDiTTransformer2DModel, DiToPipeline
from diffusers_dito.training.sharding import TEST_FSDP_ON_CPU_ENV

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "train_latent_dit.py"
CLASSES = ("cat", "dog")


@pytest.fixture(scope="module")
def train_latent_dit():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory):
    """datasets' imagefolder reads the subfolder names as classes: label 0 is "cat", 1 is "dog"."""
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(4):
            PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def dito_dir(tmp_path_factory):
    """A tiny f8c4 DiTo saved as a DiToPipeline folder (the script uses its vae/)."""
    folder = tmp_path_factory.mktemp("dito") / "pipeline"
    torch.manual_seed(0)
    vae = AutoencoderDiTo(**tiny_dito_config())
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(folder)
    return folder


def run_args(script, out: Path, class_dir: Path, dito_dir: Path, *extra: str, model=("--dit_preset", "dit-tiny")):
    return script.parse_args(
        [
            "--vae_model_name_or_path", str(dito_dir),
            "--train_data_dir", str(class_dir),
            *model,
            "--resolution", "32",
            "--train_batch_size", "2",
            "--output_dir", str(out),
            "--cache_dir", str(out.parent / f"{out.name}-hf-cache"),
            "--report_to", "none",
            "--checkpointing_steps", "100",
            "--validation_steps", "100",
            "--validation_inference_steps", "2",
            "--validation_decoder_inference_steps", "2",
            "--num_validation_images", "2",
            *extra,
        ]
    )  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "diffusion_pytorch_model.safetensors")


# ------------------------------------------------------------------------------------------ checkpoints and cache
@pytest.fixture(scope="module")
def full_run(train_latent_dit, class_dir, dito_dir, tmp_path_factory):
    """4 steps with EMA (the default), a checkpoint every step (limit 2), validation every 2, and a latent cache."""
    root = tmp_path_factory.mktemp("full")
    args = run_args(
        train_latent_dit, root / "out", class_dir, dito_dir,
        "--max_train_steps", "4", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2",
        "--validation_steps", "2", "--cache_latents", str(root / "cache"), "--cache_shard_size", "3",
    )  # fmt: skip
    transformer = train_latent_dit.main(args)
    reset_accelerate()
    return root, transformer


def test_checkpoints_honour_total_limit_and_hold_pretrained_folders(full_run):
    root, _ = full_run
    out = root / "out"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    for checkpoint in out.glob("checkpoint-*"):
        for sub in ("transformer", "transformer_ema"):
            transformer = DiToDiTTransformer2DModel.from_pretrained(checkpoint / sub)
            assert transformer.config.sample_size == 4 and transformer.config.num_embeds_ada_norm == 2
        assert {"optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl"} <= {p.name for p in checkpoint.iterdir()}
    raw, ema = weights(out / "checkpoint-4" / "transformer"), weights(out / "checkpoint-4" / "transformer_ema")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    grids = sorted((out / "validation").glob("*.png"))
    assert [g.name for g in grids] == ["step-0000002.png", "step-0000004.png"]
    assert PIL.Image.open(grids[0]).size == (64, 32)  # one row of 2 samples at 32 px


def test_cache_holds_each_image_and_its_flip(full_run, dito_dir, class_dir):
    root, _ = full_run
    index = json.loads((root / "cache" / "index.json").read_text())
    assert index["num_samples"] == 8 and index["num_shards"] == 3 and index["class_names"] == list(CLASSES)
    latents = np.concatenate([np.load(root / "cache" / f"shard-{k:05d}.latents.npy") for k in range(3)])
    labels = np.concatenate([np.load(root / "cache" / f"shard-{k:05d}.labels.npy") for k in range(3)])
    assert latents.shape == (8, 2, 4, 4, 4) and labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # Sample 0 is cat/0.png: its latents and those of its mirror image.
    pixels = torch.from_numpy(np.asarray(PIL.Image.open(class_dir / "cat" / "0.png"), dtype=np.float32) / 127.5 - 1)
    pixels = pixels.permute(2, 0, 1)[None]  # (1, 3, 32, 32)
    vae = AutoencoderDiTo.from_pretrained(dito_dir, subfolder="vae")
    with torch.no_grad():
        expected = vae.encode(torch.cat([pixels, pixels.flip(-1)])).latents
    torch.testing.assert_close(torch.from_numpy(latents[0]), expected, rtol=1e-4, atol=1e-4)


def test_final_pipeline_loads_and_generates(full_run):
    root, transformer = full_run
    pipe = DiToDiTPipeline.from_pretrained(root / "out")
    for name, tensor in pipe.transformer.state_dict().items():  # the EMA weights, as returned by main()
        assert torch.equal(tensor, transformer.state_dict()[name]), name
    assert pipe.get_label_ids(["cat", "dog"]) == [0, 1]
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        [0, 1], num_inference_steps=2, decoder_num_inference_steps=2, generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images  # fmt: skip
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()


def test_a_second_run_trains_from_the_cache_without_the_encoder_and_like_encoding(
    train_latent_dit, full_run, class_dir, dito_dir, tmp_path, monkeypatch
):
    root, _ = full_run
    cache_files = {p.name: p.stat().st_mtime_ns for p in (root / "cache").iterdir()}

    def no_encoding(*args, **kwargs):
        raise AssertionError("the VAE encoder ran")

    monkeypatch.setattr(AutoencoderDiTo, "encode", no_encoding)
    args = run_args(
        train_latent_dit, tmp_path / "out", class_dir, dito_dir, "--max_train_steps", "2",
        "--cache_latents", str(root / "cache"), "--debug_dump_dir", str(tmp_path / "dump"),
    )  # fmt: skip
    from_cache = train_latent_dit.main(args)
    assert {p.name: p.stat().st_mtime_ns for p in (root / "cache").iterdir()} == cache_files
    assert json.loads((tmp_path / "dump" / "rank0.json").read_text())["images_seen"] == 4

    # The cache is only a speed-up: encoding on the fly draws the same flips and trains the same weights.
    monkeypatch.undo()
    reset_accelerate()
    on_the_fly = train_latent_dit.main(
        run_args(train_latent_dit, tmp_path / "on-the-fly", class_dir, dito_dir, "--max_train_steps", "2")
    )
    for name, tensor in from_cache.state_dict().items():
        torch.testing.assert_close(tensor, on_the_fly.state_dict()[name], rtol=1e-5, atol=1e-6, msg=name)

    reset_accelerate()
    other = run_args(
        train_latent_dit, tmp_path / "other", class_dir, dito_dir, "--cache_latents", str(root / "cache"),
        "--max_train_samples", "6",
    )  # fmt: skip
    with pytest.raises(ValueError, match="max_train_samples differ"):
        train_latent_dit.main(other)


# --------------------------------------------------------------------------------------------------------- resume
def test_resume_is_exact(train_latent_dit, class_dir, dito_dir, tmp_path):
    # Latents encoded on the fly; 6 samples in batches of 2: the resumed run starts mid-epoch and crosses an epoch.
    common = ("--max_train_samples", "6", "--checkpointing_steps", "2", "--class_dropout_prob", "0.5")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_latent_dit.main(run_args(train_latent_dit, straight, class_dir, dito_dir, "--max_train_steps", "4", *common))
    reset_accelerate()
    train_latent_dit.main(run_args(train_latent_dit, split, class_dir, dito_dir, "--max_train_steps", "2", *common))
    reset_accelerate()
    resumed = run_args(
        train_latent_dit, split, class_dir, dito_dir, "--max_train_steps", "4", "--resume_from_checkpoint", "latest",
        *common,
    )  # fmt: skip
    train_latent_dit.main(resumed)

    for sub in ("transformer", "transformer_ema"):
        a, b = weights(straight / "checkpoint-4" / sub), weights(split / "checkpoint-4" / sub)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{sub}/{name}"


# ------------------------------------------------------------------------------------------------------------ LoRA
def test_lora_trains_only_adapters_and_reloads(train_latent_dit, full_run, class_dir, dito_dir, tmp_path):
    root, _ = full_run
    base_dir = root / "out"  # the full run's DiToDiTPipeline: its transformer/ is the pretrained DiT
    out = tmp_path / "lora"
    args = run_args(
        train_latent_dit, out, class_dir, dito_dir, "--max_train_steps", "3", "--checkpointing_steps", "2",
        "--lora_rank", "4", "--learning_rate", "1e-2", "--cache_latents", str(root / "cache"),
        model=("--pretrained_transformer_path", str(base_dir)),
    )  # fmt: skip
    trained = train_latent_dit.main(args)

    base = weights(base_dir / "transformer")
    lora_params = {n: p for n, p in trained.named_parameters() if "lora_" in n}
    assert lora_params and all(n.startswith("transformer_blocks.") for n in lora_params)
    for name, param in trained.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name
            assert not param.requires_grad
    assert any(p.abs().sum() > 0 for n, p in lora_params.items() if "lora_B" in n)  # B starts at zero

    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["pytorch_lora_weights.safetensors"]
    assert (out / "checkpoint-2" / "transformer_lora" / "pytorch_lora_weights.safetensors").is_file()
    reloaded = DiToDiTTransformer2DModel.from_pretrained(base_dir, subfolder="transformer")
    reloaded.load_lora_adapter(out, weight_name="pytorch_lora_weights.safetensors", prefix=None)
    latents, t, labels = torch.randn(2, 4, 4, 4), torch.tensor([300.0, 700.0]), torch.tensor([0, 1])
    with torch.no_grad():
        expected = trained.eval()(latents, timestep=t, class_labels=labels).sample
        actual = reloaded.eval()(latents, timestep=t, class_labels=labels).sample
    assert torch.equal(expected, actual)


# ------------------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "change, message",
    [
        ({"--train_data_dir": "/nonexistent/images"}, "is not a folder"),
        ({"--vae_model_name_or_path": "/nonexistent/dito"}, "is not a DiToPipeline or AutoencoderDiTo folder"),
        ({"--dit_preset": "dit-huge"}, "invalid choice: 'dit-huge'"),
        ({"--resolution": "36"}, "--resolution 36 is not divisible by the VAE's down-sampling factor 8"),
        ({"--lora_rank": "4"}, "--pretrained_transformer_path"),
        ({"--dit_preset": None, "--pretrained_transformer_path": "WRONG_DIT"}, "'sample_size': 8"),
    ],
)
def test_bad_arguments_stop_at_start_up(
    train_latent_dit, class_dir, dito_dir, tmp_path, capsys, monkeypatch, change, message
):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    for cls in (AutoencoderDiTo, DiToDiTTransformer2DModel):
        monkeypatch.setattr(cls, "from_config", no_model)
        monkeypatch.setattr(cls, "from_pretrained", no_model)
    wrong_dit = tmp_path / "wrong_dit"
    wrong_dit.mkdir()
    (wrong_dit / "config.json").write_text(json.dumps({"sample_size": 8, "in_channels": 4, "out_channels": 4}))
    argv = {
        "--vae_model_name_or_path": str(dito_dir),
        "--train_data_dir": str(class_dir),
        "--dit_preset": "dit-tiny",
        "--resolution": "32",
        "--output_dir": str(tmp_path / "out"),
    }
    argv.update({key: str(wrong_dit) if value == "WRONG_DIT" else value for key, value in change.items()})
    flat = [item for key, value in argv.items() if value is not None for item in (key, value)]
    with pytest.raises(SystemExit) as error:
        train_latent_dit.main(train_latent_dit.parse_args(flat))
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------- multi-process


def test_two_cpu_processes_share_the_cache_and_stay_in_sync_under_fsdp(class_dir, dito_dir, tmp_path):
    dump, cache = tmp_path / "dump", tmp_path / "cache"
    env = {**cpu_launch_env(tmp_path), TEST_FSDP_ON_CPU_ENV: "1"}  # FSDP2 on the CPU processes (test-only)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / "fsdp_8gpu_dit_xl.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(SCRIPT),
        "--vae_model_name_or_path", str(dito_dir), "--train_data_dir", str(class_dir), "--dit_preset", "dit-tiny",
        "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", "3", "--checkpointing_steps", "2",
        "--validation_steps", "100", "--report_to", "none", "--output_dir", str(tmp_path / "out"),
        "--cache_dir", str(tmp_path / "hf-cache"), "--cache_latents", str(cache), "--cache_shard_size", "3",
        "--debug_dump_dir", str(dump),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    # 3 shards of the cache, encoded by both processes in turn (0 and 2 by rank 0, 1 by rank 1).
    assert json.loads((cache / "index.json").read_text())["num_samples"] == 8
    assert len(list(cache.glob("shard-*.latents.npy"))) == 3
    ranks = [json.loads((dump / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["process_index"] for r in ranks] == [0, 1] and ranks[0]["num_processes"] == 2
    first_epoch = [set(r["sample_indices"][:4]) for r in ranks]
    assert first_epoch[0].isdisjoint(first_epoch[1]) and first_epoch[0] | first_epoch[1] == set(range(8))
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # of the weights gathered from the shards
    assert all(0.3 < r["local_parameter_fraction"] < 0.7 for r in ranks)  # sharded
    assert ranks[0]["global_step"] == 3 and ranks[0]["images_seen"] == 12
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}
    DiToDiTPipeline.from_pretrained(tmp_path / "out")


def test_speed_flags_run(train_latent_dit, class_dir, dito_dir, tmp_path):
    # The speed flags (diffusers_dito.training.performance) reach this script too (their effect is checked in
    # test_performance.py; dynamo's eager backend runs the compile path without inductor's code generation).
    flags = ("--torch_compile", "--torch_compile_backend", "eager", "--channels_last", "--allow_tf32")
    flags += ("--optimizer_implementation", "fused", "--max_train_steps", "2", "--checkpointing_steps", "2")
    tf32 = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        train_latent_dit.main(run_args(train_latent_dit, tmp_path / "out", class_dir, dito_dir, *flags))
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = tf32
    saved = weights(tmp_path / "out" / "checkpoint-2" / "transformer")
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
