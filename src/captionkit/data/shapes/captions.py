"""Captions of the shapes dataset: five differently worded references per scene, each naming the
colour and shape of every object and, for two or three objects, where they are."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from captionkit.data.shapes.scenes import SHAPE_WORDS, SIZE_WORDS, Scene, ShapeObject

_COUNT_NOUNS = ("shapes", "objects")


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
