"""Shared fixtures: a private feature cache and tiny datasets written by the tests themselves."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory):
    """Keep the tests' feature stores out of the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPTIONKIT_CACHE", str(tmp_path_factory.mktemp("feature-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def lite0():
    """The default encoder with its packaged ImageNet weights, loaded once for all tests."""
    from captionkit.encoders import create_encoder

    return create_encoder()


def write_images(folder: Path, names: list[str], size: int = 48, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


CAPTIONS = {
    "a.jpg": ["A dog runs, fast.", "a brown dog running"],
    "b.jpg": ["Two cats sit on a mat.", "cats, resting"],
    "c.jpg": ["A red car.", "a car parked on the street"],
    "d.jpg": ["A man rides a bike.", "cyclist on a road"],
}


@pytest.fixture
def kaggle_dataset(tmp_path) -> Path:
    """Flickr8k Kaggle layout: captions.txt (CSV, quoted commas) and Images/."""
    write_images(tmp_path / "Images", list(CAPTIONS))
    with open(tmp_path / "captions.txt", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for image, captions in CAPTIONS.items():
            writer.writerows([image, c] for c in captions)
    return tmp_path


@pytest.fixture
def karpathy_dataset(tmp_path) -> Path:
    """Karpathy split file with splits, including `restval`, and images in Images/."""
    write_images(tmp_path / "Images", list(CAPTIONS))
    splits = ["train", "restval", "val", "test"]
    images = [
        {"filename": name, "split": split, "sentences": [{"raw": c} for c in caps]}
        for (name, caps), split in zip(CAPTIONS.items(), splits)
    ]
    (tmp_path / "dataset_tiny.json").write_text(json.dumps({"images": images}))
    return tmp_path
