"""Decoding image files the same way everywhere: 8-bit RGB, EXIF rotation applied, transparency
on white, 16-bit scaled, and images over the decompression-bomb limit refused unread."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

# PIL's own decompression-bomb limit; images above it are refused before any pixel is decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageTooLarge(ValueError):
    """An image whose header announces more pixels than the limit."""


def load_image(path: Path | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """Open an image file (or an open binary file, e.g. an upload) as 8-bit RGB, EXIF rotation
    applied and transparency composited on white.

    Raises FileNotFoundError, ImageTooLarge, or OSError/ValueError for files PIL cannot decode."""
    try:
        im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e)) from None
    max_pixels = max_pixels or MAX_PIXELS  # looked up at call time so tests can lower it
    with im:
        if im.width * im.height > max_pixels:
            raise ImageTooLarge(
                f"{im.width}x{im.height} pixels is over the limit of {max_pixels} (not decoded)"
            )
        return _to_rgb(ImageOps.exif_transpose(im))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: convert("RGB") would clip
        peak = 65535 if im.mode.startswith("I;16") else max(int(np.asarray(im).max()), 1)
        pixels = np.asarray(im, dtype=np.float64) * (255.0 / peak)
        im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return im.convert("RGB")


def open_or_problem(path: Path) -> tuple[Image.Image | None, list[str] | None]:
    """`(image, None)`, or `(None, [problem kind, detail])` for a file that cannot be used."""
    from captionkit.data.problems import MISSING_IMAGE, TOO_LARGE_IMAGE, UNREADABLE_IMAGE

    try:
        return load_image(path), None
    except FileNotFoundError:
        return None, [MISSING_IMAGE, "image file not found"]
    except ImageTooLarge as e:
        return None, [TOO_LARGE_IMAGE, f"image too large: {e}"]
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on bad files
        return None, [UNREADABLE_IMAGE, f"cannot read image ({type(e).__name__}: {e})"]
