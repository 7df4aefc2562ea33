"""Kaggle-style `captions.txt`: a CSV with header `image,caption`, one row per caption."""

from __future__ import annotations

import csv
from pathlib import Path

from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError

REQUIRED_COLUMNS = ("image", "caption")


def looks_like(path: Path) -> bool:
    """True when the file's first line is a CSV header naming `image` and `caption`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = next(csv.reader([f.readline()]), [])
    except OSError:
        return False
    return all(c in [h.strip() for h in header] for c in REQUIRED_COLUMNS)


def read(path: Path) -> list[ImageRecord]:
    """Read the CSV; images keep the order of their first caption. Splits are left empty."""
    by_image: dict[str, ImageRecord] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        fields = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in fields]
        if missing:
            raise CaptionkitError(f"{path}: missing column(s) {', '.join(missing)} in the header")
        reader.fieldnames = fields
        for row in reader:
            image, caption = (row.get("image") or "").strip(), (row.get("caption") or "").strip()
            if not image or not caption:
                continue
            by_image.setdefault(image, ImageRecord(image, split="")).captions.append(caption)
    return list(by_image.values())
