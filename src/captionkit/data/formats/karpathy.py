"""Karpathy split files (`dataset_flickr8k.json`, `dataset_coco.json`, ...).

Each entry of `images` has a `filename`, a `split` and `sentences[].raw`; COCO entries also have a
`filepath` sub-folder. `restval` is counted as training data, as in Karpathy's own code.
"""

from __future__ import annotations

import json
from pathlib import Path

from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError

SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def looks_like(path: Path) -> bool:
    """True for a `.json` file whose name starts with `dataset_`."""
    return path.suffix == ".json" and path.name.startswith("dataset_")


def read(path: Path) -> list[ImageRecord]:
    """Read all images with their split and raw captions."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CaptionkitError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionkitError(f"{path}: expected a Karpathy split file with an 'images' list")
    records = []
    for entry in data["images"]:
        filename = entry.get("filename")
        if not filename:
            continue
        if entry.get("filepath"):
            filename = f"{entry['filepath']}/{filename}"
        split = SPLIT_NAMES.get(entry.get("split", ""), "")
        captions = [s.get("raw", "").strip() for s in entry.get("sentences", [])]
        records.append(ImageRecord(filename, split, [c for c in captions if c]))
    return records
