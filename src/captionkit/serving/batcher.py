"""Micro-batching: concurrent requests captioned together in one model call.

Requests wait in a queue; the batching task takes the first, waits up to `max_wait_ms` for more
(up to `batch_size` images), and runs the model on them in one worker thread. While the model
runs, new requests queue up, so under load the batches grow by themselves and throughput with
them; a lone request waits at most `max_wait_ms` more than it would alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


class QueueFull(RuntimeError):
    """More requests are waiting than the queue holds."""


@dataclass
class _Job:
    items: list
    key: Hashable
    future: asyncio.Future


@dataclass
class BatchStats:
    """What the batcher has done so far (shown by `GET /health`)."""

    batches: int = 0
    """Model calls made."""
    items: int = 0
    """Images captioned."""
    largest: int = 0
    """Images in the largest batch."""
    sizes: deque = field(default_factory=lambda: deque(maxlen=100))
    """Images in each of the last 100 batches."""


class MicroBatcher:
    """Runs `run(items, key) -> one result per item` on batches of queued items that share a
    `key` (e.g. the decoding options), in one worker thread, from an asyncio event loop."""

    def __init__(
        self,
        run: Callable[[list, Hashable], list],
        batch_size: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 1024,
    ):
        self.run, self.batch_size, self.max_queue = run, batch_size, max_queue
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One thread: model calls never overlap (torch already uses every core in each).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captionkit-model")

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        """Requests queued for the model."""
        return len(self._jobs)

    async def submit(self, items: list, key: Hashable) -> list:
        """The results for `items`, once their batch has run (its exception if it failed)."""
        if self._task is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if len(self._jobs) >= self.max_queue:
            raise QueueFull(f"{len(self._jobs)} requests are already waiting")
        job = _Job(items, key, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._arrived.set()
        return await job.future

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            by_key: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # a client that went away: no need to caption
                    by_key.setdefault(job.key, []).append(job)
            for key, group in by_key.items():
                await self._run_group(key, group)

    async def _collect(self) -> list[_Job]:
        """The next batch: the first queued request, then whatever arrives within `max_wait`
        while the batch has room. A request is never split; one too big to join goes next."""
        while not self._jobs:
            self._arrived.clear()
            await self._arrived.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        jobs = [self._jobs.popleft()]
        size = len(jobs[0].items)
        while size < self.batch_size:
            while self._jobs and size + len(self._jobs[0].items) <= self.batch_size:
                size += len(self._jobs[0].items)
                jobs.append(self._jobs.popleft())
            remaining = deadline - loop.time()
            if size >= self.batch_size or remaining <= 0 or self._jobs:
                break  # full, out of time, or the next request does not fit
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return jobs

    async def _run_group(self, key: Hashable, group: list[_Job]) -> None:
        items = [item for job in group for item in job.items]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.run, items, key)
        except Exception as e:  # the requests fail, the batcher goes on
            for job in group:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest = max(self.stats.largest, len(items))
        self.stats.sizes.append(len(items))
        start = 0
        for job in group:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)
