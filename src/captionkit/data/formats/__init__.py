"""Reading caption datasets: format detection and one small module per format.

`load_dataset` takes what a user passes as `--data`: a folder (the format is detected from the
files in it) or an annotation file. Images are looked for beside the annotations unless `--images`
says where they are.
"""

from __future__ import annotations

import random
from pathlib import Path

from captionkit.data.formats import kaggle_csv, karpathy
from captionkit.data.records import SPLITS, CaptionDataset, ImageRecord
from captionkit.errors import CaptionkitError

# Checked in this order: a split file beats a bare caption list, because it carries the splits.
FORMATS = {"karpathy": karpathy, "kaggle_csv": kaggle_csv}
IMAGE_FOLDERS = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def detect_format(path: Path) -> tuple[str, Path]:
    """Return (format name, annotation file) for a folder or a file."""
    if not path.exists():
        raise CaptionkitError(f"{path}: no such file or folder")
    candidates = sorted(path.iterdir()) if path.is_dir() else [path]
    for name, module in FORMATS.items():
        for candidate in candidates:
            if candidate.is_file() and module.looks_like(candidate):
                return name, candidate
    known = "a Karpathy dataset_*.json or a captions.txt/CSV with columns image,caption"
    raise CaptionkitError(f"{path}: unknown dataset format (expected {known})")


def find_image_root(annotation: Path, records: list[ImageRecord]) -> Path:
    """The folder beside the annotations that holds the first listed image."""
    base = annotation.parent
    for folder in (*IMAGE_FOLDERS, "."):
        root = base / folder
        if records and (root / records[0].filename).is_file():
            return root
    for folder in IMAGE_FOLDERS:
        if (base / folder).is_dir():
            return base / folder
    return base


def assign_splits(records: list[ImageRecord], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> None:
    """Give records without a split a deterministic train/val/test split by image."""
    todo = sorted((r for r in records if not r.split), key=lambda r: r.filename)
    random.Random(seed).shuffle(todo)
    n_val, n_test = (max(1, round(f * len(todo))) for f in fractions[1:])
    for i, record in enumerate(todo):
        record.split = "val" if i < n_val else "test" if i < n_val + n_test else "train"


def load_dataset(data: str | Path, images: str | Path | None = None) -> CaptionDataset:
    """Read a caption dataset from a folder or an annotation file."""
    fmt, annotation = detect_format(Path(data))
    records = FORMATS[fmt].read(annotation)
    records = [r for r in records if r.captions]
    if not records:
        raise CaptionkitError(f"{annotation}: no image with a caption found")
    if any(not r.split for r in records):
        assign_splits(records)
    root = Path(images) if images is not None else find_image_root(annotation, records)
    if not root.is_dir():
        raise CaptionkitError(f"{root}: image folder not found")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in _first_files(root)):
        raise CaptionkitError(f"{root}: no images found in the image folder")
    name = annotation.stem.removeprefix("dataset_") if fmt == "karpathy" else annotation.parent.name
    assert all(r.split in SPLITS for r in records)
    return CaptionDataset(name=name, image_root=root.resolve(), records=records, source=annotation)


def _first_files(root: Path, limit: int = 1000) -> list[Path]:
    """Up to `limit` files below `root`, enough to tell whether it holds images."""
    found = []
    for path in root.rglob("*"):
        found.append(path)
        if len(found) >= limit:
            break
    return found
