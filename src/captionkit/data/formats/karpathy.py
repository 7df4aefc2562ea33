"""Karpathy split files (`dataset_flickr8k.json`, `dataset_flickr30k.json`, `dataset_coco.json`).

Each entry of `images` has a `filename`, a `split` and `sentences[].raw`; COCO entries also have a
`filepath` sub-folder (`train2014`, `val2014`), which becomes part of the record's file name.
`restval` is counted as training data, as in Karpathy's own code. Problems are reported with the
file and the image as their place.
"""

from __future__ import annotations

from pathlib import Path

from captionkit.data.formats._common import RecordCollector, load_json, split_name
from captionkit.data.problems import MALFORMED_ROW, Problems
from captionkit.data.records import ImageRecord
from captionkit.errors import CaptionkitError


def looks_like(path: Path) -> bool:
    """True for a `.json` file whose name starts with `dataset_`."""
    return path.suffix == ".json" and path.name.startswith("dataset_")


def read(path: Path, problems: Problems | None = None) -> list[ImageRecord]:
    """Read all images with their split and raw captions."""
    problems = problems if problems is not None else Problems()
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CaptionkitError(f"{path}: expected a Karpathy split file with an 'images' list")
    collector = RecordCollector(problems)
    for position, entry in enumerate(data["images"]):
        filename = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(filename, str) or not filename.strip():
            problems.add(MALFORMED_ROW, f"{path} (entry {position})", "no 'filename'")
            continue
        if entry.get("filepath"):
            filename = f"{entry['filepath']}/{filename}"
        where = f"{path} (image {filename})"
        split = split_name(entry.get("split"), problems, where)
        collector.add_image(filename, where, split)
        sentences = entry.get("sentences")
        for sentence in sentences if isinstance(sentences, list) else []:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if not isinstance(raw, str):
                problems.add(MALFORMED_ROW, where, "a sentence without 'raw' text")
                continue
            collector.add(filename, raw, where, split)
    return collector.records()
