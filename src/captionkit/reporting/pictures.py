"""Pictures for reports, drawn with Pillow alone: thumbnails as data URIs and attention heat maps
over the image."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from captionkit.data.image_files import load_image

# The warm light added where a word looked (RGB, scaled by the attention squared).
_GLOW = np.array([255, 200, 60], dtype=np.float32)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at `size` pixels (the old bitmap font before Pillow 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def data_uri(image: Image.Image, fmt: str = "JPEG", quality: int = 82) -> str:
    """The image as a `data:` URI, so a page needs no files beside it."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
    else:
        image.save(buffer, fmt, optimize=True)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def thumbnail(path: Path, size: int = 224) -> Image.Image:
    """The image at `path`, upright RGB, shrunk to fit a `size` square (aspect kept)."""
    image = load_image(Path(path))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def heat_overlay(image: np.ndarray, attention: np.ndarray, size: int = 160) -> Image.Image:
    """One attention map [gh, gw] over the image [H, W, 3] uint8, as a `size` square: the map is
    upsampled smoothly and scaled to its own maximum, so each word shows where it looked most,
    but never by more than half the uniform weight: a flat map stays a flat half-tint instead of
    magnifying its noise."""
    base = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    grid = Image.fromarray(np.asarray(attention, dtype=np.float32), mode="F")
    heat = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    top = max(float(attention.max()), 2.0 / attention.size)
    heat = np.clip(heat / top, 0, 1)[..., None]  # [S, S, 1]
    # A spotlight: unattended regions dimmed, the most attended ones lit warmer; the photo stays
    # recognisable under every map, which a false-colour overlay would hide.
    pixels = np.asarray(base, dtype=np.float32)
    blended = pixels * (0.25 + 0.75 * heat) + _GLOW * 0.35 * heat**2
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def attention_strip(
    image: np.ndarray, tokens: list[str], attention: np.ndarray, size: int = 160, per_row: int = 6
) -> Image.Image:
    """The image, then one heat map per token with the token written under it, `per_row` tiles
    to a row: `captionkit caption --attention-map`'s picture."""
    tiles = [(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), "(image)")]
    tiles += [(heat_overlay(image, a, size), t) for t, a in zip(tokens, attention)]
    label_h, pad = size // 6, 6
    text_font = font(max(size // 10, 10))
    rows = (len(tiles) + per_row - 1) // per_row
    cols = min(per_row, len(tiles))
    sheet = Image.new(
        "RGB", (cols * (size + pad) + pad, rows * (size + label_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(tiles):
        x = pad + (i % per_row) * (size + pad)
        y = pad + (i // per_row) * (size + label_h + pad)
        sheet.paste(tile, (x, y))
        draw.text(
            (x + size / 2, y + size + label_h / 2), label, fill="black", font=text_font, anchor="mm"
        )
    return sheet
