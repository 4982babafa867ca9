"""The archive sink: every stream into DuckDB, as a consumer group of its own.

It subscribes ``>`` (every stream but the DLQ) and ``dlq.>`` under one group
(``archive``), from the first stored event. Per batch, in this order:

1. collect up to ``batch_size`` deliveries, or what arrived within
   ``max_wait_s`` of the batch's first one;
2. write them in one DuckDB transaction (``Archive.write``: new ids inserted,
   ids already archived skipped), in a worker thread while step 1 gathers the
   next batch;
3. once COMMIT has returned, ack every delivery of the batch (at once, not
   when the next batch is full: the event loop runs it between deliveries);
4. hand the running ``SinkStats`` to ``on_batch``.

A crash before step 3 leaves the batch unacked: the broker redelivers it and
step 2 skips whatever the first attempt stored, so restarts and redeliveries
never duplicate rows. A write that fails stops the sink with the error and
acks nothing. On ``stop`` the sink leaves the group's subscriptions, commits
what it already holds, acks it and returns.

Up to three batches are unacked at once (one being written, one filling, one
fetched ahead) plus what the transport prefetched, so the broker's ack window
must hold them or batches commit part-full after ``max_wait_s``: open the
sink's bus with ``sink_bus_config`` (room for four).
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
from streams.intake import Intake

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
    query_timeout_s: float | None = 60.0,
    query_max_rows: int | None = 1_000_000,
) -> SinkStats:
    """Archive every stream until ``stop`` is set; see the module docstring for the protocol.

    ``serve`` answers read-only queries from other processes while this one
    holds the file (``store`` explains why), each stopped after ``query_timeout_s`` and
    refused beyond ``query_max_rows``. Returns the final totals.
    """
    if batch_size < 1 or max_wait_s <= 0:
        raise ValueError("batch_size must be >= 1 and max_wait_s > 0")
    stats = SinkStats()
    intake = Intake[Delivery](limit=batch_size)
    server = QueryServer(archive, timeout_s=query_timeout_s, max_rows=query_max_rows) if serve else None
    if server is not None:
        await server.start()
    pumps = [
        asyncio.create_task(_pump(bus, pattern, group, tenant, intake), name=f"archive-pump {pattern}")
        for pattern in (">", "dlq.>")
    ]
    stopped = asyncio.create_task(stop.wait())
    for task in (*pumps, stopped):
        task.add_done_callback(intake.wake)
    inflight: _Inflight | None = None
    try:
        while True:
            batch = await _collect(intake, batch_size, max_wait_s, stopped, pumps, inflight)
            if inflight is not None:
                await inflight.task  # committed and acked (usually long ago); raises what failed
                inflight = None
            if batch:
                inflight = _Inflight(batch, archive, stats, on_batch, server, intake)
            if stop.is_set():
                break
        await _cancel(pumps)
        rest = intake.take(len(intake))  # fetched before the stop: commit them now rather than wait for redelivery
        if inflight is not None:
            await inflight.task
            inflight = None
        if rest:
            await _Inflight(rest, archive, stats, on_batch, server, intake).task
    finally:
        await _cancel([*pumps, stopped])
        if inflight is not None:  # an error elsewhere: let the write finish; it acks only if it committed
            with contextlib.suppress(Exception):
                await inflight.task
        if server is not None:
            stats.queries = server.queries
            await server.close()
    return stats


class _Inflight:
    """A batch being written in a worker thread, then acked and counted as soon as it
    committed: the event loop keeps gathering the next batch meanwhile, and the acked
    deliveries are let go of at once (a smaller heap for the garbage collector to walk)."""

    def __init__(
        self,
        batch: list[Delivery],
        archive: Archive,
        stats: SinkStats,
        on_batch: OnBatch | None,
        server: QueryServer | None,
        intake: Intake[Delivery],
    ) -> None:
        self.task = asyncio.create_task(self._run(batch, archive, stats, on_batch, server))
        self.task.add_done_callback(intake.wake)  # a failure stops the batcher at once

    @property
    def failed(self) -> bool:
        return self.task.done() and (self.task.cancelled() or self.task.exception() is not None)

    @staticmethod
    async def _run(
        batch: list[Delivery], archive: Archive, stats: SinkStats, on_batch: OnBatch | None, server: QueryServer | None
    ) -> None:
        items = [(d.event, d.stream, d.seq) for d in batch]
        result = await asyncio.to_thread(archive.write, items)  # raises if the write failed: nothing is acked
        del items
        for delivery in batch:
            try:
                await delivery.ack()
            except StreamError as exc:  # redelivered later, and skipped as already archived
                log.warning("ack of %s#%d failed after commit: %s", delivery.stream, delivery.seq, exc)
        batch.clear()
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


async def _pump(bus: Bus, pattern: str, group: str, tenant: str, intake: Intake[Delivery]) -> None:
    deliveries = bus.subscribe(pattern, group=group, tenant=tenant, start="all")
    try:
        async for delivery in deliveries:
            await intake.put(delivery)
    finally:
        aclose = getattr(deliveries, "aclose", None)
        if aclose is not None:
            await aclose()


async def _collect(
    intake: Intake[Delivery],
    batch_size: int,
    max_wait_s: float,
    stopped: asyncio.Task[bool],
    pumps: list[asyncio.Task[None]],
    inflight: _Inflight | None,
) -> list[Delivery]:
    """The next batch. Returns early (maybe empty) when ``stop`` is set or the batch
    in flight failed."""
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    while True:
        for pump in pumps:
            if pump.done():
                raise pump.exception() or RuntimeError(f"{pump.get_name()} ended")
        held = len(intake)
        if held >= batch_size or stopped.done():
            break
        if inflight is not None and inflight.failed:
            break
        if held == 0:
            await intake.wait(1, 1.0)
            continue
        if deadline is None:
            deadline = loop.time() + max_wait_s
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        await intake.wait(batch_size, remaining)
    return intake.take(batch_size)


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            log.debug("archive task ended with %r", result)
