"""The runner's merge of several input streams into event-time order.

A processor that reads several streams (the supervisor reads sessions,
heartbeats and decisions) would otherwise fold them in arrival order: when one
stream runs ahead, as after a restart, the other's events look late and the
live decisions differ from a replay of the archive, which reads every stream
in event-time order (ties by stream, in ``STREAM_ORDER``, then by position).

``StreamMerge`` holds what the readers hand over, a buffer per stream, and
releases the earliest head while every stream either has a record buffered or
has said it holds nothing more (``Bus.follow``'s ``caught_up``), as Kafka
Streams does across partitions. Within a stream the order is the stream's own
(positions only move forward). A stream that is behind but brings nothing for
``max_wait_s``, or more than ``max_held`` records held back, stops the wait:
the merge then releases what it has, in order, as before.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from streams.bus import Followed, Record, RowRecord, Undecodable
from streams.catalog import STREAM_ORDER

log = logging.getLogger("spine.streams.ordering")

K = TypeVar("K", bound=Hashable)


class TimeOrder(Generic[K]):
    """Records from several sources (streams, or a topic's partitions), each in order,
    released in event-time order.

    The earliest buffered head goes while every source either has a record
    buffered or is not ``behind`` (it holds nothing more that it has not
    handed over); equal times go by ``rank``, then by source. A source that is
    behind but brings nothing for ``max_wait_s``, or more than ``max_held``
    records held back, stops the wait: what is held then goes, in order.
    ``StreamMerge`` (the runner) and the Kafka follow's ``TimeMerge`` use it.
    """

    def __init__(
        self,
        sources: Iterable[K],
        *,
        source_of: Callable[[Record | RowRecord], K],
        rank: Callable[[K], int],
        behind: Callable[[K], bool],
        max_wait_s: float,
        max_held: int | None = None,
        what: str = "a source",
    ) -> None:
        self._buffers: dict[K, deque[Record | RowRecord]] = {s: deque() for s in sources}
        self._rank = {s: rank(s) for s in self._buffers}
        self._source_of = source_of
        self._behind = behind
        self._max_wait_s = max_wait_s
        self._max_held = max_held
        self._what = what
        self._blocked_since: float | None = None
        self._gave_up = False
        self.held = 0

    def push(self, record: Record | RowRecord) -> None:
        self._buffers[self._source_of(record)].append(record)
        self.held += 1

    def drained(self) -> bool:
        """Nothing held and no source behind."""
        return not self.held and not any(self._behind(s) for s in self._buffers)

    def release(self, now: float) -> list[Record | RowRecord]:
        """What can go now, in order."""
        if not self.held or self._waiting(now):
            return []
        buffers = self._buffers
        heads = [(buf[0].time, self._rank[s], s) for s, buf in buffers.items() if buf]
        heapq.heapify(heads)
        out: list[Record | RowRecord] = []
        while heads:
            _, rank, source = heads[0]
            buf = buffers[source]
            out.append(buf.popleft())
            if buf:
                heapq.heapreplace(heads, (buf[0].time, rank, source))
                continue
            heapq.heappop(heads)
            if self._blocked_since is None and self._behind(source):
                break  # its next record may be earlier than the other heads: wait for it
        self.held -= len(out)
        return out

    def _waiting(self, now: float) -> bool:
        if not any(not buf and self._behind(s) for s, buf in self._buffers.items()):
            self._blocked_since = None
            self._gave_up = False
            return False
        if self._blocked_since is None:
            self._blocked_since = now
        if now - self._blocked_since < self._max_wait_s and (self._max_held is None or self.held < self._max_held):
            return True
        if not self._gave_up:
            self._gave_up = True
            log.warning("%s is behind but brings nothing: merging without it (%d records held)", self._what, self.held)
        return False


def _stream_rank(stream: str) -> int:
    return STREAM_ORDER.index(stream) if stream in STREAM_ORDER else len(STREAM_ORDER)


class StreamMerge:
    """The runner's input streams in event-time order (see the module docstring).

    The runner's readers call ``yielded`` for each record they hand over and
    ``caught_up`` when ``Bus.follow`` says so; a stream is behind until the
    merge has received everything its reader yielded up to its last report.
    """

    def __init__(self, streams: Iterable[str], max_wait_s: float = 2.0, max_held: int = 50_000) -> None:
        names = list(streams)
        self._yielded = dict.fromkeys(names, 0)  # by the reader
        self._received = dict.fromkeys(names, 0)  # by the merge
        self._reported = dict.fromkeys(names, -1)  # yielded count when the reader was last caught up
        self._order = TimeOrder(
            names,
            source_of=_stream_of,
            rank=_stream_rank,
            behind=self._behind,
            max_wait_s=max_wait_s,
            max_held=max_held,
            what="a stream",
        )

    @property
    def held(self) -> int:
        return self._order.held

    def yielded(self, stream: str) -> None:
        self._yielded[stream] += 1

    def caught_up(self, stream: str) -> None:
        self._reported[stream] = self._yielded[stream]

    def _behind(self, stream: str) -> bool:
        """Whether ``stream`` may still bring records earlier than the other heads."""
        return self._reported[stream] != self._yielded[stream] or self._received[stream] != self._yielded[stream]

    def release(self, batch: Iterable[Followed], now: float) -> list[Followed]:
        """Take ``batch`` from the readers; give back what can be folded now, in order."""
        out: list[Followed] = []
        for item in batch:
            self._received[item.stream] += 1
            if isinstance(item, Undecodable):
                out.append(item)  # no event time: dead-lettered at once
            else:
                self._order.push(item)
        out.extend(self._order.release(now))
        return out


def _stream_of(record: Record | RowRecord) -> str:
    return record.stream
