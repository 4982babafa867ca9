"""A bounded hand-off from reader tasks to one batcher, without a wakeup per item.

``asyncio.Queue`` wakes the consumer for every item, and a batcher that waits
with a timeout pays for a timer per item too: with thousands of events a
second that costs the event loop more than the work it feeds (measured on the
archive sink and the runner). Here readers append to a list and wake the
batcher only when what it waits for is there: the first item, or as many as
it asked for.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")

_NOBODY = 1 << 62  # no batcher waiting: appending wakes no one


class Intake(Generic[T]):
    """Items from readers, waiting to be batched; readers wait while ``limit`` are held."""

    def __init__(self, limit: int) -> None:
        self._items: list[T] = []
        self._limit = limit
        self._want = _NOBODY
        self._ready: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        while len(self._items) >= self._limit:
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)  # several readers may wait on it; cancelling one must not wake the rest
        self._items.append(item)
        if len(self._items) >= self._want:
            self.wake()

    def take(self, n: int) -> list[T]:
        """Up to ``n`` items, oldest first; makes room for the readers."""
        batch = self._items[:n]
        del self._items[:n]
        if self._room is not None and not self._room.done():
            self._room.set_result(None)
        return batch

    async def wait(self, want: int, at_most_s: float) -> None:
        """Until ``want`` items are held, ``at_most_s`` pass or ``wake`` is called."""
        if len(self._items) >= want:
            return
        loop = asyncio.get_running_loop()
        self._want = want
        self._ready = ready = loop.create_future()
        timer = loop.call_later(at_most_s, self.wake)
        try:
            await ready
        finally:
            timer.cancel()
            self._ready = None
            self._want = _NOBODY

    def wake(self, *_: object) -> None:
        """Wake the batcher now (also a done-callback for reader tasks and stop events)."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
