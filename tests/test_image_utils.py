import numpy as np
import PIL.Image
import pytest

from diffusers_dito.image_utils import read_image, to_rgb


def rgb(image):
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out)


def test_gray_modes():
    gray = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    expected = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(rgb(PIL.Image.fromarray(gray, "L")), expected)
    deep = PIL.Image.fromarray(gray.astype(np.uint16) * 257)  # I;16: 0..65535
    assert deep.mode.startswith("I;16")
    np.testing.assert_array_equal(rgb(deep), expected)
    np.testing.assert_array_equal(rgb(PIL.Image.fromarray(gray.astype(np.int32) * 257, "I")), expected)


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[1, 1] = (0, 0, 0, 0)  # fully transparent black must become white, not black
    out = rgb(PIL.Image.fromarray(rgba, "RGBA"))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[1, 1]) == (255, 255, 255)
    la = rgb(PIL.Image.fromarray(rgba[..., [0, 3]], "LA"))
    assert tuple(la[1, 1]) == (255, 255, 255)


def test_palette_and_cmyk():
    image = PIL.Image.fromarray(np.full((4, 4, 3), (200, 10, 10), dtype=np.uint8))
    np.testing.assert_array_equal(rgb(image.convert("P", palette=PIL.Image.Palette.ADAPTIVE)), np.asarray(image))
    cmyk = image.convert("CMYK")
    np.testing.assert_allclose(rgb(cmyk).astype(int), np.asarray(image).astype(int), atol=2)
    transparent = image.convert("P", palette=PIL.Image.Palette.ADAPTIVE)
    transparent.info["transparency"] = transparent.getpixel((0, 0))
    assert tuple(rgb(transparent)[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["1", "YCbCr", "F"])
def test_other_modes_convert(mode):
    image = PIL.Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16, "L").convert(mode)
    assert rgb(image).shape == (4, 4, 3)


def test_read_image_errors_are_one_line_naming_the_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    for path, problem in (
        (tmp_path, "is a directory"),
        (tmp_path / "missing.png", "no such file"),
        (tmp_path / "notes.txt", "not a readable image"),
    ):
        with pytest.raises(ValueError) as error:
            read_image(path)
        assert str(error.value).startswith(f"{path}: {problem}") and "\n" not in str(error.value)


def test_read_image_of_an_animation_is_its_first_frame_in_rgb(tmp_path, capsys):
    frames = [PIL.Image.new("L", (4, 3), value) for value in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    image = read_image(tmp_path / "anim.gif")
    assert image.mode == "RGB" and image.size == (4, 3) and image.getpixel((0, 0)) == (10, 10, 10)
    assert "2 frames; reconstructing the first" in capsys.readouterr().err
