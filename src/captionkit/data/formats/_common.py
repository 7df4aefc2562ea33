"""Helpers shared by the format readers: tolerant line decoding, JSON loading, split names and
grouping captions by image while reporting bad captions into a `Problems` collector."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captionkit.data.problems import (
    BAD_ENCODING,
    DUPLICATE_CAPTION,
    EMPTY_CAPTION,
    IMAGE_WITHOUT_CAPTION,
    MALFORMED_ROW,
    Problems,
)
from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError

# Split names as the various formats write them; `restval` is training data (Karpathy's own code
# trains on it) and `dev` is Flickr8k's name for the validation split.
SPLIT_ALIASES = {
    "train": "train",
    "restval": "train",
    "val": "val",
    "dev": "val",
    "test": "test",
}


def read_lines(path: Path, problems: Problems) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text without line end) for each line that is valid UTF-8.

    The file is decoded line by line so that one badly encoded line is reported as
    `bad_encoding` and skipped instead of making the whole file unreadable.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CaptionkitError(f"{path}: cannot read the file ({e.strerror})") from None
    for number, raw in enumerate(data.splitlines(), start=1):
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)  # written by Excel and some pandas exports
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.add(BAD_ENCODING, f"{path}:{number}", f"not valid UTF-8 (byte {e.start + 1})")


def first_line(path: Path) -> str:
    """The file's first line, decoded leniently; for format detection only."""
    try:
        with open(path, "rb") as f:
            raw = f.readline(65536)
    except OSError:
        return ""
    return raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")


def load_json(path: Path) -> Any:
    """Parse a JSON file; a broken file is fatal because nothing in it can be trusted."""
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CaptionkitError(f"{path}: not a valid JSON file ({e})") from None
    except RecursionError:
        raise CaptionkitError(f"{path}: not a usable JSON file (nested too deeply)") from None
    except OSError as e:
        raise CaptionkitError(f"{path}: cannot read the file ({e.strerror})") from None


def split_name(value: Any, problems: Problems, where: str) -> str:
    """Canonical split for a split value from a file; "" (no split) when empty or unknown."""
    text = str(value or "").strip().lower()
    if not text:
        return ""
    if text not in SPLIT_ALIASES:
        problems.add(MALFORMED_ROW, where, f"unknown split {value!r}; image left without a split")
        return ""
    return SPLIT_ALIASES[text]


class RecordCollector:
    """Groups captions by image in first-seen order and reports bad captions on the way.

    Empty captions and duplicate (image, caption) pairs are reported and skipped; images that end
    up without any caption are reported and dropped by `records()`.
    """

    def __init__(self, problems: Problems):
        self.problems = problems
        self._records: dict[str, ImageRecord] = {}
        self._where: dict[str, str] = {}  # where each image was first listed, for reports

    def add_image(self, image: str, where: str, split: str = "") -> ImageRecord:
        """Register an image (even before any caption); a conflicting split keeps the first."""
        record = self._records.get(image)
        if record is None:
            record = self._records[image] = ImageRecord(image, split)
            self._where[image] = where
        elif split and split != record.split:
            if record.split:
                detail = f"{image} is in split {split!r} here but {record.split!r} before"
                self.problems.add(MALFORMED_ROW, where, f"{detail}; kept {record.split!r}")
            else:
                record.split = split
        return record

    def add(self, image: str, caption: str, where: str, split: str = "") -> None:
        """Add one caption of an image (registering the image if new)."""
        record = self.add_image(image, where, split)
        caption = caption.strip()
        if not caption:
            self.problems.add(EMPTY_CAPTION, where, f"empty caption for {image}")
        elif caption in record.captions:
            self.problems.add(DUPLICATE_CAPTION, where, f"duplicate caption for {image}")
        else:
            record.captions.append(caption)

    def records(self) -> list[ImageRecord]:
        """The images that have at least one caption; the others are reported."""
        for image, record in self._records.items():
            if not record.captions:
                where = self._where[image]
                self.problems.add(IMAGE_WITHOUT_CAPTION, where, f"{image} has no usable caption")
        return [r for r in self._records.values() if r.captions]
