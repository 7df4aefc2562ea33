"""The HTTP service's limits and micro-batching settings."""

from __future__ import annotations

from dataclasses import dataclass

from captionkit.errors import CaptionkitError


@dataclass
class ServeSettings:
    """What `captionkit serve` accepts and how it batches requests on the model."""

    max_upload_bytes: int = 10 * 1024 * 1024
    """Largest image file accepted (413 above it); a request may carry `max_files` of them."""
    max_pixels: int = 40_000_000
    """Most pixels (width x height) in one image, read from its header before decoding (422)."""
    max_files: int = 16
    """Most images in one request (422 above it)."""
    max_beam_size: int = 10
    """Largest beam size a request may ask for (422 above it)."""
    batch_size: int = 32
    """Most images captioned together in one model batch (1: no micro-batching)."""
    max_wait_ms: float = 10.0
    """How long the first request of a batch waits for others to join it (0: no waiting)."""
    # 128: four full batches of single images. Every request held keeps its decoded images in
    # memory, and one held longer than the model takes to reach it within `request_timeout_s`
    # would end in a 504: a full server answers 503 at once instead.
    max_queue: int = 128
    """Most caption requests in the server at once (uploading, waiting or being captioned); one
    more gets 503 with Retry-After at once, before its body is read."""
    max_uploads: int = 64
    """Most request bodies being received at once; one more gets 503 with Retry-After at once."""
    body_timeout_s: float = 30.0
    """Longest a request body may go without a byte arriving (408 after it; 0: no time limit on
    the body, the rate floor included)."""
    min_body_rate: int = 512
    """Slowest a request body may arrive once it has taken the body timeout, in bytes per second
    of waiting for the client (408 below it; 0: no floor): a trickle cannot hold an upload."""
    retry_after_s: int = 2
    """The seconds a 503 asks the client to wait before it tries again (Retry-After)."""
    request_timeout_s: float = 120.0
    """Longest a request may take, its upload included (504 after it; 0: no limit)."""

    def __post_init__(self):
        for name in (
            "max_upload_bytes",
            "max_pixels",
            "max_files",
            "max_beam_size",
            "batch_size",
            "max_queue",
            "max_uploads",
            "retry_after_s",
        ):
            if getattr(self, name) < 1:
                raise CaptionkitError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_wait_ms", "request_timeout_s", "body_timeout_s", "min_body_rate"):
            if getattr(self, name) < 0:
                raise CaptionkitError(f"{name} must be 0 or more, not {getattr(self, name)}")

    @property
    def max_request_bytes(self) -> int:
        """The most a whole request body may hold: every file at its limit, plus room for the
        multipart headers and the form's options."""
        return self.max_files * (self.max_upload_bytes + 4096) + 65536
