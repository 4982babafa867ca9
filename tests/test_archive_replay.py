"""Replays from the archive: event-time order, backtests equal to the live runner, shadow re-publishing, CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from connectors.archive import Archive, QueryError, parse_time, read_events, replay_publish, replay_run
from connectors.archive.replay import row_plan, shadow_copy, types_for
from processors import registry
from processors.cost import CostConfig, CostProcessor
from processors.runtime import run_partitioned
from schemas import Event, derived_id, make_event
from streams import BusConfig
from streams.runner import Runner, RunnerConfig
from streams.transports.memory import MemoryBus
from tests.archive_support import T0, DropRule, archive_path, build_drop_rule, count, llm_calls, sink_until, ticks

ROOT = Path(__file__).resolve().parent.parent
SPINE = str(Path(sys.executable).parent / "spine")


def fresh_bus() -> MemoryBus:
    return MemoryBus(f"replay-{uuid.uuid4().hex}", BusConfig(ack_wait_s=5))


def test_parse_time() -> None:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("90s", now=now) == now - timedelta(seconds=90)
    assert parse_time("now", now=now) == now
    assert parse_time("2026-11-14") == datetime(2026, 11, 14, tzinfo=UTC)
    assert parse_time("2026-11-14T10:00:00Z") == datetime(2026, 11, 14, 10, tzinfo=UTC)
    assert parse_time("2026-11-14T12:00:00+02:00") == datetime(2026, 11, 14, 10, tzinfo=UTC)
    with pytest.raises(QueryError, match="as a time"):
        parse_time("last tuesday")


def test_patterns_select_types_like_subscribe_does() -> None:
    every, keyed = types_for([">"])
    assert "market.tick" in every and not any(t.startswith("dlq.") for t in every) and keyed == []
    assert types_for(["session.>"])[0] == [
        "session.started",
        "session.state",
        "session.message",
        "session.tool_call",
        "session.heartbeat",
    ]
    assert types_for(["llm.call", "decision.budget"]) == (["llm.call", "decision.budget"], [])
    assert types_for(["dlq.>"])[0] == ["dlq.undecodable", "dlq.max_deliver", "dlq.rejected", "dlq.late"]
    assert types_for(["market.tick.BTC-USD"]) == (["market.tick"], ["spine.*.market.tick.BTC-USD"])


async def test_events_come_back_in_event_time_order_whatever_the_arrival_order(tmp_path: Path) -> None:
    events = ticks(30, "acme")
    with Archive.open(archive_path(tmp_path), read_only=False) as archive:
        archive.write([(e, "MARKET", 100 - i) for i, e in enumerate(reversed(events))])
        assert [e.id for e in read_events(archive)] == [e.id for e in events]
        btc = list(read_events(archive, patterns=["market.tick.BTC-USD"], start=events[10].time))
        assert [e.id for e in btc] == [e.id for e in events[10:] if e.subject == "BTC-USD"]


async def test_replay_run_equals_the_runtimes_pure_fold_and_is_repeatable(tmp_path: Path) -> None:
    bus = fresh_bus()
    events = ticks(200, "acme") + ticks(100, "globex", seed=3)
    await bus.publish_many(events)
    with Archive.open(archive_path(tmp_path), read_only=False) as archive:
        await sink_until(bus, archive, lambda s: s.inserted >= len(events), batch_size=64)
        first = replay_run(archive, DropRule())
        second = replay_run(archive, DropRule())
        acme = replay_run(archive, DropRule(), tenant="acme", start=T0 + timedelta(minutes=50))
    _, pure = run_partitioned(DropRule(), sorted(events, key=lambda e: e.time))
    assert first.handled == len(events) and first.decisions
    assert [e.id for e in first.decisions] == [e.id for e in second.decisions] == [e.id for e in pure.decisions]
    assert first.decisions == pure.decisions
    assert acme.handled == 150 and all(d.tenant == "acme" for d in acme.decisions)


async def _run_live(bus: MemoryBus, processor: DropRule, inputs: int) -> None:
    runner = Runner(bus, processor, RunnerConfig(batch_max=16, batch_wait_s=0.01))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(400):
        if runner.health.handled >= inputs or task.done():
            break
        await asyncio.sleep(0.025)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert runner.health.handled == inputs


async def test_live_runner_decisions_equal_the_replays_id_for_id(tmp_path: Path) -> None:
    bus = fresh_bus()
    events = ticks(150, "acme") + ticks(150, "globex", seed=11, start=T0 + timedelta(seconds=30))
    await bus.publish_many(events)
    await _run_live(bus, DropRule(), len(events))  # live: through the broker and the runner
    live = [r.event async for r in bus.replay("DECISIONS")]
    assert live
    with Archive.open(archive_path(tmp_path), read_only=False) as archive:
        await sink_until(bus, archive, lambda s: s.inserted >= len(events) + len(live), batch_size=50)
        archived = archive.sql("SELECT id FROM alerts WHERE source = 'processors/drop-rule' ORDER BY id")
        replayed = replay_run(archive, DropRule())
    assert sorted(e.id for e in replayed.decisions) == archived.column("id").to_pylist() == sorted(e.id for e in live)
    assert {e.id: e for e in replayed.decisions} == {e.id: e for e in live}


def varied_calls(n: int, seed: int) -> list[Event]:
    """llm.calls over several days and tenants: priced, unpriced, producer-costed, with and
    without project and session, in event-time order."""
    r = random.Random(seed)
    when = T0 - timedelta(hours=3)
    out = []
    for _ in range(n):
        when += timedelta(seconds=r.choice([5, 60, 900, 5400]))
        data: dict[str, object] = {
            "provider": r.choice(["openai", "anthropic"]),
            "model": r.choice(["gpt-4o", "o3", "claude-sonnet-4", "not-in-the-table"]),
            "input_tokens": r.randint(0, 4000),
            "output_tokens": r.randint(0, 800),
            "cached_tokens": r.choice([0, 0, 50, 5000]),
        }
        if r.random() < 0.5:
            data["project"] = r.choice(["p1", "p2"])
        if r.random() < 0.5:
            data["session_id"] = f"s{r.randint(0, 9)}"
        if r.random() < 0.25:
            data["cost_usd"] = r.random() / 7  # floats that must survive the archive exactly
            data["price_version"] = r.choice([None, "prod-7"])
        out.append(make_event("llm.call", data, tenant=r.choice(["acme", "globex"]), time=when, source="tests"))
    return out


def cost_for_replay() -> CostProcessor:
    return CostProcessor(
        CostConfig.model_validate(
            {
                "prices": {
                    "version": "t1",
                    "prices": {
                        "gpt-4o": {"input": 2.5e-6, "output": 1e-5, "cache_read": 1.25e-6},
                        "o3": {"input": 1e-5, "output": 4e-5},
                        "anthropic/claude-sonnet-4": {"input": 3e-6, "output": 1.5e-5},
                    },
                },
                "budgets": [
                    {"name": "daily", "scope": "tenant", "period": "day", "soft_usd": 1, "hard_usd": 2},
                    {"name": "weekly", "scope": "project", "period": "week", "hard_usd": 3},
                    {"name": "monthly", "scope": "provider", "key": "openai", "period": "month", "soft_usd": 4},
                ],
                "update_step_usd": 0.05,
            }
        )
    )


async def test_cost_replays_from_typed_rows_equal_decoded_events_and_the_live_runner(tmp_path: Path) -> None:
    """The cost processor replays from the archive's typed columns, not decoded events: same
    decisions, payloads and ids as decoding each event, and as the live runner on the bus."""
    bus = fresh_bus()
    events = varied_calls(600, seed=5)
    await bus.publish_many(events)
    runner = Runner(bus, cost_for_replay(), RunnerConfig(batch_max=32, batch_wait_s=0.01))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(400):
        if runner.health.handled >= len(events) or task.done():
            break
        await asyncio.sleep(0.025)
    stop.set()
    await asyncio.wait_for(task, 10)
    live = [r.event async for r in bus.replay("DECISIONS")]
    assert {e.type for e in live} >= {"decision.cost", "decision.budget", "decision.alert"}
    with Archive.open(archive_path(tmp_path), read_only=False) as archive:
        await sink_until(bus, archive, lambda s: s.inserted >= len(events) + len(live), batch_size=100)
        assert row_plan(cost_for_replay()) is not None
        from_rows = replay_run(archive, cost_for_replay())
        from_events = replay_run(archive, cost_for_replay(), rows=False)
    assert from_rows.handled == from_events.handled == len(events)
    assert [e.id for e in from_rows.decisions] == [e.id for e in from_events.decisions]
    assert from_rows.decisions == from_events.decisions  # payloads, times, causation: all equal
    assert {e.id: e for e in from_rows.decisions} == {e.id: e for e in live}


async def test_replay_publish_feeds_a_shadow_tenant_and_leaves_the_original_alone(tmp_path: Path) -> None:
    bus = fresh_bus()
    events = ticks(40, "acme")
    await bus.publish_many(events)
    with Archive.open(archive_path(tmp_path), read_only=False) as archive:
        await sink_until(bus, archive, lambda s: s.inserted >= 40)
        watcher = bus.subscribe(">", group="acme-watcher", tenant="acme", start="new")
        first = asyncio.ensure_future(anext(watcher))
        await asyncio.sleep(0.05)
        published, dupes = await replay_publish(
            bus, archive, shadow="shadow", start=events[10].time, end=events[30].time, chunk=7
        )
        assert (published, dupes) == (20, 0)
        assert await replay_publish(bus, archive, shadow="shadow", start=events[10].time, end=events[30].time) == (
            20,
            20,
        )
        await asyncio.sleep(0.3)
        assert not first.done()  # the original tenant's consumers see nothing
        first.cancel()
        copies = []
        async for delivery in bus.subscribe("market.>", group="shadow-consumer", tenant="shadow", start="all"):
            copies.append(delivery.event)
            await delivery.ack()
            if len(copies) == 20:
                break
    originals = events[10:30]
    assert [c.id for c in copies] == [derived_id("replay/shadow", e.id, 0) for e in originals]
    assert all(
        c.tenant == "shadow" and c.time == o.time and c.data == o.data for c, o in zip(copies, originals, strict=True)
    )
    assert shadow_copy(originals[0], "shadow") == copies[0]
    with pytest.raises(QueryError):
        await replay_publish(bus, archive, shadow="Not A Tenant", start=None, end=None)


# -- CLI ------------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    events = ticks(120, "acme") + llm_calls(
        [("openai", "gpt-4o", 0.5, 120.0, "ok"), ("anthropic", "claude", 0.25, 900.0, "ok")], "acme"
    )
    with Archive.open(archive_path(tmp_path), read_only=False) as archive:
        archive.write([(e, None, None) for e in events])
    return tmp_path / "data"


@pytest.fixture
def spine(data_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env |= {"SPINE_DATA_DIR": str(data_dir), "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([SPINE, *args], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert proc.returncode == code, f"spine {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
        return proc

    return run


def test_replay_sql_formats(spine: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    query = "SELECT symbol, count(*) AS n, max(time) AS last FROM market_ticks GROUP BY ALL ORDER BY symbol"
    rows = json.loads(spine("replay", "sql", query, "--json").stdout)
    assert [(r["symbol"], r["n"]) for r in rows] == [("BTC-USD", 60), ("ETH-USD", 60)]
    assert rows[0]["last"].startswith("2026-11-16T")
    parsed = list(csv.DictReader(io.StringIO(spine("replay", "sql", query, "--format", "csv").stdout)))
    assert [(r["symbol"], r["n"]) for r in parsed] == [("BTC-USD", "60"), ("ETH-USD", "60")]
    target = tmp_path / "out.parquet"
    spine("replay", "sql", query, "--format", "parquet", "--out", str(target))
    assert pq.read_table(target).column("n").to_pylist() == [60, 60]
    table = spine("replay", "sql", query).stdout
    assert "symbol" in table and "BTC-USD" in table
    bad = spine("replay", "sql", "SELECT nope FROM market_ticks", code=2)
    assert bad.stderr.startswith("error:") and "hint:" in bad.stderr and "Traceback" not in bad.stderr
    refused = spine("replay", "sql", "DELETE FROM store.market_ticks", code=2)
    assert "read-only" in refused.stderr
    cost = json.loads(spine("replay", "report", "cost", "--json").stdout)
    assert {(r["model"], r["cost_usd"]) for r in cost} == {("gpt-4o", 0.5), ("claude", 0.25)}
    assert "unknown report" in spine("replay", "report", "nope", code=2).stderr


def test_replay_run_and_export_through_the_cli(
    spine: Callable[..., subprocess.CompletedProcess[str]], data_dir: Path, tmp_path: Path
) -> None:
    doc = json.loads(spine("replay", "run", "tests.archive_support:build_drop_rule", "--json").stdout)
    with Archive.open(data_dir / "archive.duckdb") as archive:
        _, pure = run_partitioned(DropRule(), list(read_events(archive, patterns=["market.>"])))
    assert doc["handled"] == 120 and [e["id"] for e in doc["events"]] == [e.id for e in pure.decisions]
    lines = spine("replay", "run", "tests.archive_support:build_drop_rule", "--out", "events").stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e.id for e in pure.decisions]
    unknown = spine("replay", "run", "no-such-processor", code=2)
    assert "unknown processor 'no-such-processor'; known:" in unknown.stderr
    exported = json.loads(spine("archive", "export", str(tmp_path / "pq"), "--json").stdout)
    assert {r["type"]: r["rows"] for r in exported} == {"market.tick": 120, "llm.call": 2}


def test_replay_run_resolves_registered_processors(data_dir: Path) -> None:
    from spine.cli import app

    registry.register("drop-rule-test", build_drop_rule)
    try:
        result = CliRunner().invoke(
            app,
            [
                "--data-dir",
                str(data_dir),
                "replay",
                "run",
                "drop-rule-test",
                "--from",
                "2026-11-16T10:00:00Z",
                "--json",
            ],
        )
    finally:
        registry.unregister("drop-rule-test")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["processor"] == "drop-rule" and doc["handled"] == 60
    assert all(e["type"] == "decision.alert" and e["time"] >= "2026-11-16T10:00:00" for e in doc["events"])
    with Archive.open(data_dir / "archive.duckdb") as archive:
        assert count(archive, "SELECT count(*) FROM market_ticks") == 120
