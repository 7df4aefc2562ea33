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

from captionkit.data.shapes.captions import describe_scene, position_phrase, relation, tokens
from captionkit.data.shapes.dataset import make_shapes
from captionkit.data.shapes.drawing import render_scene
from captionkit.data.shapes.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    Scene,
    ShapeObject,
    sample_scene,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "SHAPES",
    "SHAPE_WORDS",
    "SIZES",
    "SIZE_WORDS",
    "Scene",
    "ShapeObject",
    "describe_scene",
    "make_shapes",
    "position_phrase",
    "relation",
    "render_scene",
    "sample_scene",
    "tokens",
]
