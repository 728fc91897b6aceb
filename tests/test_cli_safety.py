"""The CLI never loses a user's file, and every user error is one line with exit code 2."""

import errno
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from diffusers_dito import DiToPipeline
from diffusers_dito.cli import main


@pytest.fixture(scope="module")
def root(cli_folders, tmp_path_factory):
    """The saved `dito/` and `dit/` folders of the CLI tests, beside two photos with one stem and an animated GIF."""
    root = tmp_path_factory.mktemp("cli_safety")
    for name in ("dito", "dit"):
        (root / name).symlink_to(cli_folders / name)
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (root / folder).mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "a" / "photo.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "b" / "photo.jpg")
    frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    return root


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_reconstruct_into_the_inputs_folder_keeps_the_original(root, tmp_path):
    folder = tmp_path / "dir"
    shutil.copytree(root / "a", folder)
    original = (folder / "photo.png").read_bytes()
    assert main(["reconstruct", "--model", str(root / "dito"), str(folder / "photo.png"), "--out", str(folder)]) == 0
    assert (folder / "photo.png").read_bytes() == original
    assert Image.open(folder / "photo-1.png").size == (16, 16)


def test_reconstruct_inputs_with_the_same_stem_get_distinct_outputs(root, tmp_path, capsys):
    inputs = [str(root / "a" / "photo.png"), str(root / "b" / "photo.jpg")]
    assert main(["reconstruct", "--model", str(root / "dito"), *inputs, "--out", str(tmp_path), "--steps", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo-1.png", "photo.png"]
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{inputs[0]} -> {tmp_path / 'photo.png'}", f"{inputs[1]} -> {tmp_path / 'photo-1.png'}"]


def test_reconstruct_refuses_a_decompression_bomb_in_one_line(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16×16 = 256 > 2 × 100: PIL's bomb error
    argv = ["reconstruct", "--model", str(root / "dito"), str(root / "a" / "photo.png"), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "too large" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()  # a failed run leaves no empty output folder


def test_reconstruct_names_a_directory_input(root, tmp_path, capsys):
    assert main(["reconstruct", "--model", str(root / "dito"), str(root / "a"), "--out", str(tmp_path / "o")]) == 2
    assert "is a directory" in one_error_line(capsys)


def test_reconstruct_of_an_animation_says_which_frame(root, tmp_path, capsys):
    argv = ["reconstruct", "--model", str(root / "dito"), str(root / "anim.gif"), "--out", str(tmp_path)]
    argv += ["--steps", "1"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "3 frames; reconstructing the first" in err
    assert "it/s" not in err and "%|" not in err  # no progress bar per image


@pytest.mark.parametrize("content", ["null", "[1, 2]", "{not json"])
def test_broken_model_index_is_named(root, tmp_path, capsys, content):
    model = tmp_path / "model"
    shutil.copytree(root / "dito", model)
    (model / "model_index.json").write_text(content)
    assert main(["info", "--model", str(model)]) == 2
    assert "model_index.json" in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["reconstruct", "--model", "{m}", "{img}", "--out", "{t}", "--steps", "1000000000000"], "--steps"),
        (["reconstruct", "--model", "{m}", "{img}", "--out", "{t}", "--seed", str(2**64)], "--seed"),
        (["reconstruct", "--model", "{m}", "{img}", "--out", "{t}", "--seed", "-1"], "--seed"),
        (["generate", "--model", "{d}", "--class-labels", "1", "--out", "{t}", "--guidance-scale", "nan"], "guidance"),
        (["generate", "--model", "{d}", "--class-labels", "1", "--out", "{t}", "--guidance-scale", "inf"], "guidance"),
        (["generate", "--model", "{d}", "--class-labels", "1", "--out", "{t}", "--decoder-steps", "0"], "decoder"),
    ],
)
def test_out_of_range_flags_are_named_at_parse_time(root, tmp_path, capsys, argv, flag):
    fill = {"m": root / "dito", "d": root / "dit", "img": root / "a" / "photo.png", "t": tmp_path / "o"}
    argv = [a.format(**fill) for a in argv]
    assert main(argv) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in message and "Traceback" not in message
    assert not (tmp_path / "o").exists()


def test_info_model_index_class_is_reported(root, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(root / "dito", model)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    assert main(["info", "--model", str(model)]) == 2
    assert "not a DiTo pipeline" in one_error_line(capsys)


def test_reconstruct_never_writes_through_a_link_or_over_an_existing_file(root, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("a user's notes")
    (out / "photo.png").symlink_to(precious)  # the name the first input's output would take
    (out / "photo-1.png").write_bytes(b"an earlier result")
    inputs = [str(root / "a" / "photo.png"), str(root / "b" / "photo.jpg")]
    assert main(["reconstruct", "--model", str(root / "dito"), *inputs, "--out", str(out), "--steps", "1"]) == 0
    assert precious.read_text() == "a user's notes" and (out / "photo.png").resolve() == precious
    assert (out / "photo-1.png").read_bytes() == b"an earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["photo-1.png", "photo-2.png", "photo-3.png", "photo.png"]
    assert capsys.readouterr().out.splitlines() == [
        f"{inputs[0]} -> {out / 'photo-2.png'}",
        f"{inputs[1]} -> {out / 'photo-3.png'}",
    ]


@pytest.fixture
def failing_second_save(monkeypatch):
    """`PIL.Image.Image.save` whose second call writes 4096 bytes, then fails as `failing_second_save.error`."""
    save, calls = Image.Image.save, []

    def flaky_save(image, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) < 2:
            return save(image, fp, *args, **kwargs)
        with open(fp, "wb") as f:
            f.write(b"\x89PNG" + bytes(4092))
        raise flaky_save.error

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    return flaky_save


@pytest.mark.parametrize(
    "error, code, message",
    [
        (OSError(errno.ENOSPC, "No space left on device"), 2, "could not write {target}: No space left on device"),
        (KeyboardInterrupt(), 130, "diffusers-dito reconstruct: interrupted"),
    ],
)
def test_a_failed_write_leaves_no_truncated_file_and_names_it(
    root, tmp_path, capsys, failing_second_save, error, code, message
):
    failing_second_save.error = error
    inputs = [str(root / "a" / "photo.png"), str(root / "anim.gif")]
    out = tmp_path / "out"
    assert main(["reconstruct", "--model", str(root / "dito"), *inputs, "--out", str(out), "--steps", "1"]) == code
    assert sorted(p.name for p in out.iterdir()) == ["photo.png"]  # the first, whole; no part of the second
    assert Image.open(out / "photo.png").size == (16, 16)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{inputs[0]} -> {out / 'photo.png'}"]
    lines = [line for line in captured.err.splitlines() if line.strip() and "frames" not in line]
    assert lines == [lines[0]] and message.format(target=out / "anim.png") in lines[0], lines


def test_ctrl_c_while_reconstructing_is_one_line_and_leaves_nothing(root, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DiToPipeline, "__call__", interrupted)
    argv = ["reconstruct", "--model", str(root / "dito"), str(root / "a" / "photo.png"), "--out", str(tmp_path / "o")]
    assert main(argv) == 130
    assert one_error_line(capsys) == "diffusers-dito reconstruct: interrupted"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("out", ["file.png", "file.png/sub"])
def test_out_naming_a_file_is_refused_before_any_work(root, tmp_path, capsys, monkeypatch, out):
    (tmp_path / "file.png").write_bytes(b"a user's file")
    monkeypatch.setattr(DiToPipeline, "__call__", lambda *args, **kwargs: pytest.fail("reconstructed anyway"))
    argv = ["reconstruct", "--model", str(root / "dito"), str(root / "a" / "photo.png"), "--out", str(tmp_path / out)]
    assert main(argv) == 2
    assert f"--out {tmp_path / out}: not a folder" in one_error_line(capsys)
    assert (tmp_path / "file.png").read_bytes() == b"a user's file"
