"""Training data: a streamed epoch with dataloader workers."""

import argparse

import datasets
import numpy as np
import PIL.Image
import pytest

from diffusers_dito.training.data import StreamingImageDataset, training_dataloader


def constant_images(count: int, size: int = 8) -> list[PIL.Image.Image]:
    """Image i is uniformly grey level 10·i, so a sample tells which image it came from."""
    return [PIL.Image.fromarray(np.full((size, size, 3), 10 * i, np.uint8)) for i in range(count)]


@pytest.mark.parametrize("num_shards, workers", [(1, 2), (3, 2), (4, 0)])
def test_a_streamed_epoch_reads_every_image_once_whatever_the_workers(num_shards, workers):
    hf = datasets.Dataset.from_dict({"image": constant_images(12)}, features=datasets.Features(image=datasets.Image()))
    stream = hf.cast_column("image", datasets.Image(decode=False)).to_iterable_dataset(num_shards=num_shards)
    dataset = StreamingImageDataset(stream.shuffle(seed=0, buffer_size=4), "image", 8, False, 0)
    dataset.set_epoch(1)
    args = argparse.Namespace(train_batch_size=2, dataloader_num_workers=workers)
    batches = list(training_dataloader(dataset, None, args, key="pixel_values", shape=(3, 8, 8)))
    images = [round(float((b + 1) * 127.5 / 10)) for batch in batches for b in batch["pixel_values"].mean((1, 2, 3))]
    ids = [int(i) for batch in batches for i in batch["index"]]
    assert sorted(images) == list(range(12))  # every image once: none lost, none twice
    assert len(set(ids)) == len(ids)  # distinct sample ids: distinct augmentation and noise seeds
