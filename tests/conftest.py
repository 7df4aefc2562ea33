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


SHAPE_WORDS = "a red blue green circle square triangle on the left right of big small".split()


@pytest.fixture(scope="session")
def tiny_attention_run(tmp_path_factory, lite0) -> Path:
    """An untrained Show-Attend-Tell run (tiny, random weights, on the default encoder) with a
    test evaluation on record: for serving and export tests, which need a model, not a good one."""
    import torch

    from captionkit.data.vocab import Vocabulary
    from captionkit.models import create_model
    from captionkit.models.run_folder import save_checkpoint
    from captionkit.reporting.compare import save_run_evaluation

    torch.manual_seed(0)
    vocab = Vocabulary(SHAPE_WORDS)
    sizes = {"hidden_dim": 16, "embed_dim": 16, "attention_dim": 16}
    model = create_model("attention", vocab_size=len(vocab), feature_dim=lite0.feature_dim,
                         **sizes)  # fmt: skip
    run = tmp_path_factory.mktemp("tiny-attention")
    encoder = {"name": lite0.name, "weights": "default", "fingerprint": lite0.fingerprint()}
    extra = {"run": {"model": "attention", "data": {"max_length": 8}}}
    with torch.no_grad():  # random weights often end at once: make <eos> unlikely, for words
        model.head.bias[Vocabulary.eos_id] = -3.0
    save_checkpoint(run, model.eval(), "attention", vocab, encoder, extra)
    save_run_evaluation(run, "test", {"BLEU-4": 0.125, "CIDEr": 0.5}, 3, "beam 3", "shapes")
    return run


def find_chromium() -> str | None:
    """The system's Chromium (Debian: apt-get install chromium), or None."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


# Loaded before a page's own scripts: after loading, record every broken image and every error
# (uncaught or console.error) in the page title, which --dump-dom then prints; the list stays
# readable as the global `problems` (e.g. from Selenium).
CHECKER = """<script>
const problems = [];
window.addEventListener("error", e => problems.push("error: " + e.message));
const consoleError = console.error;
console.error = (...args) => {
  problems.push("console: " + args.join(" "));
  consoleError(...args);
};
window.addEventListener("load", () => {
  const images = [...document.images];
  images.filter(im => !im.complete || im.naturalWidth === 0)
        .forEach(im => problems.push("broken image: " + im.alt));
  document.title = "CHECKED " + images.length + " images; " + JSON.stringify(problems);
});
</script>"""
