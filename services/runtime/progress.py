"""Progress of work on a worker thread, streamed to an async caller: the shape of every server-streaming
method whose model runs long (SegmentVolume's windows, GenerateImage's denoising steps)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any


class WorkerProgress:
    """Events a worker thread reports, as an async stream that ends with the work's result; and the flag that
    tells the worker its caller has gone."""

    def __init__(self, event: Callable[..., Any]):
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()
        self._event = event
        self.cancelled = threading.Event()

    def report(self, *fields) -> None:
        """One event, built from ``fields``; safe from any thread."""
        self._loop.call_soon_threadsafe(self._events.put_nowait, self._event(*fields))

    async def stream(self, work: asyncio.Future) -> AsyncIterator[Any]:
        """Each event reported while ``work`` runs, then those still queued, then ``work``'s result. Leaving
        early (the caller cancelled, or its deadline passed) sets ``cancelled`` and cancels ``work``."""
        waiting = None
        try:
            while not work.done():
                waiting = asyncio.ensure_future(self._events.get())
                await asyncio.wait({waiting, work}, return_when=asyncio.FIRST_COMPLETED)
                if waiting.done():
                    yield waiting.result()
                else:
                    waiting.cancel()   # the work ended first: what it reported is still in the queue
            while not self._events.empty():
                yield self._events.get_nowait()
            yield work.result()
        finally:
            self.cancelled.set()
            work.cancel()
            if waiting is not None:
                waiting.cancel()
