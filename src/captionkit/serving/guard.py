"""The limits that protect the service from its clients, applied before the app sees a request:
how many caption requests it holds and how many bodies it receives at once (503 with
Retry-After beyond them), and how large and how slow a request body may be (413, 408)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from captionkit.serving.settings import ServeSettings

GUARDED_PATH = "/caption"
"""The route whose requests count against `max_queue` and `max_uploads` (the others are cheap:
/health must answer while the service is full)."""


@dataclass
class Load:
    """The guarded requests in the server now (shown by `GET /health`)."""

    in_flight: int = 0
    """Admitted and not yet answered: uploading, waiting for the model or being captioned."""
    uploading: int = 0
    """Admitted and still receiving their body."""


class Refused(Exception):
    """A request the guard answers itself: a status, one line, and headers."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def server_busy(settings: ServeSettings, why: str) -> Refused:
    """The 503 of a server that holds all it may, with when to try again (Retry-After)."""
    wait = settings.retry_after_s
    return Refused(503, f"server busy: {why}, try again in {wait} s", {"retry-after": str(wait)})


class RequestGuard:
    """ASGI middleware enforcing `settings`' request limits and counting into `load`."""

    def __init__(self, app, settings: ServeSettings, load: Load):
        self.app, self.settings, self.load = app, settings, load

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        guarded = scope["path"] == GUARDED_PATH and scope["method"] == "POST"
        try:
            if guarded:
                self._admit()
            self._check_length(scope)
        except Refused as refusal:
            return await _answer(send, refusal)
        if not guarded:
            return await self._run(scope, receive, send, counted=False)
        self.load.in_flight += 1
        self.load.uploading += 1
        try:
            await self._run(scope, receive, send, counted=True)
        finally:
            self.load.in_flight -= 1

    def _admit(self) -> None:
        """503 at once, before the body is read, when the server holds all it may: waiting would
        only turn into a timeout, and Retry-After tells a well-behaved client when to return."""
        s, load = self.settings, self.load
        if load.in_flight >= s.max_queue:
            busy = f"{load.in_flight} requests are already in the server"
        elif load.uploading >= s.max_uploads:
            busy = f"{load.uploading} uploads are already in progress"
        else:
            return
        raise server_busy(s, busy)

    def _check_length(self, scope) -> None:
        length = dict(scope["headers"]).get(b"content-length")
        limit = self.settings.max_request_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise Refused(413, f"request body is over the limit of {limit} bytes")

    async def _run(self, scope, receive, send, counted: bool) -> None:
        body = _Body(receive, self.settings)
        refused = False

        async def guarded_receive():
            done = body.done
            try:
                return await body.receive()
            finally:
                if counted and body.done and not done:
                    self.load.uploading -= 1

        async def guarded_send(message):
            # The app may turn the exception from `receive` into an error of its own (FastAPI
            # answers 400 to a body it could not parse): the guard's answer goes instead.
            nonlocal refused
            if body.refusal is None:
                await send(message)
            elif not refused:
                refused = True
                await _answer(send, body.refusal)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Refused:
            if not refused:
                await _answer(send, body.refusal)
        finally:
            if counted and not body.done:  # an answer before the whole body, or a disconnect
                self.load.uploading -= 1


class _Body:
    """A request body as it arrives, cut off (`Refused`, kept in `refusal`) when it grows over
    the size limit, stalls for `body_timeout_s`, or arrives slower than `min_body_rate` once it
    has taken `body_timeout_s`: a client trickling bytes would otherwise hold its upload slot and
    its memory for as long as it likes. Only the time spent waiting for the client counts: a
    server too busy to read the body at once does not make its client slow."""

    def __init__(self, receive, settings: ServeSettings):
        self._receive, self.settings = receive, settings
        self.seen, self.waited, self.done, self.refusal = 0, 0.0, False, None

    async def receive(self) -> dict:
        if self.done:  # after the body only a disconnect is left to wait for, however long
            return await self._receive()
        loop = asyncio.get_running_loop()
        start, timeout = loop.time(), self._timeout()
        try:
            if timeout is None:
                message = await self._receive()
            else:  # never 0: data already there must still be read (wait_for(x, 0) would not)
                message = await asyncio.wait_for(self._receive(), max(timeout, 0.01))
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            raise self._refuse(408, self._too_slow(loop.time() - start)) from None
        finally:
            self.waited += loop.time() - start
        if message["type"] != "http.request":  # http.disconnect
            self.done = True
            return message
        self.seen += len(message.get("body", b""))
        self.done = not message.get("more_body", False)
        limit = self.settings.max_request_bytes
        if self.seen > limit:
            raise self._refuse(413, f"request body is over the limit of {limit} bytes")
        return message

    def _timeout(self) -> float | None:
        """Seconds the next chunk may take: to a stall, or to when the body's average rate falls
        under the floor (None: no limit)."""
        s = self.settings
        if not s.body_timeout_s:
            return None
        if not s.min_body_rate:
            return s.body_timeout_s
        floor = max(s.body_timeout_s, self.seen / s.min_body_rate) - self.waited
        return min(s.body_timeout_s, floor)

    def _too_slow(self, waited: float) -> str:
        s = self.settings
        if waited >= s.body_timeout_s:
            return f"request body timed out: nothing arrived for {s.body_timeout_s:g} s"
        return (
            f"request body too slow: {self.seen} bytes in {self.waited + waited:.0f} s, under "
            f"the floor of {s.min_body_rate} bytes/s"
        )

    def _refuse(self, status: int, message: str) -> Refused:
        self.refusal = Refused(status, message)
        return self.refusal


async def _answer(send, refusal: Refused) -> None:
    body = json.dumps({"error": refusal.message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in refusal.headers.items()),
    ]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
