"""Pictures for reports, drawn with Pillow alone: thumbnails as data URIs and attention heat maps
over the image."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from captionkit.data.images import load_image

# Anchor colours of the heat map, low to high attention (a dark-to-yellow "inferno"-like ramp).
_RAMP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


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


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape [...] -> RGB float [..., 3] along `_RAMP`."""
    position = np.clip(values, 0, 1) * (len(_RAMP) - 1)
    low = np.minimum(position.astype(int), len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


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
    # Unattended regions are dimmed, attended ones tinted by the ramp: readable on any photo.
    pixels = np.asarray(base, dtype=np.float32)
    blended = pixels * (0.35 + 0.4 * heat) + colormap(heat[..., 0]) * (0.25 + 0.2 * heat)
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def attention_strip(image: np.ndarray, tokens: list[str], attention: np.ndarray,
                    size: int = 160, per_row: int = 6) -> Image.Image:  # fmt: skip
    """The image, then one heat map per token with the token written under it, `per_row` tiles
    to a row: `captionkit caption --attention-map`'s picture."""
    tiles = [(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), "(image)")]
    tiles += [(heat_overlay(image, a, size), t) for t, a in zip(tokens, attention)]
    label_h, pad = size // 6, 6
    text_font = font(max(size // 10, 10))
    rows = (len(tiles) + per_row - 1) // per_row
    cols = min(per_row, len(tiles))
    sheet = Image.new("RGB", (cols * (size + pad) + pad, rows * (size + label_h + pad) + pad),
                      "white")  # fmt: skip
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(tiles):
        x = pad + (i % per_row) * (size + pad)
        y = pad + (i // per_row) * (size + label_h + pad)
        sheet.paste(tile, (x, y))
        draw.text((x + size / 2, y + size + label_h / 2), label, fill="black", font=text_font,
                  anchor="mm")  # fmt: skip
    return sheet
