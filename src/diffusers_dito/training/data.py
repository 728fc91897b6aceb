# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Training images: loading, decoding (unreadable files are skipped, not fatal), augmentation and sampling.

Every random choice is a pure function of (seed, epoch, sample index) so that a resumed run replays the data exactly
(the scheme of NVlabs/edm2 `training/training_loop.py`): no random stream is carried from one step to the next.

A sample that cannot be used keeps its slot in the batch with zero weight (`valid` False), so batches keep their
shape and every rank its step count: an unreadable file (corrupt, truncated, not an image) is logged with its path
and counted, and with `--small_image_policy skip` an image whose short side is under `--resolution` is counted as
`too_small`. The loop stops the run when unreadable files pass `--max_bad_sample_fraction` (docs/reliability.md).
"""

import argparse
import functools
import io
import logging
import os

import datasets
import numpy as np
import PIL.Image
import torch

from diffusers_dito.image_utils import to_rgb

from .reliability import BadDataError

# Dataloader workers have no accelerate state, so the data code logs through the standard library.
logger = logging.getLogger(__name__)


def seed_from(*keys: int) -> int:
    """A 64-bit seed that is a pure function of integer keys: one independent stream per (seed, position)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0])


SMALL_IMAGE_POLICIES = ("upscale", "skip")  # for an image whose short side is under the crop size
BAD_FILE_LOG_FIRST = 10  # unreadable files logged one by one; after that only the 16th, 32nd, 64th... (per process)
_bad_files_seen = 0  # in this process (each dataloader worker counts its own)


def image_source(value) -> str:
    """Where a datasets cell came from, for the logs: its path, or a description of in-memory data."""
    if isinstance(value, dict):
        return value.get("path") or f"<{len(value.get('bytes') or b'')} bytes>"
    if isinstance(value, (str, os.PathLike)):
        return str(value)
    if isinstance(value, PIL.Image.Image):
        return getattr(value, "filename", "") or "<in-memory image>"
    return f"<{type(value).__name__}>"


def _log_bad_file(value, error: Exception) -> None:
    """Rate-limited: a dataset with thousands of broken files must not drown the training log."""
    global _bad_files_seen
    _bad_files_seen += 1
    count = _bad_files_seen
    if count <= BAD_FILE_LOG_FIRST or count & (count - 1) == 0:
        more = " (from now on only every power of 2 is logged)" if count == BAD_FILE_LOG_FIRST else ""
        logger.warning(
            f"Skipping unreadable image {image_source(value)} ({type(error).__name__}: {error}); "
            f"{count} so far in process {os.getpid()}{more}."
        )


def decode_image(value) -> PIL.Image.Image | None:
    """An 8-bit RGB image from a datasets cell (Image(decode=False) dict, PIL image, path or bytes); None if the file
    is corrupt, truncated or not an image (logged with its path). Grayscale, 16-bit, alpha, palette and CMYK images are
    converted by `diffusers_dito.image_utils.to_rgb`."""
    try:
        source = value
        if isinstance(source, dict):
            source = source["bytes"] if source.get("bytes") else source["path"]
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        image = source if isinstance(source, PIL.Image.Image) else PIL.Image.open(source)
        image.load()  # PIL decodes lazily: force it here, inside the try
        return to_rgb(image)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError... for bad files
        _log_bad_file(value, e)
        return None


def is_too_small(image: PIL.Image.Image, resolution: int) -> bool:
    return min(image.size) < resolution


def resize_and_crop(image: PIL.Image.Image, resolution: int, rng: np.random.Generator | None = None, flip=False):
    """Scale the short side to `resolution` (bicubic, up or down), crop a square (random with `rng`, else central),
    maybe flip. Only the crop is resampled (`resize(box=...)`), so a huge or very elongated image costs no more than
    a square one: a 1x50000 strip upscaled whole would need gigabytes."""
    scale = resolution / min(image.size)
    width, height = max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))
    if rng is None:
        left, top = (width - resolution) // 2, (height - resolution) // 2
    else:
        left, top = int(rng.integers(0, width - resolution + 1)), int(rng.integers(0, height - resolution + 1))
    sx, sy = width / image.width, height / image.height  # scaled / source pixels, along each axis
    box = (left / sx, top / sy, (left + resolution) / sx, (top + resolution) / sy)  # the crop, in source pixels
    image = image.resize((resolution, resolution), PIL.Image.Resampling.BICUBIC, box=box)
    if rng is not None and flip and rng.random() < 0.5:
        image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)  # (R, R, 3) in [-1, 1]
    return pixels.permute(2, 0, 1)  # (3, R, R)


class _ImageSamples:
    """What the map-style and streaming datasets share: turning one example into a training sample."""

    def __init__(
        self,
        hf_dataset,
        image_column: str,
        resolution: int,
        random_flip: bool,
        seed: int,
        label_column: str | None = None,
        random_crop: bool = True,
        small_image_policy: str = "upscale",
    ):
        if small_image_policy not in SMALL_IMAGE_POLICIES:
            raise ValueError(f"small_image_policy must be one of {SMALL_IMAGE_POLICIES}, not {small_image_policy!r}")
        self.hf_dataset, self.image_column, self.label_column = hf_dataset, image_column, label_column
        self.resolution, self.random_flip, self.random_crop = resolution, random_flip, random_crop
        self.small_image_policy = small_image_policy
        self.seed, self.epoch = seed, 0

    def sample(self, example: dict, position: int) -> dict:
        """`pixel_values` (3, R, R) in [-1, 1], or None for an unreadable image or (policy `skip`) one smaller than
        the crop, which also sets `too_small`; `label` with a label column."""
        image = decode_image(example[self.image_column])
        pixels, too_small = None, False
        if image is not None and self.small_image_policy == "skip" and is_too_small(image, self.resolution):
            image, too_small = None, True
        if image is not None:
            rng = np.random.default_rng(seed_from(self.seed, self.epoch, position))
            if self.random_crop:  # the DiTo paper's augmentation: random crop, random flip
                pixels = resize_and_crop(image, self.resolution, rng, self.random_flip)
            else:  # DiT's: centre crop, random flip (the same flip draw as a latent cache's, see latent_cache.py)
                pixels = resize_and_crop(image, self.resolution)
                pixels = pixels.flip(-1) if self.random_flip and rng.random() < 0.5 else pixels
        sample = {"index": position, "pixel_values": pixels, "too_small": too_small}
        if self.label_column is not None:
            sample["label"] = int(example[self.label_column])
        return sample


class ImageDataset(_ImageSamples, torch.utils.data.Dataset):
    """Map-style training images. Augmentation is seeded by (seed, epoch, index), so a resumed run replays it."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # reaches the workers: they are re-created (and the dataset re-copied) every epoch

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def __getitem__(self, index: int) -> dict:
        return self.sample(self.hf_dataset[index], index)


class StreamingImageDataset(_ImageSamples, torch.utils.data.IterableDataset):
    """Streaming training images; sample ids are positions in the epoch's shuffled stream."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.hf_dataset.set_epoch(epoch)  # reshuffles the stream with seed + epoch

    def __iter__(self):
        # In a dataloader worker, a `datasets.IterableDataset` yields only that worker's shards (datasets splits
        # them by torch's worker info; with fewer shards than workers, the extra workers stop), so each example
        # reaches one worker. Filtering the positions again here would keep 1/N of the stream. Sample ids interleave
        # the workers' positions so that they stay unique: they seed the augmentation and the decoder noise.
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for position, example in enumerate(self.hf_dataset):
            yield self.sample(example, position * num_workers + worker_id)


def collate_samples(examples: list[dict], key: str, shape: tuple[int, ...]) -> dict:
    """Stack a batch of `key` tensors of `shape`; a missing one (an unreadable or skipped image) keeps its slot as
    zeros with valid=False, so every tensor stays per-sample; `too_small` tells the skipped ones. Labels are stacked
    too when the samples have them."""
    values = torch.zeros(len(examples), *shape)  # (B, *shape)
    valid = torch.tensor([e[key] is not None for e in examples])  # (B,)
    for i, example in enumerate(examples):
        if example[key] is not None:
            values[i] = example[key]
    batch = {
        key: values,
        "valid": valid,
        "too_small": torch.tensor([e.get("too_small", False) for e in examples]),  # (B,)
        "index": torch.tensor([e["index"] for e in examples]),
    }
    if "label" in examples[0]:
        batch["label"] = torch.tensor([e["label"] for e in examples])  # (B,)
    return batch


def training_dataloader(dataset, sampler, args: argparse.Namespace, key: str, shape: tuple[int, ...]):
    """Batches of `args.train_batch_size` samples whose `key` tensors have `shape`."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        drop_last=True,  # equal batches on every rank and every step
        num_workers=args.dataloader_num_workers,
        collate_fn=functools.partial(collate_samples, key=key, shape=shape),
    )


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation that is a pure function of (seed, epoch): every rank draws the same one before accelerate shards
    it, and a resumed run replays it (with `skip_first_batches`)."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        permutation_rng = torch.Generator().manual_seed(seed_from(self.seed, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=permutation_rng).tolist())


def load_hf_dataset(args: argparse.Namespace, label_column: str | None = None):
    """The training split (image column, and `label_column` if given), images left undecoded: corrupt files are then
    caught in our own decode."""
    streaming = getattr(args, "streaming", False)
    if args.train_data_dir is not None:
        dataset = datasets.load_dataset(
            "imagefolder", data_dir=args.train_data_dir, split="train", cache_dir=args.cache_dir, streaming=streaming
        )
    elif os.path.isfile(os.path.join(args.dataset_name, "state.json")) or os.path.isfile(
        os.path.join(args.dataset_name, "dataset_dict.json")
    ):  # a `save_to_disk` folder
        dataset = datasets.load_from_disk(args.dataset_name)
        dataset = dataset["train"] if isinstance(dataset, datasets.DatasetDict) else dataset
        dataset = dataset.to_iterable_dataset() if streaming else dataset
    else:
        dataset = datasets.load_dataset(
            args.dataset_name, args.dataset_config_name, split="train", cache_dir=args.cache_dir, streaming=streaming
        )
    columns = dataset.column_names
    if columns is not None and args.image_column not in columns:
        raise ValueError(f"--image_column {args.image_column!r} is not in the dataset; its columns are {columns}.")
    if columns is not None and label_column is not None and label_column not in columns:
        raise ValueError(
            f"--label_column {label_column!r} is not in the dataset; its columns are {columns}. With "
            "--train_data_dir, put the images of each class in a subfolder named after it (imagefolder then adds a "
            "`label` column)."
        )
    features = dataset.features
    if features is not None and isinstance(features.get(args.image_column), datasets.Image):
        dataset = dataset.cast_column(args.image_column, datasets.Image(decode=False))
    dataset = dataset.select_columns([args.image_column] + ([label_column] if label_column is not None else []))
    if args.max_train_samples is not None:
        if streaming:
            dataset = dataset.take(args.max_train_samples)
        else:
            dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
    return dataset


def class_names(hf_dataset, label_column: str) -> list[str]:
    """The class names of a `ClassLabel` column (imagefolder's folder names), or "0".."N-1" for integer labels."""
    feature = hf_dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        labels = hf_dataset.unique(label_column)
        if labels and min(labels) < 0:
            raise ValueError(f"--label_column {label_column!r} holds a negative class id ({min(labels)}).")
        return [str(i) for i in range(max(labels, default=-1) + 1)]
    raise ValueError(f"--label_column {label_column!r} must hold class ids (ClassLabel or integers), not {feature}.")


def load_validation_images(
    hf_dataset, image_column: str, count: int, resolution: int, small_image_policy: str = "upscale"
) -> torch.Tensor:
    """The first `count` usable images of the (unshuffled) dataset, centre-cropped: the same set at every step."""
    images = []
    for example in hf_dataset:
        image = decode_image(example[image_column])
        if image is not None and not (small_image_policy == "skip" and is_too_small(image, resolution)):
            images.append(resize_and_crop(image, resolution))
        if len(images) == count:
            break
    if not images:
        extra = f" of at least {resolution}x{resolution} pixels" if small_image_policy == "skip" else ""
        raise BadDataError(f"The dataset holds no readable image{extra} (every file was skipped as unreadable).")
    return torch.stack(images)  # (N, 3, R, R)


def image_training_data(args: argparse.Namespace, accelerator) -> tuple:
    """The data of a script that trains on images (train_dito.py, distill_dito.py): the prepared dataset, the
    training dataset (map-style, or `--streaming`), its epoch sampler (None when streaming), the data loader of
    (3, --resolution, --resolution) `pixel_values`, and the fixed validation images (main process; else None)."""
    with accelerator.main_process_first():  # the main process prepares the datasets cache, the others reuse it
        hf_dataset = load_hf_dataset(args)
    validation_images = None
    if accelerator.is_main_process and args.validation_steps is not None:
        validation_images = load_validation_images(
            hf_dataset, args.image_column, args.num_validation_images, args.resolution, args.small_image_policy
        )
    dataset_args = (args.image_column, args.resolution, args.random_flip, args.seed)
    policy = {"small_image_policy": args.small_image_policy}
    if args.streaming:
        hf_stream = hf_dataset.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer_size)
        train_dataset, sampler = StreamingImageDataset(hf_stream, *dataset_args, **policy), None
    else:
        train_dataset = ImageDataset(hf_dataset, *dataset_args, **policy)
        sampler = EpochShuffleSampler(len(train_dataset), args.seed)
    shape = (3, args.resolution, args.resolution)
    train_dataloader = training_dataloader(train_dataset, sampler, args, key="pixel_values", shape=shape)
    return train_dataset, sampler, train_dataloader, validation_images
