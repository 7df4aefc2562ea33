"""Reading caption datasets: format detection and one small module per format.

`load_dataset` takes what a user passes as `--data`: a folder (the format is detected from the
files in it and in an `annotations/` sub-folder) or an annotation file. Images are looked for
beside the annotations unless `--images` says where they are.

Formats, in the order detection prefers them (files that carry splits first):

- `karpathy`: `dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`;
- `coco`: `captions_train2014.json` / `captions_val2014.json` (and 2017);
- `flickr8k_token`: `Flickr8k.token.txt` with the `Flickr_8k.*Images.txt` split lists;
- `kaggle_csv`: `captions.txt` (Kaggle Flickr8k), `results.csv` (Kaggle Flickr30k, `|`-separated),
  `captions.csv` (with an optional `split` column);
- `jsonl`: `captions.jsonl`, one `{"image", "caption", "split"?}` object per line.

Bad captions are reported into a `Problems` collector and skipped; only a file that cannot be read
at all (broken JSON, a missing column) or that leaves nothing usable is an error.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

from captionkit.data.formats import coco, flickr8k_token, jsonl_captions, kaggle_csv, karpathy
from captionkit.data.formats._common import load_json
from captionkit.data.problems import UNSAFE_IMAGE_PATH, Problems
from captionkit.data.records import SPLITS, CaptionDataset, ImageRecord
from captionkit.errors import CaptionkitError

# Checked in this order: a file with splits beats a bare caption list, because it carries them.
FORMATS = {
    "karpathy": karpathy,
    "coco": coco,
    "flickr8k_token": flickr8k_token,
    "kaggle_csv": kaggle_csv,
    "jsonl": jsonl_captions,
}
IMAGE_FOLDERS = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
KNOWN_FILES = (
    "a Karpathy dataset_*.json, a COCO captions_*.json, Flickr8k.token.txt, "
    "a captions.txt/captions.csv/results.csv with image and caption columns, or a .jsonl file"
)


def detect_format(path: Path) -> tuple[str, Path]:
    """Return (format name, annotation file) for a folder or a file.

    For a folder holding several COCO annotation files the "file" is that folder: all are read.
    """
    if not path.exists():
        raise CaptionkitError(f"{path}: no such file or folder")
    candidates = _candidates(path)
    for name, module in FORMATS.items():
        for candidate in candidates:
            if not module.looks_like(candidate):
                continue
            if name == "coco" and path.is_dir():
                several = len(coco.annotation_files(candidate.parent)) > 1
                return name, candidate.parent if several else candidate
            return name, candidate
    raise CaptionkitError(f"{path}: unknown dataset format (expected {KNOWN_FILES})")


def unsafe_name_reason(filename: str) -> str | None:
    """Why an image file name from an annotation file may not be used (None: it may): it must
    be a relative path inside the image folder, so that no annotation file can make captionkit
    read a file elsewhere."""
    if not filename or "\x00" in filename:
        return "an empty name or a NUL byte"
    path = PurePosixPath(filename.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(filename).drive:
        return "an absolute path"
    if ".." in path.parts:
        return "a '..' that leaves the image folder"
    return None


def _safe_name(filename, annotation: Path, problems: Problems) -> bool:
    reason = unsafe_name_reason(filename) if isinstance(filename, str) else "not a string"
    if reason is not None:
        problems.add(UNSAFE_IMAGE_PATH, annotation, f"image {filename!r}: {reason}: skipped")
    return reason is None


def find_image_root(annotation: Path, records: list[ImageRecord]) -> Path:
    """The folder beside the annotations that holds the first listed image.

    `annotation` may also be a folder of annotation files. Annotations in an `annotations/`
    folder (the COCO layout) have their images beside that folder.
    """
    base = annotation if annotation.is_dir() else annotation.parent
    bases = [base, base.parent] if base.name == "annotations" else [base]
    for folder in (base / f for base in bases for f in (*IMAGE_FOLDERS, ".")):
        if records and (folder / records[0].filename).is_file():
            return folder
    for folder in (base / f for base in bases for f in IMAGE_FOLDERS):
        if folder.is_dir():
            return folder
    return bases[-1]


def assign_splits(
    records: list[ImageRecord], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> None:
    """Give records without a split a deterministic train/val/test split by image.

    `fractions` is (train, val, test); val and test get their share (at least one image each
    when their fraction is not zero, so that tiny datasets can still be evaluated), train the rest.
    """
    if len(fractions) != 3 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three numbers >= 0, got {fractions}")
    todo = sorted((r for r in records if not r.split), key=lambda r: r.filename)
    random.Random(seed).shuffle(todo)
    n_val, n_test = (max(1, round(f * len(todo))) if f > 0 else 0 for f in fractions[1:])
    for i, record in enumerate(todo):
        record.split = "val" if i < n_val else "test" if i < n_val + n_test else "train"


def load_dataset(
    data: str | Path,
    images: str | Path | None = None,
    problems: Problems | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> CaptionDataset:
    """Read a caption dataset from a folder or an annotation file.

    Bad captions are reported into `problems` (a fresh collector when None), which the returned
    dataset keeps. Images without a split from the file get one from `assign_splits` with
    `split_fractions` and `split_seed` (COCO val images: half val, half test; see `coco`).
    """
    problems = problems if problems is not None else Problems()
    fmt, annotation = detect_format(Path(data))
    records = [
        r
        for r in FORMATS[fmt].read(annotation, problems)
        if r.captions and _safe_name(r.filename, annotation, problems)
    ]
    if not records:
        reason = f" ({problems.summary()})" if problems.items else ""
        raise CaptionkitError(f"{annotation}: no image with a caption found{reason}")
    root = Path(images) if images is not None else find_image_root(annotation, records)
    if not root.is_dir():
        raise CaptionkitError(f"{root}: image folder not found")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in _first_files(root)):
        raise CaptionkitError(f"{root}: no images found in the image folder")
    if fmt == "coco":  # file names change here (`train2014/` dropped): check them again
        coco.fit_to_root(records, root)
        records = [r for r in records if _safe_name(r.filename, annotation, problems)]
        if not records:
            reason = problems.summary()
            raise CaptionkitError(f"{annotation}: no image with a usable name ({reason})")
    fractions = coco.UNSPLIT_FRACTIONS if fmt == "coco" else split_fractions
    assign_splits(records, fractions, split_seed)
    assert all(r.split in SPLITS for r in records)
    return CaptionDataset(
        name=_dataset_name(fmt, annotation),
        image_root=root.resolve(),
        records=records,
        source=annotation,
        problems=problems,
    )


def write_splits(dataset: CaptionDataset, path: Path) -> None:
    """Write {image file: split} as JSON, so that a later evaluation reuses exactly this split."""
    splits = {r.filename: r.split for r in dataset.records}
    Path(path).write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")


def apply_splits(dataset: CaptionDataset, path: Path) -> int:
    """Override splits from a `write_splits` file; images not in it keep theirs.

    Returns the number of the dataset's images that the file named.
    """
    splits = load_json(Path(path))
    if not isinstance(splits, dict) or any(s not in SPLITS for s in splits.values()):
        raise CaptionkitError(f"{path}: expected a JSON object {{image file: train|val|test}}")
    matched = 0
    for record in dataset.records:
        if record.filename in splits:
            record.split = splits[record.filename]
            matched += 1
    return matched


def _candidates(path: Path) -> list[Path]:
    """The files that may be annotations: the file itself, or those in the folder and in its
    `annotations/` sub-folder (where COCO keeps them)."""
    if not path.is_dir():
        return [path]
    folders = [path, path / "annotations"]
    return [f for d in folders if d.is_dir() for f in sorted(d.iterdir()) if f.is_file()]


def _dataset_name(fmt: str, annotation: Path) -> str:
    """Dataset name for reports: from the Karpathy file name, else from the folder."""
    if fmt == "karpathy":
        return annotation.stem.removeprefix("dataset_")
    if fmt == "coco":
        return "coco"
    return annotation.parent.name


def _first_files(root: Path, limit: int = 1000) -> list[Path]:
    """Up to `limit` files below `root`, enough to tell whether it holds images."""
    found = []
    for path in root.rglob("*"):
        found.append(path)
        if len(found) >= limit:
            break
    return found
