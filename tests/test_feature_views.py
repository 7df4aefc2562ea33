"""Feature augmentation for cached features (`encoder.feature_views`): seeded views of each image,
extracted once into stores of their own, and training batches that read one view of each image per
epoch."""

import json

import numpy as np
import pytest
import torch

from captionkit.data.image_files import load_image
from captionkit.data.shapes import make_shapes
from captionkit.encoders import extract_features
from captionkit.encoders.features import FeatureStore
from captionkit.encoders.finetune import augmenting_transform
from captionkit.encoders.verify import verify_store
from captionkit.encoders.views import View, views
from captionkit.errors import CaptionkitError
from captionkit.training.config import DataConfig, EncoderConfig, RunConfig, TrainConfig
from captionkit.training.feature_batches import CaptionPairs
from captionkit.training.train import train

from conftest import TINY, write_images


def _extract(encoder, paths, cache, view=None):
    return extract_features(encoder, paths, cache, num_workers=0, device="cpu", view=view)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_images(folder, ["a.png", "b.png", "c.png"], size=96)
    return sorted(folder.iterdir())


def test_a_view_is_the_seeded_augmentation_of_each_image(photos, lite0, tmp_path):
    view = View(1, crop_scale_min=0.4, hflip=0.5)
    store = _extract(lite0, photos, tmp_path / "cache", view)
    # Reference: the fine-tuning augmentation under the view's seed for the image, then the
    # encoder (the store keeps float16).
    augment = augmenting_transform(lite0, 0.4, 0.5)
    for path in photos:
        torch.manual_seed(view.seed(path))
        pixels = augment(load_image(path))
        with torch.inference_mode():
            pooled, grid = lite0(pixels[None])
        row = store.rows([path])[0]
        assert np.allclose(store.pooled[row], pooled[0].numpy(), atol=2e-3, rtol=2e-3)
        assert np.allclose(store.grid[row], grid[0].numpy(), atol=2e-3, rtol=2e-3)
    # The seed is the file name's: the same view of a copy elsewhere, another view elsewise.
    assert view.seed(photos[0]) == view.seed(tmp_path / photos[0].name)
    assert len({View(k).seed(photos[0]) for k in (1, 2, 3)} | {view.seed(photos[1])}) == 4


def test_each_view_has_its_own_store_and_the_plain_one_is_untouched(photos, lite0, tmp_path):
    cache = tmp_path / "cache"
    plain = _extract(lite0, photos, cache)
    plain_pooled = np.array(plain.pooled)
    first, second = (_extract(lite0, photos, cache, v) for v in views(2, 0.5, 0.5))
    folders = {plain.folder, first.folder, second.folder}
    assert len(folders) == 3 and all(f.is_dir() for f in folders)  # none superseded another
    assert not np.allclose(first.pooled, plain_pooled)
    assert not np.allclose(first.pooled, second.pooled)
    again = _extract(lite0, photos, cache, View(1))
    assert again.report is None and again.folder == first.folder  # a cache hit
    assert np.array_equal(_extract(lite0, photos, cache).pooled, plain_pooled)
    # A damaged view is repaired as that view (the index keeps it), not as the plain image.
    view_pooled = np.array(first.pooled)
    with open(first.folder / "pooled.npy", "r+b") as f:
        f.seek(first.pooled.offset + 7)
        f.write(b"\xff\xff")
    report = verify_store(FeatureStore.open(first.folder), lite0, num_workers=0, device="cpu")
    assert report.damaged_rows == [0, 1, 2]
    assert np.allclose(FeatureStore.open(first.folder).pooled, view_pooled, atol=1e-3)


def test_bad_views_are_refused():
    with pytest.raises(CaptionkitError, match="numbered from 1"):
        View(0)
    with pytest.raises(CaptionkitError, match="crop_scale_min must be in"):
        View(1, crop_scale_min=0.0)
    with pytest.raises(CaptionkitError, match="feature_views must be >= 0, not -1"):
        EncoderConfig(feature_views=-1)
    assert views(0, 0.5, 0.5) == []


def _store(tmp_path, name, value, n=4):
    pooled = np.full((n, 2), value, dtype=np.float16)
    return FeatureStore(tmp_path / name, [f"{i}.jpg" for i in range(n)], pooled, None)


def test_every_epoch_reads_one_source_per_image_seeded_by_epoch(tmp_path):
    plain, v1, v2 = (_store(tmp_path, n, value) for n, value in (("p", 0), ("v1", 1), ("v2", 2)))
    rows = [0, 0, 1, 1, 2, 2, 3, 3]  # two captions an image
    tokens = [[1, 5, 2]] * len(rows)
    pairs = CaptionPairs(plain, rows, tokens, use_grid=False,
                         views=[(v1, rows), (v2, rows)], seed=3)  # fmt: skip
    seen = []
    for epoch in range(12):
        pairs.set_epoch(epoch)
        source = pairs.__getitems__(list(range(len(rows))))["pooled"][:, 0].numpy()
        assert np.array_equal(source[0::2], source[1::2])  # an image's captions: one source
        seen.append(source[0::2].tolist())
    assert {s for epoch in seen for s in epoch} == {0.0, 1.0, 2.0}
    assert len({tuple(s) for s in seen}) > 6  # the draw changes with the epoch ...
    pairs.set_epoch(5)
    again = pairs.__getitems__([6, 0, 3])["pooled"][:, 0].tolist()
    assert again == [seen[5][3], seen[5][0], seen[5][1]]  # ... and only with it


@pytest.mark.slow
def test_training_extracts_each_view_once_and_draws_every_epoch(tmp_path, monkeypatch):
    make_shapes(tmp_path / "shapes", n_images=20, seed=3)
    config = RunConfig(model="attention", model_args=dict(TINY["attention"]),
                       data=DataConfig(str(tmp_path / "shapes"), min_count=1,
                                       cache_dir=str(tmp_path / "cache")),
                       encoder=EncoderConfig(feature_views=2),
                       train=TrainConfig(epochs=2, batch_size=16))  # fmt: skip
    epochs = []
    set_epoch = CaptionPairs.set_epoch
    monkeypatch.setattr(CaptionPairs, "set_epoch",
                        lambda self, e: (epochs.append(e), set_epoch(self, e)))  # fmt: skip
    train(config, tmp_path / "run")
    assert sorted(set(epochs)) == [0, 1]
    stores = [json.loads((d / "index.json").read_text()) for d in (tmp_path / "cache").iterdir()]
    kinds = [next((p for p in s["variant"].split("|") if "view=" in p), "plain") for s in stores]
    assert sorted(kinds) == ["plain", "view=1", "view=2"]
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    train_images = sum(split == "train" for split in splits.values())
    assert [len(s["paths"]) for s in stores if "view=" in s["variant"]] == [train_images] * 2
    saved = RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.encoder.feature_views == 2
