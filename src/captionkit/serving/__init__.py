"""Serving a trained run: the HTTP app (`app`, `batcher`, `uploads`, `server`), exporting it to
ONNX or TorchScript (`export`) and captioning with such an export (`exported_captioner`).
`Captioner`, the Python API, lives in `captionkit.evaluation.captioner`; it is re-exported here
(serving looks down to evaluation) so `from captionkit.serving import Captioner` keeps working."""

from captionkit.evaluation.captioner import AttendedCaption, Caption, Captioner

__all__ = ["AttendedCaption", "Caption", "Captioner"]
