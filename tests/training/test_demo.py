"""The main job (`training/demo.py`) runs end to end with its default configuration, at toy size."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from script_helpers import REPO, fresh_accelerate_state, load_script, one_thread  # noqa: F401 (autouse fixtures)

from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToPipeline


def test_demo_trains_evaluates_at_the_models_default_steps_draws_a_labelled_grid_and_distils(tmp_path):
    demo = load_script(REPO / "training" / "demo.py")
    args = demo.parse_args(
        [
            "--output_dir", str(tmp_path / "run"),
            "--num_train_crops", "16",
            "--num_eval_crops", "8",
            "--max_train_steps", "2",
            "--train_batch_size", "2",
            "--lr_warmup_steps", "1",
            "--sweep_steps", "1",
            "--distill", "--distill_steps", "2", "--distill_pairs", "4", "--distill_batch_size", "2",
            "--teacher_steps", "2",
        ]
    )  # fmt: skip
    assert args.model_preset == demo.PRESET and args.lr_scheduler == demo.LR_SCHEDULER  # the defaults, not toy ones
    demo.main(args)
    out = tmp_path / "run"
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    vae = DiToPipeline.from_pretrained(out / "pipeline").vae
    assert metrics["steps"] == vae.config.num_inference_steps  # judged at the model's own default
    assert {"psnr", "ssim", "swd", "hf_energy_ratio"} <= set(metrics)
    timing = json.loads((out / "evaluation" / "timing.json").read_text())
    assert timing["seconds_per_step"] > 0 and timing["elapsed_seconds"] >= timing["train_seconds"]
    grid = np.asarray(PIL.Image.open(out / "evaluation" / "reconstructions.png"))
    assert grid.shape[0] >= 8 * 64 and grid.shape[1] >= 3 * 64  # 8 rows of 3 cells, each at least 64 px
    assert sorted(p.name for p in (out / "data" / "held_out").iterdir())[:1] == ["00000_astronaut.png"]
    # --distill: a 1-step student with the teacher's encoder, evaluated at its own default on the same crops.
    student = DiToPipeline.from_pretrained(out / "student").vae
    assert student.config.num_inference_steps == 1
    assert all(
        torch.equal(a, b) for a, b in zip(vae.encoder.state_dict().values(), student.encoder.state_dict().values())
    )
    student_metrics = json.loads((out / "evaluation-student" / "metrics.json").read_text())
    assert student_metrics["steps"] == 1 and student_metrics["num_images"] == metrics["num_images"]
    timing = json.loads((out / "evaluation" / "timing.json").read_text())
    assert 0 < timing["distill_seconds"] <= timing["distill_and_evaluation_seconds"]
    card = (out / "student" / "README.md").read_text()  # the demo's distillation recipe, as the card names it
    assert f"finest band x{demo.DISTILL_FINE_WEIGHT:g}" in card and f"weight {demo.DISTILL_DATA_LOSS_WEIGHT}" in card
    swd_term = f"{demo.DISTILL_SWD_LOSS_WEIGHT:g} x patch SWD ({demo.DISTILL_SWD_NOISE} noise)"
    assert (swd_term in card) if demo.DISTILL_SWD_LOSS_WEIGHT else ("patch SWD" not in card)


def test_distill_flags_reach_distill_dito(tmp_path):
    """Each `--distill_*` flag becomes the matching `distill_dito.py` argument; the defaults are the demo's recipe."""
    demo = load_script(REPO / "training" / "demo.py")
    distill_dito = load_script(REPO / "training" / "distill_dito.py")
    # distill_dito's arguments check that the data folder exists and that the teacher is a DiTo
    (tmp_path / "train").mkdir()
    AutoencoderDiTo.from_config(DITO_PRESETS[demo.PRESET]).save_config(tmp_path / "pipeline")
    defaults = distill_dito.parse_args(
        demo.distill_arguments(demo.parse_args([]), tmp_path / "pipeline", tmp_path / "train", tmp_path / "student")
    )
    recipe = {
        "max_train_steps": demo.DISTILL_STEPS,
        "max_train_samples": demo.DISTILL_PAIRS,
        "train_batch_size": demo.DISTILL_BATCH_SIZE,
        "learning_rate": demo.DISTILL_LEARNING_RATE,
        "loss_type": demo.DISTILL_LOSS_TYPE,
        "laplacian_fine_weight": demo.DISTILL_FINE_WEIGHT,
        "data_loss_weight": demo.DISTILL_DATA_LOSS_WEIGHT,
        "swd_loss_weight": demo.DISTILL_SWD_LOSS_WEIGHT,
        "swd_noise": demo.DISTILL_SWD_NOISE,
        "student_config": demo.DISTILL_STUDENT_CONFIG,
        "cache_teacher_targets": True,
        "teacher_steps": None,
    }
    assert {key: getattr(defaults, key) for key in recipe} == recipe
    flags = ["--distill_steps", "7", "--distill_data_loss_weight", "0.25", "--distill_swd_loss_weight", "3"]
    other_noise = "paired" if demo.DISTILL_SWD_NOISE == "fresh" else "fresh"
    flags += ["--distill_swd_noise", other_noise, "--teacher_steps", "5", "--distill_student_config", "lite"]
    chosen = distill_dito.parse_args(
        demo.distill_arguments(demo.parse_args(flags), tmp_path / "pipeline", tmp_path / "train", tmp_path / "student")
    )
    assert (chosen.max_train_steps, chosen.data_loss_weight, chosen.swd_loss_weight) == (7, 0.25, 3.0)
    assert chosen.swd_noise == other_noise and chosen.teacher_steps == 5 and chosen.checkpointing_steps == 7
    assert chosen.student_config == "lite"  # checked against the demo's preset by distill_dito's start-up checks
    assert chosen.output_dir == str(tmp_path / "student") and chosen.teacher_model_name_or_path.endswith("pipeline")


def test_model_config_replaces_the_preset(tmp_path, monkeypatch):
    """`--model_config` trains that config.json instead of `--model_preset` (experiments/demo_budget uses it)."""
    demo = load_script(REPO / "training" / "demo.py")
    AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"]).save_config(tmp_path / "config")

    class Stop(Exception):
        pass

    def train(args):
        nonlocal trained
        trained = args
        raise Stop

    trained = None
    monkeypatch.setattr(demo.train_dito, "main", train)
    argv = ["--output_dir", str(tmp_path / "run"), "--model_config", str(tmp_path / "config")]
    with pytest.raises(Stop):
        demo.main(demo.parse_args(argv + ["--num_train_crops", "2", "--num_eval_crops", "2"]))
    assert trained.model_config == str(tmp_path / "config") and trained.model_preset is None


def test_a_bad_flag_is_a_one_line_error(capsys):
    demo = load_script(REPO / "training" / "demo.py")
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(["--max_train_steps", "many"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--max_train_steps" in lines[0], lines  # no usage block
