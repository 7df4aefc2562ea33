"""The built-in synthetic captioning dataset "shapes".

Each image shows one to three bold, coloured geometric objects (circle, square, triangle, star,
diamond, cross) in one of six well separated colours and two clearly different sizes, drawn on a
textured dark background (plain, stripes, checker, gradient or blotchy noise) with a little pixel
noise on top. Every image gets five differently worded reference captions that name the colour
and shape of every object and, for two or three objects, where they are relative to each other
("a large red circle to the left of a small blue square"). Because the captions always depend on
what was drawn, no caption can be guessed from text alone: a captioner has to look at the image.

`make_shapes` writes the images plus the captions in two common formats, so the dataset can be
read like a real one:

- `Images/shapes_00000.png`, ...: RGB PNGs, `image_size` pixels square;
- `captions.txt`: Kaggle Flickr8k style CSV with header `image,caption`, five rows per image;
- `dataset_shapes.json`: Karpathy split file with train / val / test assignments.

Everything is deterministic by seed: each image draws from its own generator seeded by
`(seed, index)`, so image `i` is the same whatever `n_images` is, and the same seed gives
byte-identical files. Generation is fast (2000 images of 160 px in about 10 s on 2 cores), so
demos and tests build a fresh dataset instead of downloading one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Saturated or bright colours that stay far apart in RGB (and from the dark, greyish backgrounds)
# so a frozen ImageNet CNN can tell them apart after resizing.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 185, 50),
    "blue": (45, 85, 240),
    "yellow": (245, 220, 30),
    "purple": (155, 50, 205),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
SIZES = ("small", "large")
BACKGROUNDS = ("plain", "stripes", "checker", "gradient", "noise")

# Words a caption may use for each attribute; the first entry is the canonical one.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond",),
    "cross": ("cross",),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
_COUNT_NOUNS = ("shapes", "objects")

# Radius as a fraction of the image side. Large objects are about twice the size of small ones
# so "small" / "large" is visible even after the 160 -> 224 resize of the feature extractor.
_RADIUS_RANGE = {"small": (0.085, 0.11), "large": (0.17, 0.21)}
_OBJECT_COUNT_WEIGHTS = (0.3, 0.4, 0.3)  # for 1, 2, 3 objects: relations need 2+
_EDGE_MARGIN = 0.02  # keep objects fully inside the image
_MIN_GAP = 0.02  # extra distance between objects' bounding circles, so they never overlap
_PLACEMENT_TRIES = 60
_MAX_ANGLE = 10.0  # degrees of rotation jitter; small so a square never turns into a diamond
_SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing
_PIXEL_NOISE = 4  # pixel noise is uniform in [-4, 4] per channel
_COLOUR_JITTER = 12  # per-channel jitter of object colours, well below the gaps between colours


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. Positions and radius are fractions of the image side (y grows down)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float
    angle: float = 0.0


@dataclass(frozen=True)
class Scene:
    """What one image shows: its objects and the kind of background texture."""

    objects: tuple[ShapeObject, ...]
    background: str = "plain"


# --------------------------------------------------------------------------------------------
# Scene sampling
# --------------------------------------------------------------------------------------------


def sample_scene(rng: random.Random) -> Scene:
    """Draw a random scene of 1-3 non-overlapping objects with distinct (colour, shape) pairs."""
    n_objects = rng.choices((1, 2, 3), weights=_OBJECT_COUNT_WEIGHTS)[0]
    while True:  # rejection sampling: start over when the objects do not fit side by side
        objects = _try_place_objects(rng, n_objects)
        if objects is not None:
            return Scene(tuple(objects), rng.choice(BACKGROUNDS))


def _try_place_objects(rng: random.Random, n_objects: int) -> list[ShapeObject] | None:
    """Place objects one by one at random free spots; None when one could not be placed."""
    objects: list[ShapeObject] = []
    for _ in range(n_objects):
        # Distinct (colour, shape) pairs keep captions unambiguous ("the red circle is ...").
        taken = {(o.colour, o.shape) for o in objects}
        colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in taken])
        size = rng.choice(SIZES)
        radius = rng.uniform(*_RADIUS_RANGE[size])
        low, high = radius + _EDGE_MARGIN, 1.0 - radius - _EDGE_MARGIN
        for _ in range(_PLACEMENT_TRIES):
            x, y = rng.uniform(low, high), rng.uniform(low, high)
            if all(math.dist((x, y), (o.x, o.y)) >= radius + o.radius + _MIN_GAP for o in objects):
                break
        else:
            return None
        angle = rng.uniform(-_MAX_ANGLE, _MAX_ANGLE)
        objects.append(ShapeObject(shape, colour, size, x, y, radius, angle))
    return objects


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------


def _noun_phrase(obj: ShapeObject, rng: random.Random, with_size: bool = True) -> str:
    """'big red disc': optional size word, colour, shape word (synonyms picked at random)."""
    words = [rng.choice(SIZE_WORDS[obj.size])] if with_size else []
    return " ".join([*words, obj.colour, rng.choice(SHAPE_WORDS[obj.shape])])


def _third(value: float) -> int:
    """0, 1 or 2 for the first, middle or last third of the image along one axis."""
    return min(2, int(value * 3))


def position_phrase(obj: ShapeObject, corner: bool = True) -> str:
    """Where the object is in the image, e.g. 'on the left' or 'in the top right corner'.

    `corner=False` drops the word 'corner' to keep two-position captions short.
    """
    horizontal = ("left", None, "right")[_third(obj.x)]
    vertical = ("top", None, "bottom")[_third(obj.y)]
    if horizontal and vertical:
        return f"in the {vertical} {horizontal}" + (" corner" if corner else "")
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the middle"


def relation(a: ShapeObject, b: ShapeObject, rng: random.Random) -> str:
    """Where `a` is relative to `b`, along the axis on which their centres differ the most."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else rng.choice(("below", "under"))


def _shuffled(objects: Sequence[ShapeObject], rng: random.Random) -> list[ShapeObject]:
    """A random order, so captions do not always mention objects in the same order."""
    return rng.sample(list(objects), len(objects))


# A template turns the scene's objects into one caption, or None when it does not apply.
Template = Callable[[Sequence[ShapeObject], random.Random], str | None]


def _one_plain(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    return f"a {_noun_phrase(objs[0], rng)}"


def _one_position(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    return f"a {_noun_phrase(objs[0], rng, with_size=False)} {position_phrase(objs[0])}"


def _one_there_is(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    return f"there is a {_noun_phrase(objs[0], rng)} {position_phrase(objs[0])}"


def _one_single(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    return f"a single {_noun_phrase(objs[0], rng)}"


def _one_that_is(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    obj = objs[0]
    size, shape = rng.choice(SIZE_WORDS[obj.size]), rng.choice(SHAPE_WORDS[obj.shape])
    return f"a {size} {shape} that is {obj.colour}"


def _one_image_of(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    return f"an image of one {_noun_phrase(objs[0], rng)}"


def _one_count_position(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    return f"one {_noun_phrase(objs[0], rng, with_size=False)} {position_phrase(objs[0])}"


def _two_relation(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    a, b = _shuffled(objs, rng)
    return f"a {_noun_phrase(a, rng)} {relation(a, b, rng)} a {_noun_phrase(b, rng)}"


def _two_and(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    a, b = _shuffled(objs, rng)
    return f"a {_noun_phrase(a, rng)} and a {_noun_phrase(b, rng)}"


def _two_count(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    a, b = (_noun_phrase(o, rng, with_size=False) for o in _shuffled(objs, rng))
    return f"two {rng.choice(_COUNT_NOUNS)}: a {a} and a {b}"


def _two_there_are(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    a, b = _shuffled(objs, rng)
    pa, pb = _noun_phrase(a, rng, with_size=False), _noun_phrase(b, rng, with_size=False)
    return f"there are two {rng.choice(_COUNT_NOUNS)}, a {pa} {relation(a, b, rng)} a {pb}"


def _two_positions(objs: Sequence[ShapeObject], rng: random.Random) -> str | None:
    a, b = _shuffled(objs, rng)
    where_a, where_b = position_phrase(a, corner=False), position_phrase(b, corner=False)
    if where_a == where_b:  # "a red circle on the left and a blue box on the left" reads badly
        return None
    pa, pb = _noun_phrase(a, rng, with_size=False), _noun_phrase(b, rng, with_size=False)
    return f"a {pa} {where_a} and a {pb} {where_b}"


def _two_the_is(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    a, b = _shuffled(objs, rng)
    pa, pb = _noun_phrase(a, rng, with_size=False), _noun_phrase(b, rng, with_size=False)
    return f"the {pa} is {relation(a, b, rng)} the {pb}"


def _list_of(objs: Sequence[ShapeObject], rng: random.Random, with_size: bool) -> str:
    """'a red circle, a blue star and a green box' in the given order."""
    phrases = [f"a {_noun_phrase(o, rng, with_size)}" for o in objs]
    return f"{', '.join(phrases[:-1])} and {phrases[-1]}"


def _three_count(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    listing = _list_of(_shuffled(objs, rng), rng, with_size=True)
    return f"three {rng.choice(_COUNT_NOUNS)}: {listing}"


def _three_there_are(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    listing = _list_of(_shuffled(objs, rng), rng, with_size=False)
    return f"there are three {rng.choice(_COUNT_NOUNS)}: {listing}"


def _three_list(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    return _list_of(_shuffled(objs, rng), rng, with_size=True)


def _three_ordered(objs: Sequence[ShapeObject], rng: random.Random) -> str | None:
    """List the objects from left to right (or top to bottom) when that order is clear."""
    min_gap = 0.1  # closer centres would make the order a coin flip for a viewer
    for axis, words in (("x", "from left to right"), ("y", "from top to bottom")):
        ordered = sorted(objs, key=lambda o: getattr(o, axis))
        coords = [getattr(o, axis) for o in ordered]
        if all(b - a >= min_gap for a, b in zip(coords, coords[1:], strict=False)):
            return f"{_list_of(ordered, rng, with_size=False)} {words}"
    return None


def _three_relation(objs: Sequence[ShapeObject], rng: random.Random) -> str:
    a, b, c = _shuffled(objs, rng)
    pa, pb, pc = (_noun_phrase(o, rng, with_size=False) for o in (a, b, c))
    return f"a {pa} {relation(a, b, rng)} a {pb}, and a {pc}"


def _three_the_is(objs: Sequence[ShapeObject], rng: random.Random) -> str | None:
    """'the red circle is above the blue star and the green box', when true for both."""
    a, b, c = _shuffled(objs, rng)
    rel_b, rel_c = relation(a, b, rng), relation(a, c, rng)
    if {rel_b, rel_c} <= {"below", "under"}:
        rel_c = rel_b  # synonyms of the same relation: say it once
    if rel_b != rel_c:
        return None
    pa, pb, pc = (_noun_phrase(o, rng, with_size=False) for o in (a, b, c))
    return f"the {pa} is {rel_b} the {pb} and the {pc}"


_TEMPLATES: dict[int, tuple[Template, ...]] = {
    1: (
        _one_plain,
        _one_position,
        _one_there_is,
        _one_single,
        _one_that_is,
        _one_image_of,
        _one_count_position,
    ),
    2: (_two_relation, _two_and, _two_count, _two_there_are, _two_positions, _two_the_is),
    3: (
        _three_count,
        _three_there_are,
        _three_list,
        _three_ordered,
        _three_relation,
        _three_the_is,
    ),
}


def describe_scene(scene: Scene, rng: random.Random, n_captions: int = 5) -> list[str]:
    """Return `n_captions` distinct captions, each naming every object's colour and shape.

    Templates are tried in a random order; when they run out before enough distinct captions
    were found they are reused, which still varies the wording through synonyms and the order
    in which objects are mentioned.
    """
    templates = _TEMPLATES[len(scene.objects)]
    order = rng.sample(templates, len(templates))
    captions: list[str] = []
    for attempt in range(50 * n_captions):
        caption = order[attempt % len(order)](scene.objects, rng)
        if caption is not None and caption not in captions:
            captions.append(caption)
            if len(captions) == n_captions:
                return captions
    raise RuntimeError(f"could not word {n_captions} distinct captions for {scene}")


def tokens(caption: str) -> list[str]:
    """Lowercase words with punctuation dropped, as stored in the Karpathy json."""
    return re.findall(r"[a-z]+", caption.lower())


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row coordinates of every pixel (cached: the same for every image)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def _background_tones(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two dark, low-saturation tones, so no object colour can blend into the background."""
    first = rng.uniform(25, 105) + rng.uniform(-12, 12, size=3)
    contrast = rng.uniform(20, 45) * rng.choice((-1.0, 1.0))
    second = first + contrast + rng.uniform(-8, 8, size=3)
    return tuple(int(v) for v in first.clip(10, 130)), tuple(int(v) for v in second.clip(10, 130))


def _texture_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel weight (uint8, 0-255) of the second background tone for the given texture.

    Integer bit tricks instead of float `//` and `%`: several times faster in numpy.
    """
    xs, ys = _pixel_grid(size)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    if kind == "plain":
        return np.zeros((size, size), np.uint8)
    if kind == "stripes":
        width = rng.uniform(0.03, 0.08) * size
        band = (along - along.min()) / width
        return (band.astype(np.int32) & 1).astype(np.uint8) * 255
    if kind == "checker":
        cell = rng.uniform(0.05, 0.14) * size
        cells = (xs / cell).astype(np.int32) + (ys / cell).astype(np.int32)
        return (cells & 1).astype(np.uint8) * 255
    if kind == "gradient":
        return ((along - along.min()) * (255 / (along.max() - along.min()))).astype(np.uint8)
    if kind == "noise":
        # Blotches: a coarse random grid upsampled smoothly, like a mottled surface.
        cells = int(rng.integers(4, 11))
        coarse = Image.fromarray(rng.integers(0, 256, (cells, cells), dtype=np.uint8))
        return np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))
    raise ValueError(f"unknown background {kind!r}; expected one of {', '.join(BACKGROUNDS)}")


def _background(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A textured background image of the given kind."""
    first, second = _background_tones(rng)
    mask = Image.fromarray(_texture_mask(kind, size, rng))
    # PIL blends in C; the same blend with numpy broadcasting over RGB is ~10x slower.
    return Image.composite(
        Image.new("RGB", (size, size), second), Image.new("RGB", (size, size), first), mask
    )


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Polygon vertices of a shape with bounding radius about 1, centred on the origin."""
    if shape == "square":
        s = 0.8  # a square of half-side 0.8 has about the area of the other shapes
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]
    if shape == "triangle":
        # Equilateral, shifted down so its bounding box (not its centroid) is centred.
        return [(math.cos(a) * 1.1, math.sin(a) * 1.1 + 0.25) for a in _angles(3, -90)]
    if shape == "star":
        radii = [1.0 if i % 2 == 0 else 0.45 for i in range(10)]
        return [
            (r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, _angles(10, -90), strict=True)
        ]
    if shape == "cross":
        w = 0.34  # half-width of each arm: thick enough to stay bold when small
        return [
            (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
            (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _angles(n: int, start_degrees: float) -> list[float]:
    """`n` evenly spaced angles in radians, starting at `start_degrees`."""
    return [math.radians(start_degrees + 360.0 * i / n) for i in range(n)]


def _draw_object(
    draw: ImageDraw.ImageDraw, obj: ShapeObject, size: int, fill: tuple[int, ...]
) -> None:
    """Draw one object onto a canvas `size` pixels square."""
    cx, cy, r = obj.x * size, obj.y * size, obj.radius * size
    if obj.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        return
    cos, sin = math.cos(math.radians(obj.angle)), math.sin(math.radians(obj.angle))
    points = [
        (cx + r * (px * cos - py * sin), cy + r * (px * sin + py * cos))
        for px, py in _unit_outline(obj.shape)
    ]
    draw.polygon(points, fill=fill)


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene as an RGB image `image_size` pixels square."""
    canvas_size = image_size * _SUPERSAMPLE
    # The texture needs no anti-aliasing: make it at the final size (4x fewer pixels to compute)
    # and only blow it up for drawing the objects.
    background = _background(scene.background, image_size, rng)
    canvas = background.resize((canvas_size, canvas_size), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
        fill = tuple(
            min(255, max(0, c + int(j))) for c, j in zip(COLOURS[obj.colour], jitter, strict=True)
        )
        _draw_object(draw, obj, canvas_size, fill)
    image = canvas.reduce(_SUPERSAMPLE)
    # A little sensor-like noise, so flat regions are not perfectly flat.
    noise = rng.integers(-_PIXEL_NOISE, _PIXEL_NOISE + 1, (image_size, image_size, 3), np.int16)
    noisy = np.asarray(image, np.int16) + noise  # uniform integer noise: ~10x faster than normal
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------


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
