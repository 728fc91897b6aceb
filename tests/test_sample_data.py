"""The bundled-photo split: training and held-out crops never share a pixel, and come from the same distribution."""

import pytest

from diffusers_dito.sample_data import (
    PHOTOS,
    held_out_cells,
    load_photo,
    split_crop_boxes,
    split_crops,
    split_statistics,
)


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_every_bundled_colour_photo_loads_offline():
    for name in PHOTOS:
        image = load_photo(name)
        assert image.mode == "RGB" and min(image.size) >= 64, name


def test_no_training_crop_touches_a_held_out_cell():
    cells = {name: held_out_cells(name, *load_photo(name).size) for name in PHOTOS}
    for seed in (0, 1):
        for name, box in split_crop_boxes("train", 1200, seed=seed):
            assert not any(overlaps(box, cell) for cell in cells[name]), (name, box)


def test_every_held_out_crop_lies_inside_one_held_out_cell():
    cells = {name: held_out_cells(name, *load_photo(name).size) for name in PHOTOS}
    for name, box in split_crop_boxes("held_out", 300, seed=1):
        inside = [c for c in cells[name] if c[0] <= box[0] and c[1] <= box[1] and box[2] <= c[2] and box[3] <= c[3]]
        assert len(inside) == 1, (name, box)


def test_both_sides_cover_every_photo_and_have_comparable_detail():
    assert {name for name, _ in split_crop_boxes("held_out", len(PHOTOS))} == set(PHOTOS)
    train = split_statistics(split_crops("train", 480, 32, seed=0))
    held_out = split_statistics(split_crops("held_out", 240, 32, seed=1))
    ratio = train["hf_energy"] / held_out["hf_energy"]
    assert 1 / 1.5 <= ratio <= 1.5, ratio
    for side in (train, held_out):
        assert all(0.2 < m < 0.8 for m in side["mean"]) and all(0.1 < s < 0.5 for s in side["std"])


def test_crops_are_deterministic_and_the_split_name_is_checked():
    assert split_crop_boxes("train", 5, seed=3) == split_crop_boxes("train", 5, seed=3)
    with pytest.raises(ValueError, match="split"):
        split_crop_boxes("test", 5)
