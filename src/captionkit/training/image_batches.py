"""Batches of decoded images, for fine-tuning the encoder with the decoder.

A training item is one image with all its captions: the image is encoded once per step and its
features serve each of its captions (`image_index` says which image a caption belongs to), five
times fewer encoder passes than one item per caption. Images are decoded and augmented in
DataLoader worker processes. Validation items are images with their keys, preprocessed by the
encoder's own eval transform.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from captionkit.data.image_files import open_or_problem
from captionkit.training.feature_batches import (
    BucketBatchSampler,
    ResumableDataModule,
    derived_seed,
    token_array,
)


class CaptionedImages(Dataset):
    """Images decoded by `transform`, each with its captions' token ids (training; with their
    loss `weights`, if any) or its key (validation)."""

    def __init__(
        self,
        paths: list[Path],
        transform,
        tokens: list[list[list[int]]] | None = None,
        keys: list[str] | None = None,
        seed: int | None = None,
        weights: list[list[float]] | None = None,
    ):
        self.paths, self.transform, self.tokens, self.keys = paths, transform, tokens, keys
        self.seed, self.weights = seed, weights

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | None:
        """Item `index % len(self)`; with a `seed`, its random augmentation is drawn from a
        generator seeded by (seed, epoch = index // len(self), image), see `EpochIndices`."""
        epoch, i = divmod(index, len(self.paths))
        image, problem = open_or_problem(self.paths[i])
        if image is None:
            # The feature pass before training checked every image: this one broke since. Skip
            # it rather than stop a long run.
            print(f"warning: {self.paths[i]}: {problem[1]}; skipped", file=sys.stderr)
            return None
        if self.seed is None:
            pixels = self.transform(image)  # [3, H, W]
        else:
            # torchvision draws from the global generator: fork it so nothing else is disturbed.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived_seed(self.seed, epoch, i))
                pixels = self.transform(image)
        return {
            "pixels": pixels,
            "tokens": self.tokens[i] if self.tokens is not None else None,
            "key": self.keys[i] if self.keys is not None else None,
            "weights": self.weights[i] if self.weights is not None else None,
        }


def collate_images(items: list[dict | None]) -> dict:
    """`images [I, 3, H, W]`, then `tokens [C, T]` (padded to the longest caption) and
    `image_index [C]` (and `weights [C]`, if the captions have any) for training items, or `keys`
    for validation items."""
    items = [x for x in items if x is not None]
    if not items:
        return {"images": None}
    batch = {"images": torch.stack([x["pixels"] for x in items])}
    if items[0]["tokens"] is not None:
        tokens = [t for x in items for t in x["tokens"]]
        batch["tokens"] = torch.from_numpy(token_array(tokens).astype(np.int64))
        batch["image_index"] = torch.tensor([j for j, x in enumerate(items) for _ in x["tokens"]])
        if items[0]["weights"] is not None:
            batch["weights"] = torch.tensor([w for x in items for w in x["weights"]])
    else:
        batch["keys"] = [x["key"] for x in items]
    return batch


class ImageDataModule(ResumableDataModule):
    """Shuffled batches of training images (seeded, new order every epoch) and validation
    images, decoded by `workers` processes."""

    def __init__(
        self,
        train: CaptionedImages,
        val: CaptionedImages,
        images_per_batch: int,
        seed: int,
        workers: int,
    ):
        super().__init__()
        self.train, self.val, self.images_per_batch = train, val, images_per_batch
        self.seed, self.workers = seed, workers

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            collate_fn=collate_images,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        # Equal lengths and pools of one batch: plain shuffled batches.
        sampler = self._train_sampler(
            np.zeros(len(self.train)), self.images_per_batch, self.seed, 1
        )
        return self._loader(self.train, batch_sampler=EpochIndices(sampler, len(self.train)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, batch_size=32, sampler=self._val_sampler(self.val))


class EpochIndices(Sampler[list[int]]):
    """The batches of `sampler` with each index `i` sent as `epoch * n + i`, so that the
    dataset (in a worker process that never sees `set_epoch`) can seed an image's augmentation
    by epoch and image: the same crops after a resume as in an uninterrupted run."""

    def __init__(self, sampler: BucketBatchSampler, n: int):
        self.sampler, self.n = sampler, n

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.sampler.epoch  # read after the sampler's own resume/set_epoch
        batches = iter(self.sampler)
        return ([epoch * self.n + i for i in b] for b in batches)

    def __len__(self) -> int:
        return len(self.sampler)
