"""Encoders: timm backbones that turn images into a pooled vector and a spatial grid, and the
on-disk feature store that runs them once per image."""

from captionkit.data.image_files import load_image
from captionkit.encoders.factory import DEFAULT_ENCODER, ImageEncoder, create_encoder
from captionkit.encoders.features import BuildReport, FeatureStore, extract_features

__all__ = [
    "BuildReport",
    "DEFAULT_ENCODER",
    "FeatureStore",
    "ImageEncoder",
    "create_encoder",
    "extract_features",
    "load_image",
]
