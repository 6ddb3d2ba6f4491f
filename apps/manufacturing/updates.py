"""A change counter the pages' Server-Sent Events wait on: whoever changes the fleet bumps it."""

from __future__ import annotations

import asyncio


class FleetUpdates:
    def __init__(self):
        self.version = 0
        self.closed = False
        self._changed = asyncio.Condition()

    async def bump(self) -> None:
        async with self._changed:
            self.version += 1
            self._changed.notify_all()

    async def wait_newer(self, seen: int, timeout: float) -> int:
        """The version once it is past ``seen`` (or after ``timeout`` seconds, or on close)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.version > seen or self.closed), timeout)
            except TimeoutError:
                pass
            return self.version

    async def close(self) -> None:
        """Ends every stream: the process is draining."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()
