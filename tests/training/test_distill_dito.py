"""Tests of training/distill_dito.py: distilling a tiny trained DiTo into a 1-step student, mostly in-process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler
from script_helpers import cpu_launch_env, free_port, fresh_accelerate_state, load_script, one_thread, reset_accelerate  # noqa: F401
from test_train_dito import read_dump, vae_weights

from diffusers_dito import AutoencoderDiTo, DiToPipeline, laplacian_l2_loss, patch_sliced_wasserstein_loss
from diffusers_dito.sample_data import split_crops
from diffusers_dito.training import objectives
from diffusers_dito.training.checkpoints import ResumeMismatchError
from diffusers_dito.training.sharding import TEST_FSDP_ON_CPU_ENV

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "distill_dito.py"
TEACHER_STEPS = 4  # the default of the teacher (conftest.PHOTO_TINY_CONFIG)
# A lighter student of that teacher (decoder (16, 32, 48, 48), 2 ResNets per level): one ResNet per level and a
# narrower deepest level, so that some decoder tensors keep their name and shape and others do not.
LIGHTER_STUDENT = {"decoder_block_out_channels": [16, 32, 32, 32], "decoder_layers_per_block": 1}


@pytest.fixture(scope="module")
def distill_dito():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def crops():
    """32² crops of the bundled photos: training crops, and held-out ones that share no pixel with them."""
    return split_crops("train", 48, 32, seed=0), split_crops("held_out", 16, 32, seed=0)  # (N, 3, 32, 32) in [-1, 1]


@pytest.fixture(scope="module")
def teacher_dir(photo_tiny, tmp_path_factory):
    """The suite's trained tiny DiTo (150 steps on photo crops) as a DiToPipeline folder."""
    vae = photo_tiny
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    DiToPipeline(vae=vae, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_dir(crops, tmp_path_factory):
    folder = tmp_path_factory.mktemp("crops")
    for i, crop in enumerate(crops[0]):
        pixels = ((crop.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        PIL.Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def run_args(distill_dito, out: Path, teacher: Path, images: Path, *extra: str):
    return distill_dito.parse_args(
        [
            "--teacher_model_name_or_path", str(teacher),
            "--train_data_dir", str(images), "--resolution", "32", "--train_batch_size", "8",
            "--learning_rate", "1e-3", "--output_dir", str(out), "--cache_dir", str(out.parent / f"{out.name}-cache"),
            "--report_to", "none", "--checkpointing_steps", "1000", "--validation_steps", "1000",
            "--num_validation_images", "2",
            *extra,
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def distilled(distill_dito, teacher_dir, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "out"
    extra = ("--max_train_steps", "60", "--cache_teacher_targets", "--no-random_flip")  # 48 pairs, each decoded once
    student = distill_dito.main(run_args(distill_dito, out, teacher_dir, image_dir, *extra))
    reset_accelerate()
    return out, student


def lighter_run(distill_dito, teacher_dir, image_dir, out: Path, steps: int, *extra: str) -> AutoencoderDiTo:
    """A run of the lighter student (inline JSON) on 16 cached pairs, with EMA and a checkpoint at step 3."""
    common = ("--student_config", json.dumps(LIGHTER_STUDENT), "--use_ema", "--checkpointing_steps", "3")
    common += ("--max_train_samples", "16", "--cache_teacher_targets", "--no-random_flip")  # step 3 is mid-epoch
    args = run_args(distill_dito, out, teacher_dir, image_dir, *common, "--max_train_steps", str(steps), *extra)
    student = distill_dito.main(args)
    reset_accelerate()
    return student


@pytest.fixture(scope="module")
def lighter(distill_dito, teacher_dir, image_dir, tmp_path_factory):
    """The lighter student trained straight for 5 steps: `(out, student)`, its debug dump in `out.parent / "dump"`.
    The resume test replays it."""
    out = tmp_path_factory.mktemp("lighter") / "out"
    student = lighter_run(distill_dito, teacher_dir, image_dir, out, 5, "--debug_dump_dir", str(out.parent / "dump"))
    return out, student


def decode_distance(vae: AutoencoderDiTo, steps: int, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared distance of `vae`'s `steps`-step decode to `targets`, from the noise of seed 1."""
    with torch.no_grad():
        z = vae.encode(images).latents
        decoded = vae.decode(z, num_inference_steps=steps, generator=torch.Generator().manual_seed(1)).sample
    return (decoded - targets).pow(2).mean().item()


def test_distillation_improves_the_one_step_decode_on_held_out_crops(distilled, teacher_dir, crops):
    out, _ = distilled
    teacher = AutoencoderDiTo.from_pretrained(teacher_dir / "vae")
    student = DiToPipeline.from_pretrained(out).vae
    held_out = crops[1]
    with torch.no_grad():  # the teacher's many-step decode from the same noise: what the student learned to match
        z = teacher.encode(held_out).latents
        targets = teacher.decode(z, num_inference_steps=TEACHER_STEPS, generator=torch.Generator().manual_seed(1))
    teacher_one_step = decode_distance(teacher, 1, held_out, targets.sample)
    student_one_step = decode_distance(student, 1, held_out, targets.sample)
    assert student_one_step < 0.5 * teacher_one_step, (student_one_step, teacher_one_step)  # 60 steps: 0.056 -> 0.012
    # Not asserted: the distance to the originals. This 150-step toy teacher's own 1-step decode is nearer the
    # originals than its many-step one (its guess of their mean), so the student, which learns the latter, is not;
    # on the demo's model the 1-step PSNR rises from 23.67 to 24.89 dB (docs/distillation.md).


def test_student_folder_decodes_in_one_step_keeps_the_teachers_encoder_and_names_it(distilled, teacher_dir):
    out, student = distilled
    loaded = DiToPipeline.from_pretrained(out)
    assert loaded.vae.config.num_inference_steps == 1
    teacher = vae_weights(teacher_dir / "vae")
    saved = vae_weights(out / "vae")
    encoder_keys = [k for k in teacher if not k.startswith("decoder_unet.")]
    assert encoder_keys and all(torch.equal(teacher[k], saved[k]) for k in encoder_keys)  # bit for bit
    assert any(not torch.equal(teacher[k], saved[k]) for k in teacher if k.startswith("decoder_unet."))
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, loaded.vae.state_dict()[name]), name
    card = (out / "README.md").read_text()
    assert f"Distilled from: {teacher_dir} (its {TEACHER_STEPS}-step Euler decode), into 1 step(s)" in card

    # The pipeline decodes with the student's own default: one network evaluation.
    calls = []
    loaded.vae.decoder_unet.register_forward_hook(lambda *_: calls.append(1))
    image = loaded(torch.zeros(1, 3, 32, 32), output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32) and len(calls) == 1


@pytest.mark.parametrize("student", ["distilled", "lighter"])
def test_student_is_a_drop_in_vae_of_a_stock_pipeline(student, request):
    out, _ = request.getfixturevalue(student)
    vae = DiToPipeline.from_pretrained(out).vae
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=4,
        patch_size=2, norm_num_groups=8, num_embeds_ada_norm=1000,
    )  # fmt: skip
    pipe = DiTPipeline(transformer=transformer.eval(), vae=vae, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    calls = []
    vae.decoder_unet.register_forward_hook(lambda *_: calls.append(1))
    images = pipe([1, 2], num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert len(calls) == 1  # the student's one decoder evaluation, for the whole batch


def test_resume_with_cached_targets_is_bit_identical(distill_dito, teacher_dir, image_dir, tmp_path):
    def run(out: Path, steps: int, *extra: str):
        common = ("--use_ema", "--checkpointing_steps", "3", "--max_train_samples", "16", "--lr_warmup_steps", "2")
        common += ("--cache_teacher_targets", "--no-random_flip")  # 2 batches an epoch: step 3 is mid-epoch
        common += ("--swd_loss_weight", "1")  # its fresh noise and directions are drawn again on resume
        student = distill_dito.main(
            run_args(distill_dito, out, teacher_dir, image_dir, *common, "--max_train_steps", str(steps), *extra)
        )
        reset_accelerate()
        return student

    straight = run(tmp_path / "straight", 5, "--debug_dump_dir", str(tmp_path / "a"))
    run(tmp_path / "resumed", 3)  # stops after its checkpoint-3, its cache lost with it
    resumed = run(
        tmp_path / "resumed", 5, "--resume_from_checkpoint", "latest", "--debug_dump_dir", str(tmp_path / "b")
    )
    assert read_dump(tmp_path / "a")["weights_sha256"] == read_dump(tmp_path / "b")["weights_sha256"]
    for name, tensor in straight.state_dict().items():  # the EMA weights
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_lighter_student_folder_holds_its_decoder_and_the_teachers_encoder(lighter, teacher_dir):
    out, student = lighter
    loaded = DiToPipeline.from_pretrained(out)
    config = loaded.vae.config
    assert list(config.decoder_block_out_channels) == [16, 32, 32, 32] and config.decoder_layers_per_block == 1
    assert config.num_inference_steps == 1 and config.decoder_time_embedding_dim == 64  # the rest: the teacher's
    teacher = vae_weights(teacher_dir / "vae")
    saved = vae_weights(out / "vae")
    encoder_keys = [k for k in teacher if not k.startswith("decoder_unet.")]
    assert encoder_keys and all(torch.equal(teacher[k], saved[k]) for k in encoder_keys)  # bit for bit
    assert set(saved) - set(teacher) == set() and len(saved) < len(teacher)  # fewer ResNets, no new kind of tensor
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, loaded.vae.state_dict()[name]), name
    card = (out / "README.md").read_text()
    assert f"student decoder: {json.dumps(LIGHTER_STUDENT)}" in card
    image = loaded(torch.zeros(1, 3, 32, 32), output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_lighter_student_starts_from_the_teachers_tensors_where_name_and_shape_match(teacher_dir):
    from accelerate import PartialState

    PartialState(cpu=True)  # build_student logs what it copied through accelerate's logger
    overrides = objectives.student_decoder_overrides(json.dumps(LIGHTER_STUDENT))
    assert overrides["decoder_block_out_channels"] == (16, 32, 32, 32)  # a JSON list as the presets' tuple
    rng = torch.random.get_rng_state()
    student = objectives.build_student(str(teacher_dir), 1, student_config=overrides, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng)  # seeded on its own: the caller's random state is kept
    teacher = AutoencoderDiTo.from_pretrained(teacher_dir / "vae")
    for name, tensor in teacher.encoder.state_dict().items():
        assert torch.equal(tensor, student.encoder.state_dict()[name]), name
    torch.manual_seed(3)  # the fresh initialisation the others keep: diffusers' own, drawn from the seed
    fresh = AutoencoderDiTo.from_config({**teacher.config, **overrides, "num_inference_steps": 1}).decoder_unet
    source, copied, kept = teacher.decoder_unet.state_dict(), [], []
    for name, tensor in student.decoder_unet.state_dict().items():
        if name in source and source[name].shape == tensor.shape:
            assert torch.equal(tensor, source[name]), name
            copied.append(name)
        else:
            assert torch.equal(tensor, fresh.state_dict()[name]), name
            kept.append(name)
    assert "conv_in.weight" in copied and "down_blocks.0.resnets.0.conv1.weight" in copied
    assert "down_blocks.2.resnets.0.conv1.weight" in kept  # 32 wide instead of 48
    assert [n for n, p in student.named_parameters() if p.requires_grad] == [
        n for n, _ in student.named_parameters() if n.startswith("decoder_unet.")
    ]


def test_lighter_student_resumes_exactly_and_refuses_another_student_config(
    lighter, distill_dito, teacher_dir, image_dir, tmp_path
):
    out, straight = lighter
    lighter_run(distill_dito, teacher_dir, image_dir, tmp_path / "resumed", 3)  # stops after its checkpoint-3
    resumed = lighter_run(
        distill_dito, teacher_dir, image_dir, tmp_path / "resumed", 5,
        "--resume_from_checkpoint", "latest", "--debug_dump_dir", str(tmp_path / "dump"),
    )  # fmt: skip
    assert read_dump(out.parent / "dump")["weights_sha256"] == read_dump(tmp_path / "dump")["weights_sha256"]
    for name, tensor in straight.state_dict().items():  # the EMA weights
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    # Another student config is another model: its checkpoint is refused, naming the change.
    args = run_args(
        distill_dito, tmp_path / "resumed", teacher_dir, image_dir, "--use_ema", "--max_train_samples", "16",
        "--cache_teacher_targets", "--no-random_flip", "--max_train_steps", "5", "--resume_from_checkpoint", "latest",
    )  # fmt: skip
    with pytest.raises(ResumeMismatchError, match="student_config"):
        distill_dito.main(args)


def test_bad_student_configs_are_one_line_usage_errors(distill_dito, teacher_dir, image_dir, tmp_path, capsys):
    base = ["--teacher_model_name_or_path", str(teacher_dir), "--train_data_dir", str(image_dir)]
    (tmp_path / "list.json").write_text("[1, 2]")
    for value, message in [
        ('{"latent_channels": 8}', "sets `latent_channels`, an encoder or latent setting"),
        ('{"block_out_channels": [8, 16]}', "sets `block_out_channels`, an encoder or latent setting"),
        ('{"decoder_layers": 1}', "sets `decoder_layers`, not an AutoencoderDiTo config key"),
        ('{"decoder_layers_per_block": 1', "is not valid JSON"),
        (str(tmp_path / "missing.json"), "is neither a preset (teacher, slim, lite, nano), a JSON object nor an"),
        (str(tmp_path / "list.json"), "must hold a JSON object"),
        ('{"decoder_layers_per_block": "1"}', "sets `decoder_layers_per_block` to '1'; it must be int"),
        ('{"decoder_add_attention": 1}', "it must be bool"),
        ('{"decoder_time_embedding_dim": 0}', "sets `decoder_time_embedding_dim` to 0; it must be at least 1"),
        ('{"decoder_block_out_channels": []}', "it must list widths of at least 1"),
        ('{"decoder_block_out_channels": [16, 20]}', "must be multiples of `decoder_norm_num_groups` = 8"),
        ('{"decoder_block_out_channels": [16, 32, 32, 32, 32]}', "gives a decoder that cannot be built"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            distill_dito.parse_args([*base, "--student_config", value])
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(lines) == 1 and "--student_config" in lines[0], (value, lines)
        assert message in lines[0], (value, lines)
    for value in ["teacher", "slim", json.dumps(LIGHTER_STUDENT)]:  # and the good ones pass
        assert distill_dito.parse_args([*base, "--student_config", value]).student_config == value


def test_target_cache_decodes_each_image_once_from_its_own_noise(distill_dito, teacher_dir):
    from accelerate import Accelerator

    teacher = AutoencoderDiTo.from_pretrained(teacher_dir / "vae")
    calls = []
    teacher.decoder_unet.register_forward_hook(lambda *_: calls.append(1))
    cache = objectives.TeacherTargetCache(teacher, steps=2, seed=0)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    batch = {"pixel_values": images[:2], "index": torch.tensor([5, 7])}
    first = cache.lookup(batch, Accelerator(cpu=True))
    assert len(calls) == 2  # one 2-step decode of the batch
    again = cache.lookup({"pixel_values": torch.zeros(2, 3, 32, 32), "index": torch.tensor([5, 7])}, Accelerator())
    assert len(calls) == 2 and all(torch.equal(a, b) for a, b in zip(first[:3], again[:3])) and first[3] == again[3]
    # Image 7 with a new neighbour: its noise seed, and so its target, is its own.
    mixed = cache.lookup({"pixel_values": images[1:], "index": torch.tensor([7, 9])}, Accelerator())
    assert torch.equal(mixed[2][0], first[2][1]) and mixed[3][0] == first[3][1] != mixed[3][1]


def test_arguments_are_checked_at_start_up(distill_dito, teacher_dir, image_dir, tmp_path, capsys):
    base = ["--teacher_model_name_or_path", str(teacher_dir), "--train_data_dir", str(image_dir)]
    for extra, message in [
        (["--student_steps", "3"], "invalid choice"),
        (["--teacher_steps", "1"], "must be more than --student_steps 1"),
        (["--resolution", "36"], "not divisible by the teacher's down-sampling factor 8"),
        (["--data_loss_weight", "-1"], "--data_loss_weight must be a finite number >= 0"),
        (["--cache_teacher_targets"], "give --no-random_flip"),
        (["--laplacian_fine_weight", "0"], "--laplacian_fine_weight must be a finite number > 0"),
        (["--loss_type", "laplacian", "--resolution", "32", "--laplacian_levels", "5"], "below 3 px; use at most 4"),
        (["--swd_loss_weight", "nan"], "--swd_loss_weight must be a finite number >= 0"),
        (["--swd_loss_weight", "1", "--resolution", "8"], "--swd_loss_weight needs --resolution >= 14"),
        (["--swd_noise", "other"], "invalid choice"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            distill_dito.parse_args([*base, *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_loss_type_laplacian_is_the_band_weighted_distance_of_the_decodes(distill_dito, teacher_dir, crops):
    student = AutoencoderDiTo.from_pretrained(teacher_dir / "vae")
    images = crops[1][:2]
    targets = torch.flip(images, dims=(-1,))  # any target will do
    with torch.no_grad():
        latents = student.encode(images).latents
        sample = student.decode(latents, num_inference_steps=1, generator=torch.Generator().manual_seed(5)).sample
        for loss_type, expected in [
            ("laplacian", laplacian_l2_loss(sample, targets, num_levels=2, fine_weight=8.0)),
            ("l2", (sample - targets).pow(2).mean(dim=(1, 2, 3))),
        ]:
            objective = objectives.DistillationObjective(student, 1, 0.0, loss_type, 2, 8.0)
            torch.testing.assert_close(objective(latents, targets, images, 5)["distill_loss"], expected)


def test_swd_term_scores_a_fresh_noise_decode_against_the_targets(distill_dito, teacher_dir, crops):
    student = AutoencoderDiTo.from_pretrained(teacher_dir / "vae")
    images = crops[1][:3]
    targets = torch.flip(images, dims=(-1,))  # any target will do
    valid = torch.tensor([True, False, True])  # the unreadable image takes no part in the set distance

    def decode(seed):
        return student.decode(latents, num_inference_steps=1, generator=torch.Generator().manual_seed(seed)).sample

    with torch.no_grad():
        latents = student.encode(images).latents
        paired_sample, fresh_sample = decode(5), decode(9)
        for noise, sample in [("fresh", fresh_sample), ("paired", paired_sample)]:
            objective = objectives.DistillationObjective(student, 1, 0.0, "l2", swd_loss_weight=2.0, swd_noise=noise)
            out = objective(latents, targets, images, 5, fresh_seed=9, valid=valid)
            swd = patch_sliced_wasserstein_loss(
                sample[valid], targets[valid], generator=torch.Generator().manual_seed(9)
            )
            assert swd > 0
            torch.testing.assert_close(out["swd_loss"], swd.expand(3))
            torch.testing.assert_close(out["per_sample_loss"], out["distill_loss"] + 2.0 * swd)
        # weight 0: no second decode, and the term is zero
        out = objectives.DistillationObjective(student, 1, 0.0, "l2")(latents, targets, images, 5, 9, valid)
        assert torch.equal(out["per_sample_loss"], out["distill_loss"]) and not out["swd_loss"].any()


def test_two_cpu_processes_distil_in_sync_under_fsdp(teacher_dir, image_dir, tmp_path):
    env = {**cpu_launch_env(tmp_path), TEST_FSDP_ON_CPU_ENV: "1"}  # FSDP2 on the CPU processes (test-only)
    dump = tmp_path / "dump"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "accelerate_configs" / "fsdp_8gpu_dito_xl.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(SCRIPT),
        "--teacher_model_name_or_path", str(teacher_dir), "--teacher_steps", "2", "--train_data_dir", str(image_dir),
        "--max_train_samples", "8", "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", "3",
        "--checkpointing_steps", "2", "--validation_steps", "100", "--report_to", "none",
        "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"), "--debug_dump_dir", str(dump),
        "--swd_loss_weight", "1",  # two student decodes inside one DistributedDataParallel forward
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [read_dump(dump, rank) for rank in (0, 1)]
    first_epoch = [set(r["sample_indices"][:4]) for r in ranks]
    assert first_epoch[0].isdisjoint(first_epoch[1]) and first_epoch[0] | first_epoch[1] == set(range(8))
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # of the weights gathered from the shards
    assert all(0.3 < r["local_parameter_fraction"] < 0.7 for r in ranks)  # sharded
    assert ranks[0]["global_step"] == 3 and ranks[0]["images_seen"] == 12
    assert DiToPipeline.from_pretrained(tmp_path / "out").vae.config.num_inference_steps == 1


def test_speed_flags_run(distill_dito, teacher_dir, image_dir, tmp_path):
    # The speed flags (diffusers_dito.training.performance) reach this script too (their effect is checked in
    # test_performance.py; dynamo's eager backend runs the compile path without inductor's code generation).
    flags = ("--torch_compile", "--torch_compile_backend", "eager", "--channels_last")
    flags += ("--optimizer_implementation", "fused", "--max_train_steps", "2", "--checkpointing_steps", "2")
    distill_dito.main(run_args(distill_dito, tmp_path / "out", teacher_dir, image_dir, *flags))
    saved = vae_weights(tmp_path / "out" / "checkpoint-2" / "vae")
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
