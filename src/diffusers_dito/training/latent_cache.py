# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""Latents of a frozen DiTo, encoded once to disk so that a latent model trains without running the encoder.

Each image is centre-cropped and encoded twice, as is and flipped horizontally (DiT's only augmentation), and the
flip is chosen at training time with the same draw as `data.ImageDataset(random_crop=False)`: training from the
cache sees the same inputs as encoding on the fly. The folder holds

    shard-00000.latents.npy   float32 (n, 2, C, h, w): raw encoder latents of each image, then of its flip
    shard-00000.labels.npy    int64 (n,): class ids; -1 for an image that could not be read, -2 for one smaller than
                              the crop with --small_image_policy skip
    index.json                written last, so a cache without it is incomplete and is encoded again

Shard k holds the images [k·shard_size, (k+1)·shard_size) of the dataset, and each process encodes every
num_processes-th shard. Shards are memory-mapped, so the cache need not fit in memory. The index records what the
cache was made from (the VAE's weights, the data and the resolution); a later run with other settings stops with a
message instead of training on stale latents.
"""

import argparse
import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from .data import ImageDataset, collate_samples, seed_from
from .trained_weights import weights_digest

logger = get_logger(__name__, log_level="INFO")

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
UNREADABLE, TOO_SMALL = -1, -2  # the label of a sample that has no latents


def is_complete(folder: str | os.PathLike) -> bool:
    return (Path(folder) / INDEX_NAME).is_file()


def read_index(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / INDEX_NAME).read_text())


def fingerprint(args: argparse.Namespace, vae: torch.nn.Module) -> dict:
    """What the cached latents depend on."""
    return {
        "vae_weights_sha256": weights_digest(vae),
        "resolution": args.resolution,
        "data": os.path.abspath(args.train_data_dir) if args.train_data_dir is not None else args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "image_column": args.image_column,
        "label_column": args.label_column,
        "max_train_samples": args.max_train_samples,
        "small_image_policy": args.small_image_policy,
    }


def check_fingerprint(folder: str | os.PathLike, expected: dict) -> None:
    found = read_index(folder)["fingerprint"]
    changed = sorted(key for key in expected if found.get(key) != expected[key])
    if changed:
        raise ValueError(
            f"--cache_latents {folder} was made with other settings ({', '.join(changed)} differ): give a new folder, "
            "or delete this one to encode the data again."
        )


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)  # a shard is either complete or absent


@torch.no_grad()
def encode_shard(
    subset, vae: torch.nn.Module, latent_shape: tuple[int, ...], args: argparse.Namespace, accelerator: Accelerator
) -> tuple[np.ndarray, np.ndarray]:
    """The latents of `subset`'s images and of their flips, (n, 2, C, h, w), and their labels, (n,), where
    UNREADABLE or TOO_SMALL mark the images that could not be used."""
    resolution = args.resolution
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=args.train_batch_size,
        num_workers=args.dataloader_num_workers,
        collate_fn=functools.partial(collate_samples, key="pixel_values", shape=(3, resolution, resolution)),
    )
    latents = np.zeros((len(subset), 2, *latent_shape), dtype=np.float32)  # (n, 2, C, h, w)
    labels = np.full(len(subset), UNREADABLE, dtype=np.int64)  # (n,)
    row = 0
    for batch in loader:
        pixels = batch["pixel_values"].to(accelerator.device)  # (B, 3, R, R)
        with accelerator.autocast():
            z = vae.encode(torch.cat([pixels, pixels.flip(-1)])).latents.float().cpu()  # (2B, C, h, w)
        size = len(pixels)
        latents[row : row + size] = torch.stack([z[:size], z[size:]], dim=1).numpy()  # (B, 2, C, h, w)
        missing = torch.where(batch["too_small"], TOO_SMALL, UNREADABLE)  # (B,)
        labels[row : row + size] = torch.where(batch["valid"], batch["label"], missing).numpy()
        row += size
    return latents, labels


def write_cache(
    folder: str | os.PathLike,
    hf_dataset,
    vae: torch.nn.Module,
    class_names: list[str],
    cache_fingerprint: dict,
    args: argparse.Namespace,
    accelerator: Accelerator,
) -> None:
    """Encode the dataset into `folder` (every process its share of the shards), then write the index."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    resolution, shard_size = args.resolution, args.cache_shard_size
    dataset = ImageDataset(
        hf_dataset,
        args.image_column,
        resolution,
        False,
        0,
        label_column=args.label_column,
        random_crop=False,
        small_image_policy=args.small_image_policy,
    )
    latent_size = resolution // vae.downsample_factor
    latent_shape = (vae.config.latent_channels, latent_size, latent_size)
    num_shards = math.ceil(len(dataset) / shard_size)
    shards = range(accelerator.process_index, num_shards, accelerator.num_processes)
    logger.info(f"Encoding {len(dataset)} images and their flips into {folder} ({num_shards} shards)")
    for shard in tqdm(shards, desc="Caching latents", disable=not accelerator.is_local_main_process):
        indices = range(shard * shard_size, min((shard + 1) * shard_size, len(dataset)))
        latents, labels = encode_shard(torch.utils.data.Subset(dataset, indices), vae, latent_shape, args, accelerator)
        _save_npy(folder / f"shard-{shard:05d}.latents.npy", latents)
        _save_npy(folder / f"shard-{shard:05d}.labels.npy", labels)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        all_labels = np.concatenate([np.load(folder / f"shard-{k:05d}.labels.npy") for k in range(num_shards)])
        unreadable, too_small = int((all_labels == UNREADABLE).sum()), int((all_labels == TOO_SMALL).sum())
        index = {
            "format_version": FORMAT_VERSION,
            "num_samples": len(dataset),
            "shard_size": shard_size,
            "num_shards": num_shards,
            "latent_shape": list(latent_shape),
            "class_names": class_names,
            "unreadable_images": unreadable,
            "too_small_images": too_small,
            "fingerprint": cache_fingerprint,
        }
        tmp = folder / (INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        os.replace(tmp, folder / INDEX_NAME)
        logger.info(
            f"Wrote the latent cache {folder} ({len(dataset)} images, {unreadable} unreadable, {too_small} skipped as "
            "smaller than --resolution)"
        )
    accelerator.wait_for_everyone()


class CachedLatentDataset(torch.utils.data.Dataset):
    """Training samples from a latent cache: raw latents (C, h, w) of the image or of its flip, and the class id.

    The flip is drawn from (seed, epoch, index), exactly as `data.ImageDataset(random_crop=False)` draws it."""

    def __init__(self, folder: str | os.PathLike, random_flip: bool, seed: int):
        self.folder, self.index = Path(folder), read_index(folder)
        self.random_flip, self.seed, self.epoch = random_flip, seed, 0
        self._shards = {}  # memory-mapped on first use, in each process and dataloader worker

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.index["latent_shape"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.index["num_samples"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": {}}  # workers map the files themselves instead of receiving copies

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._shards:
            self._shards[shard] = tuple(
                np.load(self.folder / f"shard-{shard:05d}.{part}.npy", mmap_mode="r") for part in ("latents", "labels")
            )
        return self._shards[shard]

    def __getitem__(self, index: int) -> dict:
        shard, row = divmod(index, self.index["shard_size"])
        latents, labels = self._shard(shard)
        label = int(labels[row])
        if label < 0:  # an unreadable or skipped image: a zero-weight slot, like in the image datasets
            return {"index": index, "latents": None, "label": 0, "too_small": label == TOO_SMALL}
        rng = np.random.default_rng(seed_from(self.seed, self.epoch, index))
        flip = self.random_flip and rng.random() < 0.5
        return {"index": index, "latents": torch.from_numpy(np.array(latents[row, int(flip)])), "label": label}
