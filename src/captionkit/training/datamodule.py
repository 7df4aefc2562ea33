"""Batches for training and validation, read from the feature store."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from captionkit.data.vocab import Vocabulary
from captionkit.encoders.features import FeatureStore


def _features(store: FeatureStore, row: int, use_grid: bool):
    pooled = torch.from_numpy(np.asarray(store.pooled[row], dtype=np.float32))
    grid = torch.from_numpy(np.asarray(store.grid[row], dtype=np.float32)) if use_grid else None
    return pooled, grid


def _stack(tensors):
    return None if tensors[0] is None else torch.stack(tensors)


class CaptionPairs(Dataset):
    """One item per (image, caption): the image's features and the caption's token ids."""

    def __init__(self, store: FeatureStore, rows: list[int], tokens: list[list[int]], use_grid):
        self.store, self.rows, self.tokens, self.use_grid = store, rows, tokens, use_grid

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return (*_features(self.store, self.rows[i], self.use_grid), self.tokens[i])

    @staticmethod
    def collate(items) -> dict:
        pooled, grid, tokens = zip(*items)
        padded = torch.full((len(tokens), max(map(len, tokens))), Vocabulary.pad_id)
        for i, t in enumerate(tokens):
            padded[i, : len(t)] = torch.tensor(t)
        return {"pooled": torch.stack(pooled), "grid": _stack(grid), "tokens": padded}


class ImageRows(Dataset):
    """One item per image: its features and its key (for matching references)."""

    def __init__(self, store: FeatureStore, rows: list[int], keys: list[str], use_grid: bool):
        self.store, self.rows, self.keys, self.use_grid = store, rows, keys, use_grid

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return (*_features(self.store, self.rows[i], self.use_grid), self.keys[i])

    @staticmethod
    def collate(items) -> dict:
        pooled, grid, keys = zip(*items)
        return {"pooled": torch.stack(pooled), "grid": _stack(grid), "keys": list(keys)}


class CaptionDataModule(L.LightningDataModule):
    """Training pairs (shuffled, seeded) and validation images."""

    def __init__(self, train: CaptionPairs, val: ImageRows, batch_size: int, seed: int):
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        # drop_last: a final batch of one caption would break BatchNorm in the image projection.
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train) > self.batch_size,
                          collate_fn=CaptionPairs.collate, generator=generator)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=64, collate_fn=ImageRows.collate)
