"""The feature store: encoder outputs for every image, extracted once and cached on disk.

A store is a folder `<cache_dir>/<encoder>-<key>/` holding `pooled.npy` `[N, D]` and `grid.npy`
`[N, L, D]` (float16, memory-mapped when read) and `index.json` (image path -> row, and the images
that could not be read). The key hashes the encoder's fingerprint (name, weights, preprocessing) and
every image's path, size and mtime, so another encoder or a changed image never reads stale
features. The folder is written under a temporary name and renamed when complete, so an
interrupted extraction never leaves a store that is later trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from captionkit.encoders.factory import ImageEncoder
from captionkit.errors import CaptionkitError


def default_cache_dir() -> Path:
    """`$CAPTIONKIT_CACHE`, else `~/.cache/captionkit`."""
    return Path(os.environ.get("CAPTIONKIT_CACHE", Path.home() / ".cache" / "captionkit"))


def load_image(path: Path) -> Image.Image:
    """Open an image as RGB with its EXIF rotation applied (OSError/ValueError if unreadable)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


class ImageFiles(Dataset):
    """Decoded, preprocessed images; an unreadable file yields its error message instead."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            return i, self.transform(load_image(self.paths[i])), ""
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    ok = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, err) for i, x, err in items if x is None]
    images = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], images, failed


@dataclass
class FeatureStore:
    """Cached features of a set of images; rows follow `paths`."""

    folder: Path
    paths: list[str]
    pooled: np.ndarray
    grid: np.ndarray | None
    failed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.row = {p: i for i, p in enumerate(self.paths)}

    def has(self, path: Path | str) -> bool:
        """True when the image was read and its features are in the store."""
        key = str(Path(path).resolve())
        return key in self.row and key not in self.failed

    def rows(self, paths: list[Path]) -> list[int]:
        """Row numbers of image files (as given to `extract_features`, in any relative form)."""
        return [self.row[str(Path(p).resolve())] for p in paths]

    @classmethod
    def open(cls, folder: Path) -> FeatureStore:
        index = json.loads((folder / "index.json").read_text())
        grid = np.load(folder / "grid.npy", mmap_mode="r") if index["grid"] else None
        pooled = np.load(folder / "pooled.npy", mmap_mode="r")
        return cls(folder, index["paths"], pooled, grid, index["failed"])


def store_key(encoder: ImageEncoder, paths: list[Path], grid: bool) -> str:
    """Hash of the encoder fingerprint and each image's path, size and mtime."""
    h = hashlib.sha256(f"{encoder.fingerprint()}|grid={grid}".encode())
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


def extract_features(
    encoder: ImageEncoder,
    paths: list[Path],
    cache_dir: Path | None = None,
    grid: bool = True,
    batch_size: int = 32,
    num_workers: int = 1,
) -> FeatureStore:
    """Features of `paths`, from the cache when it holds them, else extracted and cached."""
    paths = [Path(p).resolve() for p in paths]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / f"{encoder.name}-{store_key(encoder, paths, grid)}"
    if (folder / "index.json").is_file():
        return FeatureStore.open(folder)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        failed = _extract_into(tmp, encoder, paths, grid, batch_size, num_workers)
        index = {"paths": [str(p) for p in paths], "grid": grid, "failed": failed}
        index["encoder"] = encoder.spec()
        (tmp / "index.json").write_text(json.dumps(index))
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete store left by hand
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return FeatureStore.open(folder)


@torch.inference_mode()
def _extract_into(folder, encoder, paths, grid, batch_size, num_workers) -> dict[str, str]:
    # channels_last runs the depthwise convolutions of EfficientNet-style CNNs ~1.6x faster on CPU.
    encoder = encoder.to(memory_format=torch.channels_last)
    n_tokens = _grid_length(encoder)
    pooled = np.lib.format.open_memmap(
        folder / "pooled.npy", mode="w+", dtype=np.float16, shape=(len(paths), encoder.feature_dim)
    )
    grid_shape = (len(paths) if grid else 0, n_tokens, encoder.feature_dim)
    grid_out = np.lib.format.open_memmap(
        folder / "grid.npy", mode="w+", dtype=np.float16, shape=grid_shape
    )
    loader = DataLoader(
        ImageFiles(paths, encoder.transform()),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    failed: dict[str, str] = {}
    for rows, images, errors in tqdm(loader, desc=f"features ({encoder.name})", unit="batch"):
        for i, err in errors:
            failed[str(paths[i])] = err
            warnings.warn(f"{paths[i]}: cannot read image ({err}); skipped", stacklevel=1)
        if images is None:
            continue
        p, g = encoder(images.contiguous(memory_format=torch.channels_last))
        pooled[rows] = p.float().numpy()
        if grid:
            grid_out[rows] = g.float().numpy()
    pooled.flush()
    grid_out.flush()
    return failed


def _grid_length(encoder: ImageEncoder) -> int:
    size = encoder.data_config["input_size"]
    with torch.inference_mode():
        _, g = encoder(torch.zeros(1, *size))
    return g.shape[1]


def features_for_dataset(dataset, encoder: ImageEncoder, cache_dir: Path | None = None):
    """Features of every image of a `CaptionDataset` (all splits, so training and evaluation share
    one store), and the records whose image could be read."""
    store = extract_features(encoder, [dataset.path(r) for r in dataset.records], cache_dir)
    usable = [r for r in dataset.records if store.has(dataset.path(r))]
    if not usable:
        raise CaptionkitError(f"{dataset.image_root}: none of the dataset's images could be read")
    if len(usable) < len(dataset.records):
        print(f"skipped {len(dataset.records) - len(usable)} unreadable images (see warnings)")
    return store, usable
