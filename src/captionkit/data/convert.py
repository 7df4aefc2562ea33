"""Write a `CaptionDataset` in any of the caption formats that `load_dataset` reads.

Used to check the readers against each other (tests and `bench/check_formats.py`) and to hand a
dataset to tools that want one particular format. Only the annotations are written; the images
stay where they are, so load the result with `load_dataset(out_dir, images=dataset.image_root)`.

What each format keeps of the splits: `flickr8k_token` (split lists), `generic_csv`, `jsonl` and
`karpathy` keep all three; `coco` keeps train versus held-out (val and test images go to the val
file and are re-split on reading); `kaggle_csv` and `flickr30k_csv` keep none. Captions are
written on one line each (line breaks become spaces) because the line formats cannot hold them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from captionkit.data.formats.coco import SUB_FOLDER
from captionkit.data.ptb_tokenizer import tokenize
from captionkit.data.records import CaptionDataset, ImageRecord

SPLIT_LIST_NAMES = {"train": "trainImages", "val": "devImages", "test": "testImages"}


def write_dataset(
    dataset: CaptionDataset, out_dir: str | Path, fmt: str, coco_year: str = "2014"
) -> Path:
    """Write `dataset` in format `fmt` (one of `FORMATS`) into `out_dir`; returns `out_dir`.

    Use one folder per format: several annotation files in one folder make detection pick the one
    it prefers. `coco_year` names the COCO files (`captions_train<year>.json`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "coco":
        _write_coco(dataset.records, out, coco_year)
    else:
        FORMATS[fmt](dataset, out)
    return out


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _rows(records: list[ImageRecord]) -> list[tuple[str, str, str]]:
    """(image, caption, split) per caption, in record order."""
    return [(r.filename, _one_line(c), r.split) for r in records for c in r.captions]


def _write_flickr8k_token(dataset: CaptionDataset, out: Path) -> None:
    """`Flickr8k.token.txt` plus the three official split lists."""
    lines = [
        f"{r.filename}#{n}\t{_one_line(c)}\n"
        for r in dataset.records
        for n, c in enumerate(r.captions)
    ]
    (out / "Flickr8k.token.txt").write_text("".join(lines), encoding="utf-8")
    for split, list_name in SPLIT_LIST_NAMES.items():
        names = [f"{r.filename}\n" for r in dataset.records if r.split == split]
        (out / f"Flickr_8k.{list_name}.txt").write_text("".join(names), encoding="utf-8")


def _write_kaggle_csv(dataset: CaptionDataset, out: Path) -> None:
    """Kaggle Flickr8k `captions.txt`; the csv module quotes captions with commas or quotes."""
    with open(out / "captions.txt", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        writer.writerows((image, caption) for image, caption, _ in _rows(dataset.records))


def _write_flickr30k_csv(dataset: CaptionDataset, out: Path) -> None:
    """Kaggle Flickr30k `results.csv`: `|`-separated, a space after each `|`, no quoting."""
    lines = ["image_name| comment_number| comment\n"]
    for record in dataset.records:
        lines += [
            f"{record.filename}| {n}| {_one_line(c)}\n" for n, c in enumerate(record.captions)
        ]
    (out / "results.csv").write_text("".join(lines), encoding="utf-8")


def _write_generic_csv(dataset: CaptionDataset, out: Path) -> None:
    """`captions.csv` with columns image, caption, split."""
    with open(out / "captions.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption", "split"])
        writer.writerows(_rows(dataset.records))


def _write_jsonl(dataset: CaptionDataset, out: Path) -> None:
    """`captions.jsonl`: one {image, caption, split} object per caption."""
    lines = [
        json.dumps({"image": image, "caption": caption, "split": split}, ensure_ascii=False) + "\n"
        for image, caption, split in _rows(dataset.records)
    ]
    (out / "captions.jsonl").write_text("".join(lines), encoding="utf-8")


def _write_karpathy(dataset: CaptionDataset, out: Path) -> None:
    """`dataset_<name>.json` with `filepath` for images in sub-folders."""
    images, sentid = [], 0
    for imgid, record in enumerate(dataset.records):
        folder, _, filename = record.filename.rpartition("/")
        sentences = []
        for caption in record.captions:
            sentences.append(
                {"raw": caption, "tokens": tokenize(caption), "imgid": imgid, "sentid": sentid}
            )
            sentid += 1
        entry = {"filepath": folder} if folder else {}
        entry.update(filename=filename, imgid=imgid, split=record.split)
        entry.update(sentids=[s["sentid"] for s in sentences], sentences=sentences)
        images.append(entry)
    data = {"dataset": dataset.name, "images": images}
    path = out / f"dataset_{dataset.name or 'captions'}.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _write_coco(records: list[ImageRecord], out: Path, year: str) -> None:
    """`annotations/captions_train<year>.json` (train images) and `captions_val<year>.json` (the
    others), both always written so that the pair is complete."""
    folder = out / "annotations"
    folder.mkdir(exist_ok=True)
    annotation_id = 0
    for part in ("train", "val"):
        chosen = [r for r in records if (r.split == "train") == (part == "train")]
        images, annotations = [], []
        for image_id, record in enumerate(chosen, start=1):
            # The reader adds the `train2014/`-style sub-folder back from the file name.
            file_name = SUB_FOLDER.sub("", record.filename)
            images.append({"id": image_id, "file_name": file_name})
            for caption in record.captions:
                annotation_id += 1
                annotations.append({"id": annotation_id, "image_id": image_id, "caption": caption})
        data = {"info": {"description": "written by captionkit"}, "images": images}
        data["annotations"] = annotations
        path = folder / f"captions_{part}{year}.json"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


FORMATS: dict[str, Callable[[CaptionDataset, Path], None]] = {
    "flickr8k_token": _write_flickr8k_token,
    "kaggle_csv": _write_kaggle_csv,
    "flickr30k_csv": _write_flickr30k_csv,
    "generic_csv": _write_generic_csv,
    "jsonl": _write_jsonl,
    "karpathy": _write_karpathy,
    "coco": lambda dataset, out: _write_coco(dataset.records, out, "2014"),
}
"""Writer per format name; `write_dataset` passes the COCO year itself."""
SPLIT_FORMATS = ("flickr8k_token", "generic_csv", "jsonl", "karpathy")
"""Formats that keep the train/val/test split of every image."""
