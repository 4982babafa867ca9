"""The archive sink on the memory transport: every stream once, acks after commit, restarts, stop."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from connectors.archive import Archive, ArchiveError, run_sink, serve
from schemas import make_event
from schemas.samples import SAMPLES, sample_subject
from streams import BusConfig, StreamSettings
from streams.bus import Bus, Delivery
from streams.transports.memory import MemoryBus
from tests.archive_support import archive_path, count, sink_until, ticks

FAST = BusConfig(ack_wait_s=0.4, max_deliver=50)


def fresh_bus(config: BusConfig = FAST) -> MemoryBus:
    return MemoryBus(f"archive-{uuid.uuid4().hex}", config)


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    opened = Archive.open(archive_path(tmp_path), read_only=False)
    yield opened  # type: ignore[misc]
    opened.close()


async def test_every_stream_and_the_dead_letters_are_archived_once(archive: Archive) -> None:
    bus = fresh_bus(BusConfig(ack_wait_s=30))  # no redelivery however slow the machine
    events = [make_event(t, SAMPLES[t], subject=sample_subject(t), tenant="acme") for t in SAMPLES if "dlq" not in t]
    await bus.publish_many(events)
    await bus.publish_raw("spine.acme.market.tick.BTC-USD", b"BTC 97000 (not JSON)", msg_id="raw-1")
    stats = await sink_until(bus, archive, lambda s: s.inserted >= len(events) + 1, batch_size=7)
    assert stats.inserted == len(events) + 1 and stats.dead_letters == 1 and stats.duplicates == 0
    assert count(archive, "SELECT count(*) FROM events WHERE stream <> 'DLQ'") == len(events)
    letter = archive.sql('SELECT type, source_stream, original, reason, "group" FROM dead_letters').to_pylist()[0]
    assert letter["type"] == "dlq.undecodable" and letter["source_stream"] == "MARKET"
    assert letter["original"] == b"BTC 97000 (not JSON)" and "not valid JSON" in letter["reason"]
    assert letter["group"] == "archive"
    assert (await bus.lag("archive")).total == 0


async def test_acks_only_after_the_batch_is_committed(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    bus = fresh_bus(BusConfig(ack_wait_s=30))
    await bus.publish_many(ticks(20, "acme"))
    entered, release = threading.Event(), threading.Event()
    real_write = archive.write

    def held_write(items: Any) -> Any:
        entered.set()
        release.wait(10)
        return real_write(items)

    monkeypatch.setattr(archive, "write", held_write)
    stop = asyncio.Event()
    task = asyncio.create_task(run_sink(bus, archive, stop=stop, batch_size=100, max_wait_s=0.05))
    await asyncio.to_thread(entered.wait, 10)
    lag = await bus.lag("archive")
    assert lag.ack_pending == 20 and count(archive, "SELECT count(*) FROM events") == 0
    release.set()
    for _ in range(100):
        if (await bus.lag("archive")).ack_pending == 0:
            break
        await asyncio.sleep(0.02)
    assert count(archive, "SELECT count(*) FROM market_ticks") == 20
    assert (await bus.lag("archive")).total == 0
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_a_failed_write_acks_nothing_and_a_restart_archives_each_event_once(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = fresh_bus()
    events = ticks(30, "acme")
    await bus.publish_many(events)
    real_write = archive.write

    def failing_after_commit(items: Any) -> Any:
        real_write(items)  # committed ...
        raise ArchiveError("disk full (simulated) after commit")  # ... but the sink never hears back

    monkeypatch.setattr(archive, "write", failing_after_commit)
    with pytest.raises(ArchiveError, match="simulated"):
        await run_sink(bus, archive, stop=asyncio.Event(), batch_size=10, max_wait_s=0.05)
    assert (await bus.lag("archive")).ack_pending > 0  # nothing acked
    monkeypatch.setattr(archive, "write", real_write)
    stats = await sink_until(bus, archive, lambda s: s.received >= 30, batch_size=10)
    assert count(archive, "SELECT count(*) FROM market_ticks") == 30
    assert count(archive, "SELECT count(DISTINCT id) FROM market_ticks") == 30
    assert stats.duplicates > 0  # the redelivered, already committed batch was skipped
    assert (await bus.lag("archive")).total == 0


class LosesFirstAcks:
    """A bus whose deliveries lose their first ack (a crash between commit and ack)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.lost = 0
        self.seen: set[tuple[str, int]] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)

    async def subscribe(self, pattern: str, **kw: Any) -> AsyncIterator[Delivery]:
        async for delivery in self.bus.subscribe(pattern, **kw):
            key = (delivery.stream, delivery.seq)
            if key not in self.seen:
                self.seen.add(key)
                self.lost += 1
                yield _AckLost(delivery)  # type: ignore[misc]
            else:
                yield delivery


class _AckLost:
    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery

    def __getattr__(self, name: str) -> Any:
        return getattr(self._delivery, name)

    async def ack(self) -> None:
        return None


async def test_redeliveries_after_lost_acks_never_duplicate_rows(archive: Archive) -> None:
    bus = fresh_bus()
    events = ticks(25, "acme")
    await bus.publish_many(events)
    lossy = LosesFirstAcks(bus)
    stats = await sink_until(lossy, archive, lambda s: s.received >= 50, batch_size=8)  # type: ignore[arg-type]
    assert lossy.lost == 25 and stats.received >= 50
    assert count(archive, "SELECT count(*) FROM market_ticks") == 25
    assert stats.inserted == 25 and stats.duplicates >= 25


async def test_an_event_stored_twice_by_the_broker_is_archived_once(archive: Archive) -> None:
    no_dedup = BusConfig(ack_wait_s=5, streams={"MARKET": StreamSettings(duplicate_window_s=0.001)})
    bus = fresh_bus(no_dedup)
    (event,) = ticks(1, "acme")
    await bus.publish(event)
    await asyncio.sleep(0.01)
    assert not (await bus.publish(event)).duplicate  # outside the broker's window: stored again
    stats = await sink_until(bus, archive, lambda s: s.received >= 2)
    assert stats.received == 2 and stats.inserted == 1
    assert count(archive, "SELECT count(*) FROM market_ticks") == 1


async def test_stop_commits_and_acks_what_the_sink_holds(archive: Archive) -> None:
    bus = fresh_bus(BusConfig(ack_wait_s=30))
    await bus.publish_many(ticks(40, "acme"))
    stop = asyncio.Event()
    task = asyncio.create_task(run_sink(bus, archive, stop=stop, batch_size=1000, max_wait_s=60))
    await asyncio.sleep(0.05)  # let the sink join its group
    for _ in range(200):  # every event fetched and held for a batch that would wait a minute
        if (await bus.lag("archive")).pending == 0:
            break
        await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    stop.set()
    stats = await asyncio.wait_for(task, 5)
    assert asyncio.get_running_loop().time() - started < 2
    assert stats.inserted == 40 and count(archive, "SELECT count(*) FROM market_ticks") == 40
    assert (await bus.lag("archive")).total == 0


async def test_queries_are_answered_while_the_sink_writes(archive: Archive) -> None:
    bus = fresh_bus()
    stop = asyncio.Event()
    task = asyncio.create_task(run_sink(bus, archive, stop=stop, batch_size=50, max_wait_s=0.02))
    seen: list[int] = []
    for i in range(5):
        await bus.publish_many(ticks(50, "acme", seed=i, start=ticks(1, "x")[0].time.replace(hour=i)))
        await asyncio.sleep(0.2)
        state = serve.read_state(archive.path)
        assert state is not None
        table = await asyncio.to_thread(serve.query, state, "SELECT count(*) FROM market_ticks", [])
        seen.append(table.column(0)[0].as_py())
    stop.set()
    stats = await asyncio.wait_for(task, 10)
    assert seen == sorted(seen) and seen[-1] >= 200  # each query saw the batches committed so far
    assert stats.queries >= 5 and stats.inserted == 250
    assert serve.read_state(archive.path) is None  # the state file goes with the sink
