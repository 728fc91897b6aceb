import json
import math

import distill_noise_check


def test_distill_noise_check_decodes_teacher_and_student_from_the_same_noise(tmp_path, tiny_teacher, write_images):
    vae, teacher = tiny_teacher
    vae.save_pretrained(tmp_path / "same")  # a bare AutoencoderDiTo folder, the teacher's weights and steps
    vae.register_to_config(num_inference_steps=1)
    vae.save_pretrained(tmp_path / "one_step")
    write_images(tmp_path / "train", 6, 16)
    write_images(tmp_path / "held_out", 2, 16, seed=1)
    argv = ["--teacher", str(teacher), "--train_dir", str(tmp_path / "train")]
    argv += ["--held_out_dir", str(tmp_path / "held_out"), "--num_pairs", "4", "--sample", "2"]

    same = distill_noise_check.main(distill_noise_check.parse_args([*argv, "--student", str(tmp_path / "same")]))
    assert [row["images"] for row in same["rows"]] == [2, 2, 2]  # 2 of the 4 cached pairs, then the held-out crops
    # The same network at the same steps, from the same noise: the decodes are identical in every case.
    assert all(row["student_to_teacher_psnr"] == math.inf for row in same["rows"])
    one_step_args = [*argv, "--student", str(tmp_path / "one_step"), "--json", str(tmp_path / "out.json")]
    one_step = distill_noise_check.main(distill_noise_check.parse_args(one_step_args))
    assert (one_step["teacher_steps"], one_step["student_steps"]) == (2, 1)
    assert all(math.isfinite(row["student_to_teacher_psnr"]) for row in one_step["rows"])
    assert json.loads((tmp_path / "out.json").read_text())["rows"] == one_step["rows"]
