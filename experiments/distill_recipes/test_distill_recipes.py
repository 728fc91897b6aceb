import json
import math

import torch

import distill_recipes
from diffusers_dito import laplacian_l2_loss


def test_distill_recipes_caches_the_teachers_pairs_once_and_scores_each_variant(
    tmp_path, capsys, tiny_teacher, write_images
):
    demo = tmp_path / "demo"  # what training/demo.py leaves: pipeline/ and data/{train,held_out}/
    demo.mkdir()
    tiny_teacher[1].rename(demo / "pipeline")
    write_images(demo / "data" / "train", 4, 32)
    write_images(demo / "data" / "held_out", 2, 32, seed=1)
    argv = ["--demo_dir", str(demo), "--output_dir", str(tmp_path / "out"), "--pairs", "4", "--batch_size", "2"]
    argv += ["--teacher_steps", "2", "--steps", "3", "--eval_every", "2"]

    first = distill_recipes.main(distill_recipes.parse_args([*argv, "--name", "l2"]))
    assert "cached 4 pairs" in capsys.readouterr().out
    assert [row["step"] for row in first["history"]] == [2, 3]  # every --eval_every steps, and the last
    keys = ("psnr", "swd", "fine", "coarse", "psnr_to_teacher")
    assert all(math.isfinite(row[key]) for row in first["history"] for key in keys)
    laplacian = ["--name", "laplacian", "--loss", "laplacian", "--fine_weight", "4"]
    second = distill_recipes.main(distill_recipes.parse_args([*argv, *laplacian]))
    assert "cached" not in capsys.readouterr().out  # the second variant reads the first one's teacher decodes
    assert json.loads((tmp_path / "out" / "laplacian.json").read_text())["history"] == second["history"]
    assert second["history"][-1]["psnr"] != first["history"][-1]["psnr"]  # the loss reached the student
    swd = [*laplacian[2:], "--name", "swd", "--swd_weight", "10"]
    third = distill_recipes.main(distill_recipes.parse_args([*argv, *swd]))
    assert third["history"][-1]["psnr"] != second["history"][-1]["psnr"]  # so did the fresh-noise SWD term

    # Its `laplacian` loss is the batch mean of diffusers_dito.laplacian_l2_loss, summed as the recorded runs were.
    a, b = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    args = distill_recipes.parse_args([*argv, *laplacian])
    torch.testing.assert_close(distill_recipes.distance(a, b, args), laplacian_l2_loss(a, b, fine_weight=4.0).mean())
