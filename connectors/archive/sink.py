"""The archive sink: every stream into DuckDB, as a consumer group of its own.

It subscribes ``>`` (every stream but the DLQ) and ``dlq.>`` under one group
(``archive``), from the first stored event. Per batch, in this order:

1. collect up to ``batch_size`` deliveries, or what arrived within
   ``max_wait_s`` of the batch's first one;
2. write them in one DuckDB transaction (``Archive.write``: new ids inserted,
   ids already archived skipped), in a worker thread while step 1 gathers the
   next batch;
3. once COMMIT has returned, ack every delivery of the batch;
4. hand the running ``SinkStats`` to ``on_batch``.

A crash before step 3 leaves the batch unacked: the broker redelivers it and
step 2 skips whatever the first attempt stored, so restarts and redeliveries
never duplicate rows. A write that fails stops the sink with the error and
acks nothing. On ``stop`` the sink leaves the group's subscriptions, commits
what it already holds, acks it and returns.

Up to four batches are unacked at once (one being written, one filling, two
fetched ahead), so the broker's ack window must hold them or batches commit
part-full after ``max_wait_s``: open the sink's bus with ``sink_bus_config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.archive.serve import QueryServer
from connectors.archive.store import Archive, WriteResult
from streams.bus import Bus, Delivery
from streams.config import BusConfig
from streams.errors import StreamError

log = logging.getLogger("spine.archive.sink")

OnBatch = Callable[["SinkStats"], Awaitable[None] | None]


@dataclass(slots=True)
class SinkStats:
    """Running totals of a sink, handed to ``on_batch`` after every commit."""

    batches: int = 0
    received: int = 0
    inserted: int = 0
    dead_letters: int = 0
    queries: int = 0
    last: WriteResult | None = None
    started: float = field(default_factory=time.monotonic)
    last_commit: float | None = None

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted

    @property
    def rate(self) -> float:
        """Events received per second since the start."""
        elapsed = time.monotonic() - self.started
        return self.received / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "batches": self.batches,
            "received": self.received,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "dead_letters": self.dead_letters,
            "queries_served": self.queries,
            "seconds": round(time.monotonic() - self.started, 3),
        }


def sink_bus_config(config: BusConfig, batch_size: int) -> BusConfig:
    """``config`` with an ack window for four batches: the NATS and Kafka transports allow
    ``8 * fetch_batch`` unacked deliveries per consumer."""
    fetch = min(10_000, max(config.fetch_batch, -(-batch_size // 2)))
    return config.model_copy(update={"fetch_batch": fetch})


async def run_sink(
    bus: Bus,
    archive: Archive,
    *,
    stop: asyncio.Event,
    batch_size: int = 5000,
    max_wait_s: float = 1.0,
    on_batch: OnBatch | None = None,
    group: str = "archive",
    tenant: str = "*",
    serve: bool = True,
) -> SinkStats:
    """Archive every stream until ``stop`` is set; see the module docstring for the protocol.

    ``serve`` answers read-only queries from other processes while this one
    holds the file (``store`` explains why). Returns the final totals.
    """
    if batch_size < 1 or max_wait_s <= 0:
        raise ValueError("batch_size must be >= 1 and max_wait_s > 0")
    stats = SinkStats()
    queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=batch_size * 2)
    server = QueryServer(archive) if serve else None
    if server is not None:
        await server.start()
    pumps = [
        asyncio.create_task(_pump(bus, pattern, group, tenant, queue), name=f"archive-pump {pattern}")
        for pattern in (">", "dlq.>")
    ]
    stopped = asyncio.create_task(stop.wait())
    inflight: _Inflight | None = None
    try:
        while True:
            writing = inflight.task if inflight is not None else None
            batch = await _collect(queue, batch_size, max_wait_s, stopped, pumps, writing)
            if inflight is not None:
                await inflight.settle(stats, on_batch, server)
                inflight = None
            if batch:
                inflight = _Inflight(batch, archive)
            if stop.is_set():
                break
        await _cancel(pumps)
        rest = _drain(queue)  # fetched before the stop: commit them now rather than wait for redelivery
        if inflight is not None:
            await inflight.settle(stats, on_batch, server)
            inflight = None
        if rest:
            await _Inflight(rest, archive).settle(stats, on_batch, server)
    finally:
        await _cancel([*pumps, stopped])
        if inflight is not None:  # an error elsewhere: let the write finish; ack only if it committed
            with contextlib.suppress(Exception):
                await inflight.settle(stats, None, server)
        if server is not None:
            stats.queries = server.queries
            await server.close()
    return stats


class _Inflight:
    """A batch being written in a worker thread."""

    def __init__(self, batch: list[Delivery], archive: Archive) -> None:
        self.batch = batch
        items = [(d.event, d.stream, d.seq) for d in batch]
        self.task = asyncio.create_task(asyncio.to_thread(archive.write, items))

    async def settle(self, stats: SinkStats, on_batch: OnBatch | None, server: QueryServer | None) -> None:
        result = await self.task  # raises if the write failed: nothing is acked
        for delivery in self.batch:
            try:
                await delivery.ack()
            except StreamError as exc:  # redelivered later, and skipped as already archived
                log.warning("ack of %s#%d failed after commit: %s", delivery.stream, delivery.seq, exc)
        stats.batches += 1
        stats.received += result.received
        stats.inserted += result.total_inserted
        stats.dead_letters += result.inserted.get("dead_letters", 0)
        stats.queries = server.queries if server is not None else 0
        stats.last = result
        stats.last_commit = time.monotonic()
        if on_batch is not None:
            outcome = on_batch(stats)
            if inspect.isawaitable(outcome):
                await outcome


async def _pump(bus: Bus, pattern: str, group: str, tenant: str, queue: asyncio.Queue[Delivery]) -> None:
    deliveries = bus.subscribe(pattern, group=group, tenant=tenant, start="all")
    try:
        async for delivery in deliveries:
            await queue.put(delivery)
    finally:
        aclose = getattr(deliveries, "aclose", None)
        if aclose is not None:
            await aclose()


async def _collect(
    queue: asyncio.Queue[Delivery],
    batch_size: int,
    max_wait_s: float,
    stopped: asyncio.Task[bool],
    pumps: list[asyncio.Task[None]],
    writing: asyncio.Task[WriteResult] | None,
) -> list[Delivery]:
    """The next batch. Returns early (maybe empty) when ``stop`` is set, or when the
    previous batch's write finished while nothing new has arrived (so it is acked now)."""
    loop = asyncio.get_running_loop()
    batch: list[Delivery] = []
    deadline: float | None = None
    while len(batch) < batch_size:
        try:
            batch.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            pass
        else:
            if deadline is None:
                deadline = loop.time() + max_wait_s
            continue
        for pump in pumps:
            if pump.done():
                raise pump.exception() or RuntimeError(f"{pump.get_name()} ended")
        if stopped.done() or (deadline is None and writing is not None and writing.done()):
            break
        timeout = 1.0 if deadline is None else deadline - loop.time()
        if timeout <= 0:
            break
        getter = asyncio.ensure_future(queue.get())
        waits: set[asyncio.Future[Any]] = {getter, stopped, *pumps}
        if deadline is None and writing is not None:
            waits.add(writing)
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            batch.append(getter.result())
            if deadline is None:
                deadline = loop.time() + max_wait_s
        else:
            getter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getter
    return batch


def _drain(queue: asyncio.Queue[Delivery]) -> list[Delivery]:
    rest = []
    while True:
        try:
            rest.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            return rest


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            log.debug("archive task ended with %r", result)
