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

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from captionkit.data.images import open_or_problem
from captionkit.training.datamodule import BucketBatchSampler, token_array


class CaptionedImages(Dataset):
    """Images decoded by `transform`, each with its captions' token ids (training) or its key
    (validation)."""

    def __init__(self, paths: list[Path], transform, tokens: list[list[list[int]]] | None = None,
                 keys: list[str] | None = None):  # fmt: skip
        self.paths, self.transform, self.tokens, self.keys = paths, transform, tokens, keys

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict | None:
        image, problem = open_or_problem(self.paths[i])
        if image is None:
            # The feature pass before training checked every image: this one broke since. Skip
            # it rather than stop a long run.
            print(f"warning: {self.paths[i]}: {problem[1]}; skipped", file=sys.stderr)
            return None
        return {
            "pixels": self.transform(image),  # [3, H, W]
            "tokens": self.tokens[i] if self.tokens is not None else None,
            "key": self.keys[i] if self.keys is not None else None,
        }


def collate_images(items: list[dict | None]) -> dict:
    """`images [I, 3, H, W]`, then `tokens [C, T]` (padded to the longest caption) and
    `image_index [C]` for training items, or `keys` for validation items."""
    items = [x for x in items if x is not None]
    if not items:
        return {"images": None}
    batch = {"images": torch.stack([x["pixels"] for x in items])}
    if items[0]["tokens"] is not None:
        tokens = [t for x in items for t in x["tokens"]]
        batch["tokens"] = torch.from_numpy(token_array(tokens).astype(np.int64))
        batch["image_index"] = torch.tensor([j for j, x in enumerate(items) for _ in x["tokens"]])
    else:
        batch["keys"] = [x["key"] for x in items]
    return batch


class ImageDataModule(L.LightningDataModule):
    """Shuffled batches of training images (seeded, new order every epoch) and validation
    images, decoded by `workers` processes."""

    def __init__(self, train: CaptionedImages, val: CaptionedImages, images_per_batch: int,
                 seed: int, workers: int):  # fmt: skip
        super().__init__()
        self.train, self.val, self.images_per_batch = train, val, images_per_batch
        self.seed, self.workers = seed, workers

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, collate_fn=collate_images, num_workers=self.workers,
                          persistent_workers=self.workers > 0, **kwargs)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        n = len(self.train)
        # Equal lengths and pools of one batch: plain shuffled batches. drop_last: a final
        # batch of one image would leave BatchNorm one sample.
        batch = self.images_per_batch
        sampler = BucketBatchSampler(np.zeros(n), batch, self.seed, 1, drop_last=n > batch)
        return self._loader(self.train, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, batch_size=32)
