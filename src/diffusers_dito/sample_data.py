"""Real photographs for demos and tests without a download, with a sound train / held-out split.

Every colour photograph that ships inside the installed packages is used: scikit-image's `skimage.data`,
scikit-learn's sample images and matplotlib's sample data (`PHOTOS`). No file is downloaded.

**The split.** Each photo is cut into a 4×4 grid of cells, and `HELD_OUT_CELLS_PER_PHOTO` cells of each photo,
fixed per photo, are held out. A held-out crop lies inside one held-out cell; a training crop never touches a
held-out cell. Each crop is cut from the photo first and only then resized, so a resized training pixel never mixes
in a held-out source pixel: the two sides share no pixel, yet come from the same photos, so from the same
distribution (`split_statistics` measures it; experiments/data_split/README.md reports it).

**Scales.** A crop's source window has a side drawn log-uniformly between `1/8` and `1/4` of the photo's short side
and is resized to the crop size, so a crop holds a comparable amount of content whatever the photo's resolution.

`write_split_crops` writes crops to an image folder that `datasets`' `imagefolder` (and so
`training/train_dito.py --train_data_dir`) reads; `split_crops` returns them as a tensor.

The older `TRAIN_PHOTOS` / `HELD_OUT_PHOTOS` split (different photos on each side) is kept for the test fixtures and
benchmarks that were calibrated on it; its two sides are *not* from the same distribution, so nothing that reports a
held-out quality uses it.
"""

import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import torch

# Every colour photograph bundled with scikit-image, scikit-learn or matplotlib (synthetic images such as
# `colorwheel` and `logo` are not photographs; `cat` is the same photo as `chelsea`).
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
SKLEARN_PHOTOS = ("china", "flower")
MATPLOTLIB_PHOTOS = ("grace_hopper", "Minduka_Present_Blue_Pack")
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS + MATPLOTLIB_PHOTOS

GRID = 4  # each photo is cut into GRID × GRID cells
HELD_OUT_CELLS_PER_PHOTO = 3  # of the 16: about 19 % of every photo is held out
WINDOW_FRACTION = (1 / 8, 1 / 4)  # a crop's source window side, as a fraction of the photo's short side
SPLITS = ("train", "held_out")

# The first split (kept for calibrated test fixtures and benchmarks only; see the module docstring).
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
HELD_OUT_PHOTOS = ("chelsea", "retina")


def _load_array(name: str) -> np.ndarray:
    if name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image  # in the [demo] extra

        return load_sample_image(f"{name}.jpg")
    if name in MATPLOTLIB_PHOTOS:
        import matplotlib.cbook  # in the [demo] extra

        suffix = ".jpg" if name == "grace_hopper" else ".png"
        with matplotlib.cbook.get_sample_data(name + suffix) as file:
            image = PIL.Image.open(file)
            image.load()
        return np.asarray(image.convert("RGB"))
    from skimage import data  # in the [demo] extra

    array = getattr(data, name)()
    if isinstance(array, tuple):  # stereo_motorcycle returns (left, right, disparity): the left view
        array = array[0]
    return np.asarray(array)


def load_photo(name: str, scale: float = 1.0) -> PIL.Image.Image:
    r"""
    One of the bundled colour photos (`PHOTOS`, or `TRAIN_PHOTOS`/`HELD_OUT_PHOTOS`) as an RGB PIL image, resized by
    `scale`.

    Examples:
        ```py
        >>> from diffusers_dito.sample_data import load_photo

        >>> load_photo("coffee").size, load_photo("china", scale=0.5).size
        ((600, 400), (320, 214))

        ```
    """
    array = np.asarray(_load_array(name))[..., :3]
    image = PIL.Image.fromarray(np.ascontiguousarray(array).astype(np.uint8), "RGB")
    if scale != 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.BICUBIC)
    return image


def held_out_cells(name: str, width: int, height: int) -> list[tuple[int, int, int, int]]:
    r"""
    The held-out rectangles `(left, top, right, bottom)` of photo `name` of size `width`×`height`, in its pixels.

    The cells are a fixed function of the photo's name (a CRC32 seed), so every run and every machine holds out the
    same pixels.

    Examples:
        ```py
        >>> from diffusers_dito.sample_data import held_out_cells

        >>> cells = held_out_cells("coffee", 600, 400)
        >>> len(cells), cells == held_out_cells("coffee", 600, 400)
        (3, True)

        ```
    """
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    cells = sorted(rng.choice(GRID * GRID, size=HELD_OUT_CELLS_PER_PHOTO, replace=False).tolist())
    xs = [round(width * i / GRID) for i in range(GRID + 1)]
    ys = [round(height * i / GRID) for i in range(GRID + 1)]
    return [(xs[c % GRID], ys[c // GRID], xs[c % GRID + 1], ys[c // GRID + 1]) for c in cells]


def _overlaps(box: tuple[int, int, int, int], other: tuple[int, int, int, int]) -> bool:
    return box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]


def _window(rng: np.random.Generator, image: PIL.Image.Image, name: str, split: str) -> tuple[int, int, int, int]:
    """A square source window of the photo on `split`'s side of the split: inside a held-out cell, or clear of all."""
    cells = held_out_cells(name, image.width, image.height)
    low, high = (f * min(image.size) for f in WINDOW_FRACTION)
    for _ in range(10_000):
        side = int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))
        if split == "held_out":
            left, top, right, bottom = cells[int(rng.integers(len(cells)))]
            side = min(side, right - left, bottom - top)
            x, y = int(rng.integers(left, right - side + 1)), int(rng.integers(top, bottom - side + 1))
            return x, y, x + side, y + side
        x, y = int(rng.integers(0, image.width - side + 1)), int(rng.integers(0, image.height - side + 1))
        box = (x, y, x + side, y + side)
        if not any(_overlaps(box, cell) for cell in cells):
            return box
    raise RuntimeError(f"Found no training window in {name!r} clear of its held-out cells.")  # not reached


def split_crop_boxes(split: str, num_crops: int, seed: int = 0, photos: tuple[str, ...] = PHOTOS):
    r"""
    The source windows of `split_crops`: `num_crops` tuples `(photo_name, (left, top, right, bottom))` in the
    photo's own pixels, round-robin over `photos`.

    Examples:
        ```py
        >>> from diffusers_dito.sample_data import split_crop_boxes

        >>> [name for name, _ in split_crop_boxes("held_out", 3)]
        ['astronaut', 'chelsea', 'coffee']

        ```
    """
    images = {name: load_photo(name) for name in photos}
    return _boxes(split, num_crops, seed, images, photos)


def _boxes(split: str, num_crops: int, seed: int, images: dict, photos: tuple[str, ...]):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    if num_crops < 1:
        raise ValueError(f"`num_crops` must be >= 1, got {num_crops}.")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    names = [photos[i % len(photos)] for i in range(num_crops)]
    return [(name, _window(rng, images[name], name, split)) for name in names]


def _split_images(split: str, num_crops: int, size: int, seed: int, photos: tuple[str, ...]):
    if size < 1:
        raise ValueError(f"`size` must be >= 1, got {size}.")
    images = {name: load_photo(name) for name in photos}
    for name, box in _boxes(split, num_crops, seed, images, photos):
        # Cut first, then resize: the resampling filter only ever sees this side's pixels.
        yield name, images[name].crop(box).resize((size, size), PIL.Image.BICUBIC, reducing_gap=None)


def split_crops(
    split: str, num_crops: int, size: int = 32, seed: int = 0, photos: tuple[str, ...] = PHOTOS
) -> torch.Tensor:
    r"""
    `num_crops` square crops of `split` (`"train"` or `"held_out"`), `size` px, as one tensor in [-1, 1].

    Returns:
        `torch.Tensor` of shape `(num_crops, 3, size, size)`, float32.

    Examples:
        ```py
        >>> from diffusers_dito.sample_data import split_crops

        >>> split_crops("held_out", 2, size=16).shape
        torch.Size([2, 3, 16, 16])

        ```
    """
    crops = [np.asarray(crop, dtype=np.float32) for _, crop in _split_images(split, num_crops, size, seed, photos)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2) / 127.5 - 1  # (N, H, W, 3) -> (N, 3, H, W)


def write_split_crops(
    folder: str | Path, split: str, num_crops: int, size: int = 32, seed: int = 0, photos: tuple[str, ...] = PHOTOS
) -> list[Path]:
    r"""
    Write `num_crops` PNG crops of `split` into `folder` (created), named `<index>_<photo>.png`.

    Examples:
        ```py
        >>> import tempfile
        >>> from diffusers_dito.sample_data import write_split_crops

        >>> len(write_split_crops(tempfile.mkdtemp(), "train", num_crops=2, size=16))
        2

        ```
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, crop) in enumerate(_split_images(split, num_crops, size, seed, photos)):
        path = folder / f"{i:05d}_{name}.png"  # sorted by name, the files keep the round-robin over the photos
        crop.save(path)
        paths.append(path)
    return paths


def split_statistics(images: torch.Tensor, cutoff: float = 0.5) -> dict[str, float | list[float]]:
    r"""
    Statistics of a set of images in [-1, 1], for comparing the two sides of a split.

    `hf_energy` is the mean spectral power per pixel above `cutoff` × Nyquist (mean removed, Hann window: the band
    that `metrics.high_frequency_energy_ratio` compares); `mean` and `std` are per RGB channel, in [0, 1] units.

    Examples:
        ```py
        >>> import torch
        >>> from diffusers_dito.sample_data import split_statistics

        >>> sorted(split_statistics(torch.zeros(2, 3, 16, 16)))
        ['hf_energy', 'mean', 'std']

        ```
    """
    height, width = images.shape[-2:]
    window = torch.outer(torch.hann_window(height, periodic=False), torch.hann_window(width, periodic=False))
    radius = torch.hypot(torch.fft.fftfreq(height)[:, None], torch.fft.fftfreq(width)[None, :]) / 0.5
    x = (images - images.mean(dim=(-2, -1), keepdim=True)) * window
    power = torch.fft.fft2(x).abs().square()[..., radius > cutoff].double()
    pixels = (images.double() + 1) / 2
    return {
        "hf_energy": float(power.sum() / images.numel()),
        "mean": [round(float(v), 4) for v in pixels.mean(dim=(0, 2, 3))],
        "std": [round(float(v), 4) for v in pixels.std(dim=(0, 2, 3))],
    }


def write_photo_crops(
    folder: str | Path,
    num_crops: int,
    size: int = 32,
    photos: tuple[str, ...] = TRAIN_PHOTOS,
    scale: float = 0.5,
    seed: int = 0,
) -> list[Path]:
    r"""
    Write `num_crops` random `size`×`size` PNG crops of whole `photos` (round-robin) into `folder`. This ignores the
    split: use `write_split_crops` for training and held-out data.

    Examples:
        ```py
        >>> import tempfile
        >>> from diffusers_dito.sample_data import write_photo_crops

        >>> paths = write_photo_crops(tempfile.mkdtemp(), num_crops=2, size=16, photos=("coffee",))
        >>> len(paths)
        2

        ```
    """
    if num_crops < 1 or size < 1:
        raise ValueError(f"`num_crops` and `size` must be >= 1, got {num_crops} and {size}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, crop) in enumerate(_random_crops(num_crops, size, size, photos, scale, seed)):
        path = folder / f"{name}_{i:05d}.png"
        crop.save(path)
        paths.append(path)
    return paths


def photo_crops(
    num_crops: int,
    height: int,
    width: int,
    photos: tuple[str, ...] = HELD_OUT_PHOTOS,
    scale: float = 0.5,
    seed: int = 0,
) -> torch.Tensor:
    r"""
    `num_crops` random `height`×`width` crops of whole `photos` (round-robin) as one tensor in [-1, 1]. This ignores
    the split: use `split_crops` for training and held-out data.

    Returns:
        `torch.Tensor` of shape `(num_crops, 3, height, width)`, float32.

    Examples:
        ```py
        >>> from diffusers_dito.sample_data import photo_crops

        >>> photo_crops(2, 16, 24).shape
        torch.Size([2, 3, 16, 24])

        ```
    """
    if num_crops < 1 or height < 1 or width < 1:
        raise ValueError(f"`num_crops`, `height` and `width` must be >= 1, got {num_crops}, {height} and {width}.")
    crops = [
        np.asarray(crop, dtype=np.float32) for _, crop in _random_crops(num_crops, height, width, photos, scale, seed)
    ]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2) / 127.5 - 1  # (N, H, W, 3) -> (N, 3, H, W)


def _random_crops(
    num_crops: int, height: int, width: int, photos: tuple[str, ...], scale: float, seed: int
) -> list[tuple[str, PIL.Image.Image]]:
    rng = np.random.default_rng(seed)
    images = [load_photo(name, scale) for name in photos]
    for name, image in zip(photos, images):
        if image.width < width or image.height < height:
            raise ValueError(
                f"Photo {name!r} at scale {scale} is {image.size}, smaller than the {width}x{height} crop."
            )
    crops = []
    for i in range(num_crops):
        k = i % len(images)
        image = images[k]
        left = int(rng.integers(0, image.width - width + 1))
        top = int(rng.integers(0, image.height - height + 1))
        crops.append((photos[k], image.crop((left, top, left + width, top + height))))
    return crops
