"""Check every caption-format reader on real data: load flickr8k-mini, write it in each format with
`captionkit.data.convert`, read each copy back and compare it with the original.

Run from the project root (the data is not part of the project):
    .venv/bin/python bench/check_formats.py --data ../shared/data/flickr8k-mini

Prints per format: images, captions, split sizes, whether {image basename: captions} is identical
to the original and, for formats that carry splits, whether the splits are identical. Any other
annotation file shipped with the data (`captions.txt`) is compared too. Images are not copied: each
copy is read with `images=` pointing at the original image folder. Exits non-zero when any copy
differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from captionkit.data import load_dataset
from captionkit.data.convert import FORMATS, SPLIT_FORMATS, write_dataset
from captionkit.data.formats import detect_format
from captionkit.data.records import CaptionDataset
from captionkit.errors import CaptionkitError


def caption_sets(dataset: CaptionDataset) -> dict[str, list[str]]:
    """{image basename: sorted captions}: comparable across formats and image sub-folders."""
    return {Path(r.filename).name: sorted(r.captions) for r in dataset.records}


def splits_of(dataset: CaptionDataset) -> dict[str, str]:
    return {Path(r.filename).name: r.split for r in dataset.records}


def describe(label: str, dataset: CaptionDataset, seconds: float, checks: str) -> str:
    sizes = "/".join(str(n) for n in dataset.split_sizes().values())
    problems = len(dataset.problems.items)
    return (
        f"{label:<16} {len(dataset.records):>6} {dataset.num_captions():>8} {sizes:>12} "
        f"{problems:>8} {seconds:>6.2f}s  {checks}"
    )


def check_format(original: CaptionDataset, fmt: str, out: Path) -> tuple[str, bool]:
    """Write, read back and compare one format; returns the report line and whether it matched."""
    write_dataset(original, out, fmt)
    start = time.perf_counter()
    copy = load_dataset(out, images=original.image_root)
    seconds = time.perf_counter() - start
    same_captions = caption_sets(copy) == caption_sets(original)
    checks = f"captions identical: {'yes' if same_captions else 'NO'}"
    same_splits = True
    if fmt in SPLIT_FORMATS:
        same_splits = splits_of(copy) == splits_of(original)
        checks += f", splits identical: {'yes' if same_splits else 'NO'}"
    elif fmt == "coco":
        train = {n for n, s in splits_of(original).items() if s == "train"}
        same_splits = {n for n, s in splits_of(copy).items() if s == "train"} == train
        checks += f", train split identical: {'yes' if same_splits else 'NO'} (val+test re-split)"
    else:
        checks += ", splits: none in format (deterministic)"
    return describe(fmt, copy, seconds, checks), same_captions and same_splits


def check_shipped(original: CaptionDataset, path: Path) -> bool:
    """Compare another annotation file shipped with the data (e.g. `captions.txt`) if it is one."""
    if path == original.source or not path.is_file():
        return True
    try:
        fmt, _ = detect_format(path)
    except CaptionkitError:
        return True  # README and the like
    start = time.perf_counter()
    copy = load_dataset(path, images=original.image_root)
    seconds = time.perf_counter() - start
    same = caption_sets(copy) == caption_sets(original)
    print(
        describe(path.name, copy, seconds, f"({fmt}) captions identical: {'yes' if same else 'NO'}")
    )
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/flickr8k-mini", type=Path)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    original = load_dataset(args.data)
    seconds = time.perf_counter() - start
    print(f"source: {original.source} ({original.problems.summary()})")
    print(f"{'format':<16} {'images':>6} {'captions':>8} {'train/val/test':>12} {'problems':>8}")
    print(describe("original", original, seconds, ""))
    all_ok = True
    for shipped in sorted(args.data.iterdir()) if args.data.is_dir() else []:
        all_ok &= check_shipped(original, shipped)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in FORMATS:
            line, ok = check_format(original, fmt, Path(tmp) / fmt)
            print(line)
            all_ok &= ok
    print("all formats match the original" if all_ok else "SOME FORMATS DIFFER")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
