"""The archive against a real nats-server: the sink, a live runner vs its replay, the CLI across processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import streams
from connectors.archive import Archive, replay_run, serve
from schemas import make_event
from schemas.samples import SAMPLES, sample_subject
from streams import Bus, BusConfig
from streams.embedded import NatsServer
from streams.runner import Runner, RunnerConfig
from tests.archive_support import T0, DropRule, archive_path, count, sink_until, ticks

pytestmark = pytest.mark.nats

SPINE = str(Path(sys.executable).parent / "spine")
CONFIG = BusConfig(ack_wait_s=2.0, max_deliver=20)


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    async with streams.connect(nats_server.url, CONFIG) as connected:
        yield connected


def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    return f"arc-{suffix}", f"archive-{suffix}"


async def test_sink_archives_every_stream_once_across_a_restart(bus: Bus, tmp_path: Path) -> None:
    tenant, group = names()
    events = [make_event(t, SAMPLES[t], subject=sample_subject(t), tenant=tenant) for t in SAMPLES if "dlq" not in t]
    await bus.publish_many(events)
    await bus.publish_raw(f"spine.{tenant}.llm.call.x", b'{"type": "llm.call"}', msg_id=f"{tenant}-bad")
    path = archive_path(tmp_path)
    with Archive.open(path, read_only=False) as archive:
        first = await sink_until(
            bus, archive, lambda s: s.inserted >= len(events) + 1, group=group, tenant=tenant, batch_size=5
        )
    assert first.inserted == len(events) + 1 and first.dead_letters == 1
    more = ticks(12, tenant)
    await bus.publish_many(more)
    with Archive.open(path, read_only=False) as archive:  # a restarted sink: same group, same file
        second = await sink_until(bus, archive, lambda s: s.inserted >= 12, group=group, tenant=tenant)
        assert second.inserted == 12
        total = len(events) + 1 + 12
        assert count(archive, "SELECT count(*) FROM events") == total
        assert count(archive, "SELECT count(DISTINCT id) FROM events") == total
        letter = archive.sql("SELECT source_stream, original, reason FROM dead_letters").to_pylist()[0]
        assert letter["source_stream"] == "LLM" and letter["original"] == b'{"type": "llm.call"}'
        assert "subject" in letter["reason"]
    lag = await bus.lag(group)
    assert lag.total == 0


async def test_live_runner_on_nats_equals_the_replay_id_for_id(bus: Bus, tmp_path: Path) -> None:
    tenant, group = names()
    events = ticks(120, tenant, symbols=("BTC-USD", "ETH-USD", "SOL-USD"), seed=5)
    await bus.publish_many(events)
    runner = Runner(bus, DropRule(), RunnerConfig(tenant=tenant, group=f"drop-{tenant}", batch_wait_s=0.02))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + 60
    while runner.health.handled < len(events) and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert runner.health.handled == len(events)
    live = [r.event async for r in bus.replay("DECISIONS", tenant=tenant)]
    assert live
    with Archive.open(archive_path(tmp_path), read_only=False) as archive:
        await sink_until(
            bus, archive, lambda s: s.inserted >= len(events) + len(live), group=group, tenant=tenant, timeout=60
        )
        archived = archive.sql("SELECT id FROM alerts ORDER BY id").column("id").to_pylist()
        replayed = replay_run(archive, DropRule(), tenant=tenant, start=T0)
    assert sorted(e.id for e in replayed.decisions) == archived == sorted(e.id for e in live)
    assert {e.id: e for e in replayed.decisions} == {e.id: e for e in live}


def _env(nats_server: NatsServer, tmp_path: Path, group: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    return env | {
        "SPINE_BROKER_URL": nats_server.url,
        "SPINE_DATA_DIR": str(tmp_path / "data"),
        "SPINE_ARCHIVE__GROUP": group,
        "NO_COLOR": "1",
    }


async def test_cli_sink_serves_other_processes_stops_on_sigterm_and_replays_to_a_shadow(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    tenant, group = names()
    env = _env(nats_server, tmp_path, group)
    await bus.publish_many(ticks(30, tenant))
    sink = subprocess.Popen(
        [SPINE, "archive", "run", "--tenant", tenant, "--max-wait", "0.1", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = tmp_path / "data" / "archive.duckdb"

    def query() -> int:
        sql = f"SELECT count(*) AS n FROM market_ticks WHERE tenant = '{tenant}'"
        proc = subprocess.run(
            [SPINE, "replay", "sql", sql, "--json"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return int(json.loads(proc.stdout)[0]["n"])

    try:
        deadline = time.monotonic() + 60
        while serve.read_state(path) is None and time.monotonic() < deadline:
            assert sink.poll() is None, sink.stderr.read() if sink.stderr else ""
            await asyncio.sleep(0.1)
        seen = await asyncio.to_thread(query)
        while seen < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            seen = await asyncio.to_thread(query)
        assert seen == 30  # read from another process while the sink holds the file
        await bus.publish_many(ticks(20, tenant, seed=9, start=T0.replace(hour=12)))
        while seen < 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            seen = await asyncio.to_thread(query)
        assert seen == 50
    finally:
        sink.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.to_thread(sink.communicate, timeout=30)
    assert sink.returncode == 0, f"{sink.returncode}: {stderr}"
    summary = json.loads(stdout)
    assert summary["inserted"] == 50 and summary["queries_served"] >= 2
    assert serve.read_state(path) is None
    with Archive.open(path) as archive:  # the sink has let go: a plain read-only open now
        assert archive.mode == "read" and count(archive, "SELECT count(*) FROM market_ticks") == 50
    shadow = f"sh-{tenant}"
    args = ["replay", "publish", "--from", "2026-11-16", "--to", "2026-11-17", "--tenant", tenant]
    proc = await asyncio.to_thread(
        subprocess.run,
        [SPINE, *args, "--to-stream", shadow, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"shadow_tenant": shadow, "published": 50, "duplicates": 0}
    copies = [r.event async for r in bus.replay("MARKET", tenant=shadow)]
    assert len(copies) == 50 and all(c.tenant == shadow for c in copies)
    originals = [r.event async for r in bus.replay("MARKET", tenant=tenant)]
    assert len(originals) == 50  # the original tenant is untouched
