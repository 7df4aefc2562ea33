"""Uploaded images, checked against the service's limits before any decoding."""

from __future__ import annotations

import io

from fastapi import UploadFile
from PIL import Image

from captionkit.data.image_files import ImageTooLarge, load_image
from captionkit.serving.settings import ServeSettings


class ApiError(Exception):
    """A request the service refuses: an HTTP status and one line naming the problem."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def upload_name(upload: UploadFile, index: int) -> str:
    """How errors and answers name an upload: its file name, or its position."""
    return upload.filename or f"file #{index + 1}"


async def read_uploads(uploads: list[UploadFile], settings: ServeSettings) -> list[bytes]:
    """The bytes of each upload; 422 for none or too many files, 413 for one too large."""
    if not uploads:
        raise ApiError(422, "no image: send one or more files in the form field 'file'")
    if len(uploads) > settings.max_files:
        raise ApiError(
            422, f"{len(uploads)} files is over the limit of {settings.max_files} per request"
        )
    contents = []
    for i, upload in enumerate(uploads):
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(
                413,
                f"{upload_name(upload, i)}: file is over the limit of "
                f"{settings.max_upload_bytes} bytes",
            )
        contents.append(data)
    return contents


def decode_upload(name: str, data: bytes, max_pixels: int) -> Image.Image:
    """The uploaded image as RGB; 422 above `max_pixels` (refused from its header, not decoded),
    400 for a file that is not a readable image, both naming the file."""
    if not data:
        raise ApiError(400, f"{name}: empty file")
    try:
        image = load_image(io.BytesIO(data), max_pixels=max_pixels)
        image.load()
        return image
    except ImageTooLarge as e:
        raise ApiError(422, f"{name}: image too large: {e}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ApiError(400, f"{name}: cannot read image ({type(e).__name__}: {e})") from None
