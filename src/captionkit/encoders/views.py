"""Augmented views of images with cached features: data augmentation for a frozen encoder.

With a frozen encoder, a decoder trained on cached features sees each training image as one fixed
vector, and on a small dataset it learns those vectors by heart. View `k` of an image is a random
resized crop and horizontal flip (the fine-tuning augmentation) drawn from a generator seeded by
`k` and the image's file name, so a view is the same every time: its features are extracted once
and cached like the plain ones, in a store of its own (the view is part of the store's key). Each
epoch, training reads one view of every image, or the image itself (`training.feature_batches`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from captionkit.encoders.factory import ImageEncoder
from captionkit.encoders.finetune import augmenting_transform
from captionkit.errors import CaptionkitError


@dataclass(frozen=True)
class View:
    """One augmented view of every image."""

    index: int
    """Which view (1, 2, ...): with the file name, the seed of the crop and the flip."""
    crop_scale_min: float = 0.5
    """The crop keeps this fraction to all of the image's area (aspect 3/4..4/3)."""
    hflip: float = 0.5
    """Probability that the view is flipped horizontally."""

    def __post_init__(self):
        if self.index < 1:
            raise CaptionkitError(f"a view is numbered from 1, not {self.index}")
        if not 0 < self.crop_scale_min <= 1 or not 0 <= self.hflip <= 1:
            raise CaptionkitError(
                f"view {self.index}: crop_scale_min must be in (0, 1] and hflip in [0, 1], "
                f"not {self.crop_scale_min}, {self.hflip}"
            )

    def key(self) -> str:
        """What makes two stores of this view interchangeable (a part of the store's variant)."""
        return f"view={self.index}|crop={self.crop_scale_min}|hflip={self.hflip}"

    def seed(self, path: Path | str) -> int:
        """The seed of this view of the image at `path`: its file name, not where it lies, so a
        moved dataset gets the same views."""
        text = f"{self.key()}|{Path(path).name}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1

    def transform(self, encoder: ImageEncoder) -> SeededTransform:
        """PIL image, path -> this view of it, preprocessed for `encoder` (`[3, H, W]`)."""
        return SeededTransform(augmenting_transform(encoder, self.crop_scale_min, self.hflip), self)


class SeededTransform:
    """A random transform run under the view's seed for each image: the same output every time.
    Picklable, for the processes of a DataLoader."""

    def __init__(self, transform, view: View):
        self.transform, self.view = transform, view

    def __call__(self, image: Image.Image, path: Path | str) -> torch.Tensor:
        # torchvision's random transforms draw from torch's global generator; a forked one keeps
        # the caller's stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.view.seed(path))
            return self.transform(image)


def views(count: int, crop_scale_min: float, hflip: float) -> list[View]:
    """Views 1..count with these augmentation settings (count 0: none)."""
    return [View(k, crop_scale_min, hflip) for k in range(1, count + 1)]
