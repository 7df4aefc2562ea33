"""The in-memory form of a caption dataset, whatever file format it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from captionkit.data.problems import Problems

SPLITS = ("train", "val", "test")


@dataclass
class ImageRecord:
    """One image and its reference captions."""

    filename: str
    """Path of the image relative to the dataset's image root."""
    split: str
    """One of `train`, `val`, `test`."""
    captions: list[str] = field(default_factory=list)
    """Reference captions as written in the source file."""


@dataclass
class CaptionDataset:
    """Images with reference captions and a split for each image."""

    name: str
    """Dataset name, e.g. `flickr8k` (used in reports only)."""
    image_root: Path
    """Folder that the records' file names are relative to."""
    records: list[ImageRecord]
    """One record per image, in file order."""
    source: Path | None = None
    """The annotation file the records were read from."""
    problems: Problems = field(default_factory=Problems)
    """Bad input found while reading (and later while extracting features), reported and skipped."""

    def split(self, name: str) -> list[ImageRecord]:
        """Records of one split; `train` includes nothing else."""
        return [r for r in self.records if r.split == name]

    def path(self, record: ImageRecord) -> Path:
        """Absolute path of a record's image."""
        return self.image_root / record.filename

    def split_sizes(self) -> dict[str, int]:
        """Number of images per split, in the order train, val, test."""
        return {s: sum(r.split == s for r in self.records) for s in SPLITS}

    def num_captions(self) -> int:
        """Total number of reference captions."""
        return sum(len(r.captions) for r in self.records)
