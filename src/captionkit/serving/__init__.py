"""Using a trained model: the `Captioner` Python API."""

from captionkit.serving.captioner import AttendedCaption, Caption, Captioner

__all__ = ["AttendedCaption", "Caption", "Captioner"]
