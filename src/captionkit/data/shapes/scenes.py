"""Scenes of the shapes dataset: what each image shows (objects, their colour, shape, size and
place, and the background), drawn at random without overlaps."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

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

# Radius as a fraction of the image side. Large objects are about twice the size of small ones
# so "small" / "large" is visible even after the 160 -> 224 resize of the feature extractor.
_RADIUS_RANGE = {"small": (0.085, 0.11), "large": (0.17, 0.21)}
_OBJECT_COUNT_WEIGHTS = (0.3, 0.4, 0.3)  # for 1, 2, 3 objects: relations need 2+
_EDGE_MARGIN = 0.02  # keep objects fully inside the image
_MIN_GAP = 0.02  # extra distance between objects' bounding circles, so they never overlap
_PLACEMENT_TRIES = 60
_MAX_ANGLE = 10.0  # degrees of rotation jitter; small so a square never turns into a diamond


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
