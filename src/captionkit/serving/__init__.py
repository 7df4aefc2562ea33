"""Using a trained model: the `Captioner` Python API."""

from captionkit.serving.captioner import Caption, Captioner

__all__ = ["Caption", "Captioner"]
