"""Tests for the synthetic `shapes` captioning dataset generator."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captionkit.data.shapes import (
    COLOURS,
    SHAPE_WORDS,
    Scene,
    ShapeObject,
    describe_scene,
    make_shapes,
    render_scene,
    sample_scene,
    tokens,
)

WORD_TO_SHAPE = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
RELATION_WORDS = ("left", "right", "above", "below", "under")


def _read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "captions.txt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["image", "caption"]
        return list(reader)


def _random_scenes(n: int, seed: int = 0) -> list[tuple[Scene, list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng)
        out.append((scene, describe_scene(scene, rng)))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shapes")
    return out, make_shapes(out, n_images=40, seed=3, image_size=96)


def test_summary_and_files(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    assert summary == {
        "images": 40,
        "captions": 200,
        "splits": {"train": 32, "val": 4, "test": 4},
        "out_dir": str(out),
    }
    rows = _read_rows(out)
    assert len(rows) == 200
    per_image = Counter(row["image"] for row in rows)
    assert set(per_image.values()) == {5}
    assert sorted(per_image) == [f"shapes_{i:05d}.png" for i in range(40)]
    for name in per_image:
        with Image.open(out / "Images" / name) as image:
            assert image.format == "PNG"
            assert image.mode == "RGB"
            assert image.size == (96, 96)


def test_captions_with_commas_are_quoted(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    rows = _read_rows(out)
    with_comma = [row["caption"] for row in rows if "," in row["caption"]]
    assert with_comma, "expected some captions with commas (lists of three objects)"
    text = (out / "captions.txt").read_text(encoding="utf-8")
    assert f'"{with_comma[0]}"' in text


def test_karpathy_json_matches_csv(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    data = json.loads((out / "dataset_shapes.json").read_text(encoding="utf-8"))
    assert data["dataset"] == "shapes"
    images = data["images"]
    assert [im["imgid"] for im in images] == list(range(40))
    assert Counter(im["split"] for im in images) == summary["splits"]
    csv_captions: dict[str, list[str]] = {}
    for row in _read_rows(out):
        csv_captions.setdefault(row["image"], []).append(row["caption"])
    sentids = []
    for im in images:
        raws = [s["raw"] for s in im["sentences"]]
        assert raws == csv_captions[im["filename"]]
        assert len(set(raws)) == 5
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        for sentence in im["sentences"]:
            assert sentence["imgid"] == im["imgid"]
            assert sentence["tokens"] == sentence["raw"].replace(",", "").replace(":", "").split()
        sentids += im["sentids"]
    assert sorted(sentids) == list(range(200))


def test_same_seed_same_bytes_different_seed_different_data(tmp_path: Path) -> None:
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    make_shapes(runs["a"], n_images=12, seed=7, image_size=64)
    make_shapes(runs["b"], n_images=12, seed=7, image_size=64)
    make_shapes(runs["c"], n_images=12, seed=8, image_size=64)
    for name in ("captions.txt", "dataset_shapes.json", "Images/shapes_00005.png"):
        assert (runs["a"] / name).read_bytes() == (runs["b"] / name).read_bytes()
    a_captions = (runs["a"] / "captions.txt").read_text()
    assert a_captions != (runs["c"] / "captions.txt").read_text()


def test_image_content_does_not_depend_on_dataset_size(tmp_path: Path) -> None:
    make_shapes(tmp_path / "small", n_images=3, seed=1, image_size=48)
    make_shapes(tmp_path / "large", n_images=6, seed=1, image_size=48)
    image = "Images/shapes_00002.png"
    assert (tmp_path / "small" / image).read_bytes() == (tmp_path / "large" / image).read_bytes()


def test_captions_name_exactly_the_drawn_colours_and_shapes() -> None:
    for scene, captions in _random_scenes(300):
        colours = {o.colour for o in scene.objects}
        shapes = {o.shape for o in scene.objects}
        assert len(captions) == 5 and len(set(captions)) == 5
        for caption in captions:
            words = tokens(caption)
            assert caption == caption.lower()
            assert len(words) <= 16
            assert {w for w in words if w in COLOURS} == colours, caption
            assert {WORD_TO_SHAPE[w] for w in words if w in WORD_TO_SHAPE} == shapes, caption


def test_scene_statistics_and_small_vocabulary() -> None:
    scenes = _random_scenes(600, seed=1)
    counts = Counter(len(scene.objects) for scene, _ in scenes)
    assert set(counts) == {1, 2, 3}
    vocabulary = {w for _, captions in scenes for c in captions for w in tokens(c)}
    assert len(vocabulary) < 80
    # No caption is common enough to be a good constant guess.
    caption_counts = Counter(c for _, captions in scenes for c in captions)
    assert caption_counts.most_common(1)[0][1] < 0.02 * len(scenes)
    # Objects never overlap: centres are further apart than the sum of the radii.
    for scene, _ in scenes:
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                assert np.hypot(a.x - b.x, a.y - b.y) >= a.radius + b.radius


def test_rendered_colours_match_the_scene() -> None:
    rng = random.Random(5)
    for index in range(30):
        scene = sample_scene(rng)
        image = np.asarray(render_scene(scene, 128, np.random.default_rng(index)), np.int16)
        assert image.shape == (128, 128, 3)
        for obj in scene.objects:
            centre = image[int(obj.y * 128), int(obj.x * 128)]
            assert np.abs(centre - np.array(COLOURS[obj.colour])).max() <= 20, (obj, centre)


def _neighbour_colours(words: list[str], relation_index: int) -> tuple[str, str]:
    """Colour named last before the relation word and first after it."""
    before = [w for w in words[:relation_index] if w in COLOURS][-1]
    after = [w for w in words[relation_index + 1 :] if w in COLOURS][0]
    return before, after


def test_horizontal_relation_follows_positions() -> None:
    red = ShapeObject("circle", "red", "large", x=0.2, y=0.45, radius=0.18)
    blue = ShapeObject("square", "blue", "small", x=0.8, y=0.55, radius=0.09)
    scene = Scene((red, blue))
    seen = 0
    for seed in range(40):
        for caption in describe_scene(scene, random.Random(seed)):
            words = tokens(caption)
            assert not {"above", "below", "under"} & set(words), caption
            if "to" not in words:  # "to the left of" / "to the right of"
                continue
            i = words.index("to")
            expected = ("red", "blue") if words[i + 2] == "left" else ("blue", "red")
            assert _neighbour_colours(words, i) == expected, caption
            seen += 1
    assert seen > 0


def test_vertical_relation_follows_positions() -> None:
    top = ShapeObject("star", "yellow", "small", x=0.5, y=0.2, radius=0.1)
    bottom = ShapeObject("triangle", "green", "large", x=0.45, y=0.75, radius=0.2)
    scene = Scene((top, bottom))
    for seed in range(40):
        for caption in describe_scene(scene, random.Random(seed)):
            words = tokens(caption)
            assert "to" not in words, caption
            for i, word in enumerate(words):
                if word == "above":
                    assert _neighbour_colours(words, i) == ("yellow", "green"), caption
                elif word in ("below", "under"):
                    assert _neighbour_colours(words, i) == ("green", "yellow"), caption


def test_left_to_right_listing_is_ordered() -> None:
    objects = (
        ShapeObject("cross", "white", "small", x=0.8, y=0.5, radius=0.1),
        ShapeObject("circle", "red", "small", x=0.2, y=0.6, radius=0.1),
        ShapeObject("diamond", "purple", "small", x=0.5, y=0.3, radius=0.1),
    )
    ordered = [
        caption
        for seed in range(40)
        for caption in describe_scene(Scene(objects), random.Random(seed))
        if caption.endswith("from left to right")
    ]
    assert ordered
    for caption in ordered:
        assert [w for w in tokens(caption) if w in COLOURS] == ["red", "purple", "white"], caption


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_images": 0},
        {"n_images": 2},
        {"split_fractions": (0.5, 0.3, 0.3)},
        {"split_fractions": (0.0, 0.5, 0.5)},
        {"split_fractions": (1.2, -0.1, -0.1)},
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="n_images|split_fractions"):
        make_shapes(tmp_path, **kwargs)


def test_tiny_dataset_has_every_split(tmp_path: Path) -> None:
    summary = make_shapes(tmp_path, n_images=3, seed=0, image_size=32)
    assert summary["splits"] == {"train": 1, "val": 1, "test": 1}
