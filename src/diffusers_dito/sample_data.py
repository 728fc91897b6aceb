"""Real photographs for demos and tests without a download: random crops of scikit-image's bundled photos.

scikit-image ships a handful of colour photographs inside its wheel (`skimage.data`), so they are available
offline wherever the `[demo]` extra is installed. `write_photo_crops` cuts random crops from them into an image
folder that `datasets`' `imagefolder` (and so `training/train_dito.py --train_data_dir`) reads.
"""

from pathlib import Path

import numpy as np
import PIL.Image
import torch

# Training photos and held-out photos never share a source image, so held-out metrics measure generalisation.
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
HELD_OUT_PHOTOS = ("chelsea", "retina")


def load_photo(name: str, scale: float = 0.5) -> PIL.Image.Image:
    """One of scikit-image's bundled colour photos as an RGB PIL image, down-scaled by `scale`."""
    from skimage import data  # in the [demo] extra

    array = np.asarray(getattr(data, name)())[..., :3]
    image = PIL.Image.fromarray(np.ascontiguousarray(array).astype(np.uint8), "RGB")
    if scale != 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.BICUBIC)
    return image


def write_photo_crops(
    folder: str | Path,
    num_crops: int,
    size: int = 32,
    photos: tuple[str, ...] = TRAIN_PHOTOS,
    scale: float = 0.5,
    seed: int = 0,
) -> list[Path]:
    r"""
    Write `num_crops` random `size`×`size` PNG crops of `photos` (round-robin) into `folder`.

    Args:
        folder: Output image folder (created).
        num_crops: How many crops to write.
        size: Crop side in pixels.
        photos: Names of `skimage.data` colour photos; see `TRAIN_PHOTOS` and `HELD_OUT_PHOTOS`.
        scale: Down-scaling of each photo before cropping (smaller means more content per crop).
        seed: Crop positions are drawn from `numpy.random.default_rng(seed)`.

    Returns:
        The written paths.

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
    `num_crops` random `height`×`width` crops of `photos` (round-robin) as one tensor in [-1, 1], the model's range.

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
