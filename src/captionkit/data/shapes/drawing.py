"""Drawing a shapes scene: bold anti-aliased objects on a textured dark background, with a
little pixel noise."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from captionkit.data.shapes.scenes import BACKGROUNDS, COLOURS, SHAPES, Scene, ShapeObject

_SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing
_PIXEL_NOISE = 4  # pixel noise is uniform in [-4, 4] per channel
_COLOUR_JITTER = 12  # per-channel jitter of object colours, well below the gaps between colours


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
