"""Batches for training and validation, read from the feature store.

Training batches are built a whole batch at a time (`__getitems__`): features come from the
memory-mapped store, token ids from a padded memory-mapped array, and captions of similar length
are batched together so that little time goes into padding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from captionkit.data.files import write_atomically
from captionkit.data.vocab import Vocabulary
from captionkit.encoders.features import FeatureStore
from captionkit.errors import CaptionkitError


def derived_seed(*parts: int) -> int:
    """A seed mixed from `parts` (e.g. run seed, epoch, batch): nearby inputs give unrelated
    streams, which `seed + epoch` would not."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def _rows_to_tensor(array: np.ndarray | None, rows) -> torch.Tensor | None:
    if array is None:
        return None
    rows = np.asarray(rows)
    order = np.argsort(rows)  # memory maps read fastest in file order
    out = np.empty((len(rows), *array.shape[1:]), dtype=np.float32)
    out[order] = array[rows[order]]
    return torch.from_numpy(out)


def token_array(tokens: list[list[int]], path: Path | None = None) -> np.ndarray:
    """Token ids padded to one width (int32), saved to `path` and memory-mapped when given."""
    width = max(map(len, tokens))
    array = np.full((len(tokens), width), Vocabulary.pad_id, dtype=np.int32)
    for i, t in enumerate(tokens):
        array[i, : len(t)] = t
    if path is None:
        return array
    # Written aside and renamed: another DDP process may have the old file memory-mapped. Every
    # rank writes its own copy, and under torchrun or SLURM a rank may get here before rank 0 has
    # made the run folder (or, on another machine, without it).
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, array)

    write_atomically(path, save)
    return np.load(path, mmap_mode="r")


class CaptionPairs(Dataset):
    """One item per (image, caption): the image's features and the caption's token ids.

    With `views` (a feature store of augmented views and the row of each caption's image in it,
    see `encoders.views`), every epoch reads each image's features from one of its views or from
    `store`, drawn uniformly per image, seeded by (`seed`, epoch): all the captions of an image
    see the same view in an epoch, and a resumed run draws what the uninterrupted one drew.

    With `group_images` (batches of whole images, `ImageBatchSampler`), a batch holds the
    features of each of its images once and `image_index` [B], the image of each caption.

    With `weights` (one per caption), batches carry them as `weights` [B] (the loss's)."""

    def __init__(
        self,
        store: FeatureStore,
        rows: list[int],
        tokens: list[list[int]],
        use_grid: bool,
        token_file: Path | None = None,
        views: list[tuple[FeatureStore, list[int]]] = (),
        seed: int = 0,
        group_images: bool = False,
        weights: list[float] | None = None,
    ):
        self.store, self.use_grid, self.group_images = store, use_grid, group_images
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float32)
        self.rows = np.asarray(rows)
        self.tokens = token_array(tokens, token_file)
        self.lengths = np.array([len(t) for t in tokens])
        self.sources = [(store, self.rows), *((s, np.asarray(r)) for s, r in views)]
        self.seed, self.source = seed, np.zeros(len(self.rows), dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Draw the epoch's view of every image (nothing to draw without views)."""
        if len(self.sources) == 1:
            return
        images, image_of = np.unique(self.rows, return_inverse=True)
        rng = np.random.default_rng([self.seed, epoch, 7])  # 7: apart from the batch order's
        self.source = rng.integers(0, len(self.sources), len(images))[image_of]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def _features(self, array_name: str, indices: np.ndarray) -> torch.Tensor:
        """Features [B, ...] of the captions `indices`, each from its image's source this epoch."""
        if len(self.sources) == 1:
            return _rows_to_tensor(getattr(self.store, array_name), self.rows[indices])
        out = None
        for k, (store, rows) in enumerate(self.sources):
            mine = np.flatnonzero(self.source[indices] == k)
            if len(mine):
                part = _rows_to_tensor(getattr(store, array_name), rows[indices[mine]])
                if out is None:
                    out = part.new_empty((len(indices), *part.shape[1:]))
                out[mine] = part
        return out

    def __getitems__(self, indices: list[int]) -> dict:
        """A whole batch at once: one read per array instead of one per caption."""
        indices = np.asarray(indices)
        width = int(self.lengths[indices].max())
        batch = {"tokens": torch.from_numpy(np.array(self.tokens[indices, :width], dtype=np.int64))}
        read = indices  # the captions whose image's features are read
        if self.group_images:
            _, first, image_index = np.unique(
                self.rows[indices], return_index=True, return_inverse=True
            )
            read, batch["image_index"] = indices[first], torch.from_numpy(image_index.ravel())
        batch["pooled"] = self._features("pooled", read)
        batch["grid"] = self._features("grid", read) if self.use_grid else None
        if self.weights is not None:
            batch["weights"] = self.weights[torch.from_numpy(indices)]
        return batch


def _whole_batch(batch: dict) -> dict:
    return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of captions of similar length, different every epoch, seeded.

    Indices are shuffled, cut into pools of `pool_batches` batches, sorted by length inside each
    pool and cut into batches; the batches are then shuffled. `pool_batches=1` gives plain
    shuffled batches. `set_epoch` (called by Lightning) changes the order every epoch,
    deterministically. Under DDP every rank draws the same global batches of `batch_size x world`
    indices and takes its own share, so the global batches do not depend on the number of
    processes. `resume_at` makes the next pass start in the middle of an epoch."""

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        pool_batches: int = 50,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        self.lengths, self.batch_size, self.seed = np.asarray(lengths), batch_size, seed
        self.pool, self.drop_last, self.epoch = pool_batches * batch_size * world, drop_last, 0
        self.rank, self.world, self.skip = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start the next pass at batch `batches_done` of epoch `epoch`. Lightning builds the
        first iterator of a resumed run before it calls `set_epoch`, so the epoch is set here."""
        self.epoch, self.skip = epoch, batches_done

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.world
        batches = []
        for start in range(0, len(order), self.pool):
            pool = order[start : start + self.pool]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + size] for i in range(0, len(pool), size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == size]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return [np.array_split(b, self.world)[self.rank] for b in batches]

    def __iter__(self):
        batches, self.skip = self._batches()[self.skip :], 0
        return (b.tolist() for b in batches)

    def __len__(self) -> int:
        return len(self._batches())


class ImageBatchSampler(BucketBatchSampler):
    """Shuffled batches of whole images: all the captions of an image in one batch, `batch_size`
    images a batch (under DDP, `batch_size x world` images a global batch, each rank its share
    of them). Seeded, different every epoch and resumable, as `BucketBatchSampler`."""

    def __init__(
        self,
        image_of: np.ndarray,
        batch_size: int,
        seed: int,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        image_of = np.asarray(image_of)
        super().__init__(np.zeros(len(image_of)), batch_size, seed, 1, drop_last, rank, world)
        order = np.argsort(image_of, kind="stable")
        _, starts = np.unique(image_of[order], return_index=True)
        self.members = np.split(order, starts[1:])  # the item indices of each image

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        images, size = rng.permutation(len(self.members)), self.batch_size * self.world
        batches = [images[i : i + size] for i in range(0, len(images), size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == size]
        shares = [np.array_split(b, self.world)[self.rank] for b in batches]
        return [np.concatenate([self.members[i] for i in share]) for share in shares]


class ImageRows(Dataset):
    """One item per image: its features and its key (for matching references). Also SCST's
    training set, whose batches are images."""

    def __init__(self, store: FeatureStore, rows: list[int], keys: list[str], use_grid: bool):
        self.store, self.rows, self.keys, self.use_grid = store, rows, keys, use_grid
        # Images have no caption length: the batch sampler makes plain shuffled batches of them.
        self.lengths = np.zeros(len(rows), dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Images are always read as they are (see `CaptionPairs.set_epoch`)."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> dict:
        rows = [self.rows[i] for i in indices]
        return {
            "pooled": _rows_to_tensor(self.store.pooled, rows),
            "grid": _rows_to_tensor(self.store.grid, rows) if self.use_grid else None,
            "keys": [self.keys[i] for i in indices],
        }

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])


class ResumableDataModule(L.LightningDataModule):
    """What both training data modules share: the process's share of the data under DDP, and
    the position to resume from (set by `training.train.DataPosition` from a checkpoint)."""

    resume: tuple[int, int] | None = None
    """(epoch, batches already trained in it) of the run being resumed."""

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every training epoch (by `callbacks.DataPosition`)."""

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _train_sampler(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        pool_batches: int,
        image_of: np.ndarray | None = None,
    ) -> BucketBatchSampler:
        """Batches of `batch_size` items, or with `image_of` (each item's image) of `batch_size`
        whole images."""
        rank, world = self._rank_world()
        n = len(lengths) if image_of is None else len(np.unique(image_of))
        what = "training items" if image_of is None else "training images"
        if world > 1 and n < batch_size * world:
            raise CaptionkitError(
                f"{n} {what} make no batch of {batch_size} for each "
                f"of {world} processes: use a smaller --batch-size"
            )
        # drop_last: a final batch of one caption would break BatchNorm in the image projection,
        # and under DDP every rank needs a share of every batch.
        drop_last = n > batch_size * world
        if image_of is None:
            sampler = BucketBatchSampler(
                lengths, batch_size, seed, pool_batches, drop_last, rank, world
            )
        else:
            sampler = ImageBatchSampler(image_of, batch_size, seed, drop_last, rank, world)
        if self.resume is not None:
            sampler.resume_at(*self.resume)
            self.resume = None
        return sampler

    def _val_sampler(self, dataset: Dataset) -> DistributedSampler | None:
        """Under DDP, each rank decodes its share of the validation images (the module gathers
        the captions before scoring)."""
        rank, world = self._rank_world()
        if world == 1:
            return None
        return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)


class CaptionDataModule(ResumableDataModule):
    """Shuffled (optionally length-bucketed) training batches and validation images; `train`
    holds captions (`CaptionPairs`) or, for SCST, images (`ImageRows`)."""

    def __init__(
        self,
        train: CaptionPairs | ImageRows,
        val: ImageRows,
        batch_size: int,
        seed: int,
        bucket_batches: int = 1,
    ):
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed
        self.bucket_batches = bucket_batches

    def set_epoch(self, epoch: int) -> None:
        self.train.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        if getattr(self.train, "group_images", False):
            if self.bucket_batches > 1:
                warnings.warn(
                    "train.group_images batches whole images, whatever their captions' "
                    f"lengths: bucket_batches {self.bucket_batches} does not apply",
                    stacklevel=1,
                )
            rows = self.train.rows  # a caption's store row identifies its image
            images_per_batch = max(1, round(self.batch_size * len(np.unique(rows)) / len(rows)))
            sampler = self._train_sampler(
                self.train.lengths, images_per_batch, self.seed, 1, image_of=rows
            )
        else:
            sampler = self._train_sampler(
                self.train.lengths, self.batch_size, self.seed, max(1, self.bucket_batches)
            )
        # A resumed run fetches its first batches before `set_epoch` is called: the sampler
        # already knows the epoch (`resume_at`).
        self.train.set_epoch(sampler.epoch)
        return DataLoader(self.train, batch_sampler=sampler, collate_fn=_whole_batch)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val, batch_size=64, collate_fn=_whole_batch, sampler=self._val_sampler(self.val)
        )
