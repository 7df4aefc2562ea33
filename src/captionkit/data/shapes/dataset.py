"""`make_shapes`: the shapes dataset on disk, images plus captions in two common formats."""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from captionkit.data.shapes.captions import describe_scene, tokens
from captionkit.data.shapes.drawing import render_scene
from captionkit.data.shapes.scenes import sample_scene


def _check_arguments(n_images: int, image_size: int, fractions: Sequence[float]) -> None:
    """Raise ValueError with a clear message for arguments the generator cannot honour."""
    if n_images < 3:
        raise ValueError(
            f"n_images must be at least 3 (one each for train, val and test), got {n_images}"
        )
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {image_size}")
    if len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions):
        raise ValueError(
            f"split_fractions must be three non-negative numbers (train, val, test), "
            f"got {tuple(fractions)}"
        )
    if abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0:
        raise ValueError(
            f"split_fractions must sum to 1 with a positive train fraction, got {tuple(fractions)}"
        )


def _split_counts(n_images: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Image counts per split: val and test get at least one image, train keeps at least one."""
    n_val = max(1, round(n_images * fractions[1]))
    n_test = max(1, round(n_images * fractions[2]))
    while n_images - n_val - n_test < 1:  # only with tiny datasets; n_images >= 3 ends it
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_images - n_val - n_test, n_val, n_test


def _assign_splits(n_images: int, fractions: Sequence[float], seed: int) -> list[str]:
    """Split name of every image, shuffled deterministically by seed."""
    n_train, n_val, _ = _split_counts(n_images, fractions)
    order = list(range(n_images))
    random.Random(f"shapes-split-{seed}").shuffle(order)  # str seeds are hashed stably
    splits = [""] * n_images
    for rank, index in enumerate(order):
        splits[index] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits


def _image_rngs(seed: int, index: int) -> tuple[random.Random, np.random.Generator]:
    """Independent generators for image `index`: one for the scene and captions, one for pixels."""
    # SeedSequence needs non-negative entropy; the sign goes in separately so -1 != 1.
    scene_seq, pixel_seq = np.random.SeedSequence([abs(seed), int(seed < 0), index]).spawn(2)
    scene_rng = random.Random(int.from_bytes(scene_seq.generate_state(4).tobytes(), "little"))
    return scene_rng, np.random.default_rng(pixel_seq)


def make_shapes(
    out_dir: str | Path,
    n_images: int = 2000,
    seed: int = 0,
    image_size: int = 160,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict:
    """Generate the shapes dataset into `out_dir` and return a summary of what was written.

    Writes `Images/shapes_NNNNN.png`, `captions.txt` (Kaggle CSV) and `dataset_shapes.json`
    (Karpathy splits). The summary is `{"images", "captions", "splits", "out_dir"}`.
    Raises ValueError for fewer than 3 images or split fractions that do not sum to 1.
    """
    _check_arguments(n_images, image_size, split_fractions)
    out = Path(out_dir)
    (out / "Images").mkdir(parents=True, exist_ok=True)
    splits = _assign_splits(n_images, split_fractions, seed)

    def make_one(index: int) -> list[str]:
        scene_rng, pixel_rng = _image_rngs(seed, index)
        scene = sample_scene(scene_rng)
        image = render_scene(scene, image_size, pixel_rng)
        # Level 1: the pixel noise barely compresses anyway; the default level is ~70% slower.
        image.save(out / "Images" / _filename(index), compress_level=1)
        return describe_scene(scene, scene_rng)

    # Threads suffice: PNG encoding and the numpy work release the GIL. Each image has its own
    # generators and `map` keeps the order, so the output does not depend on the thread count.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        all_captions = list(pool.map(make_one, range(n_images)))
    rows = [
        (_filename(i), caption) for i, captions in enumerate(all_captions) for caption in captions
    ]
    entries = [
        _karpathy_entry(_filename(i), i, splits[i], captions)
        for i, captions in enumerate(all_captions)
    ]
    _write_captions_csv(out / "captions.txt", rows)
    with open(out / "dataset_shapes.json", "w", encoding="utf-8") as f:
        json.dump({"dataset": "shapes", "images": entries}, f)
    counts = {name: splits.count(name) for name in ("train", "val", "test")}
    return {"images": n_images, "captions": len(rows), "splits": counts, "out_dir": str(out)}


def _filename(index: int) -> str:
    """Image file name, zero-padded so names sort in generation order."""
    return f"shapes_{index:05d}.png"


def _karpathy_entry(filename: str, imgid: int, split: str, captions: list[str]) -> dict:
    """One image of the Karpathy json; sentence ids are global (5 per image, in order)."""
    sentids = [imgid * len(captions) + k for k in range(len(captions))]
    sentences = [
        {"raw": caption, "tokens": tokens(caption), "imgid": imgid, "sentid": sentid}
        for caption, sentid in zip(captions, sentids, strict=True)
    ]
    return {
        "filename": filename,
        "imgid": imgid,
        "split": split,
        "sentids": sentids,
        "sentences": sentences,
    }


def _write_captions_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """Kaggle Flickr8k `captions.txt`; the csv module quotes captions that contain commas."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
