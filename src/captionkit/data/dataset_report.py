"""`prepare`: validate a dataset without training, and say what is in it and what is wrong."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from captionkit.data.formats import load_dataset
from captionkit.data.image_files import open_or_problem
from captionkit.data.problems import TRUNCATED_CAPTION, Problems
from captionkit.data.ptb_tokenizer import tokenize
from captionkit.data.vocab import Vocabulary


def _check_images(dataset, problems: Problems, workers: int = 2) -> list:
    """Decode every image (PIL releases the GIL, so threads overlap); keep records that load."""
    paths = [dataset.path(r) for r in dataset.records]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: open_or_problem(p)[1], paths))
    usable = []
    for record, path, problem in zip(dataset.records, paths, results):
        if problem is None:
            usable.append(record)
        else:
            problems.add(problem[0], path, problem[1])
    return usable


def prepare_report(
    data: str | Path,
    images: str | Path | None = None,
    min_count: int = 5,
    max_length: int = 20,
    strict: bool = False,
    check_images: bool = True,
) -> dict:
    """Counts, splits, vocabulary size, caption lengths and every problem found, grouped by kind.

    The keys `images`, `captions`, `splits` and `problems` are the usable image count, the usable
    caption count, split name -> image count and problem kind -> count."""
    problems = Problems(strict=strict)
    dataset = load_dataset(data, images, problems=problems)
    records = _check_images(dataset, problems) if check_images else dataset.records
    lengths = np.array([len(tokenize(c)) for r in records for c in r.captions])
    where = [r.filename for r in records for _ in r.captions]
    for i in np.flatnonzero(lengths > max_length):
        problems.add(TRUNCATED_CAPTION, where[i], f"caption of {lengths[i]} words is cut")
    train_captions = [c for r in records if r.split == "train" for c in r.captions]
    return {
        "dataset": dataset.name,
        "annotations": str(dataset.source),
        "image_root": str(dataset.image_root),
        "images": len(records),
        "captions": int(lengths.size),
        "splits": {s: sum(r.split == s for r in records) for s in ("train", "val", "test")},
        "vocabulary_size": len(Vocabulary.build(train_captions, min_count)),
        "min_count": min_count,
        "caption_length": {f"p{q}": float(np.percentile(lengths, q)) for q in (5, 50, 95)}
        | {"max": int(lengths.max()), "mean": round(float(lengths.mean()), 2)},
        "problems": problems.counts(),
        "problem_list": [p.__dict__ for p in problems.items],
    }


def format_report(report: dict) -> str:
    """The report as a few human-readable lines."""
    length = report["caption_length"]
    lines = [
        f"dataset {report['dataset']} ({report['annotations']})",
        f"  images    {report['images']} usable, in {report['image_root']}",
        f"  captions  {report['captions']} usable",
        "  splits    " + ", ".join(f"{k} {v}" for k, v in report["splits"].items()),
        f"  vocabulary {report['vocabulary_size']} words at min count {report['min_count']}",
        f"  caption length (words): p5 {length['p5']:.0f}, median {length['p50']:.0f}, "
        f"p95 {length['p95']:.0f}, max {length['max']}",
    ]
    if not report["problems"]:
        return "\n".join([*lines, "  problems  none"])
    lines.append("  problems:")
    lines += [f"    {kind:<22} {n}" for kind, n in sorted(report["problems"].items())]
    return "\n".join(lines)
