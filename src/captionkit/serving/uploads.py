"""Uploaded images, checked against the service's limits before any decoding, and a guard on
the size of request bodies."""

from __future__ import annotations

import io
import json

from fastapi import UploadFile
from PIL import Image

from captionkit.data.image_files import ImageTooLarge, load_image
from captionkit.serving.settings import ServeSettings


class ApiError(Exception):
    """A request the service refuses: an HTTP status and one line naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before it is read any further
    (from its Content-Length when it declares one, else while it streams in)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        seen, refused = 0, False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        async def guarded_send(message):
            # The app may turn the exception from `receive` into an error of its own (FastAPI
            # answers 400 to a body it could not parse): the answer is 413 all the same.
            nonlocal refused
            if seen <= self.limit:
                await send(message)
            elif not refused:
                refused = True
                await self._refuse(send)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not refused:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"request body is over the limit of {self.limit} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
