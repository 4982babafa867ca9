"""The DuckDB archive: ingest, write path, a 10M-row query and a replay, each against a baseline in the same run.

    python benchmarks/archive.py [--quick]

Prints one JSON object per line (DESIGN.md, Conventions):

1. ``ingest``: the archive sink (``run_sink``: subscribe, batch, Arrow, DuckDB
   commit, ack) vs a raw consume loop (``bus.subscribe`` + ``ack``) on the same
   transport: an embedded nats-server started on a free port. Target >= 0.8x.
   Both sides run after ``spine.gcpolicy.freeze_startup_heap()``, as
   ``spine run archive`` does.
2. ``write_path``: decoded events -> ``Archive.write`` in the sink's batches
   (5000) vs DuckDB loading the same events from a JSONL file with
   ``read_json``. Targets >= 0.2x and >= 200k events/s. The events come in
   event-time order, as live ingest mostly does, so each batch is later than
   everything stored and skips the duplicate check against stored ids; the row
   also gives ``events_per_s_checked``: the same batches written newest first,
   so every insert runs that check (what redeliveries and batches reaching back
   into stored time cost). Both sides are timed without their final
   CHECKPOINT, which the row gives apart (``checkpoint_s``,
   ``events_per_s_incl_checkpoint``): the archive logs each batch to the WAL
   and compresses it into the file at checkpoints (every 256 MB of WAL, about
   500k events here), where ``read_json``'s one big insert writes the file as
   it goes.
3. ``query``: the ``cost`` report (cost by model by day) over N archived
   ``llm.call`` rows (10M in a full run, generated straight into DuckDB),
   through a read-only ``Archive.open``, vs pyarrow's group_by over the same
   columns already in memory. Target: under 1 s.
4. ``replay``: ``replay_run`` of the cost processor over N archived events
   (1M in a full run: read in event-time order from the typed columns, fold,
   materialize every decision) vs the same fold over already-decoded events
   (no archive read at all). Target >= 100k events/s. The row also gives the
   rate of the replay that decodes a typed event per row instead.

Every row carries ``calibration_loop_ns``: nanoseconds per iteration of a bare
Python loop on this machine, to put absolute rates in perspective.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder comes first on sys.path, where benchmarks/processors.py
# would shadow the `processors` package: look in this folder last.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from _measure import rss_mb

import streams
from connectors.archive import Archive, ArchiveConfig, replay_run, run_report, run_sink, sink_bus_config
from connectors.archive.replay import read_events, row_plan
from processors import registry
from processors.runtime import run_partitioned
from schemas import Event, encode, make_event
from spine.gcpolicy import freeze_startup_heap
from streams import BusConfig
from streams.embedded import NatsServer

T0 = datetime(2026, 10, 1, tzinfo=UTC)
BATCH = ArchiveConfig().batch_size
WAIT = ArchiveConfig().max_wait_s
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "o3"),
    ("anthropic", "claude-sonnet-4"),
    ("anthropic", "claude-haiku-4"),
    ("google", "gemini-2.5-pro"),
    ("google", "gemini-2.5-flash"),
    ("mistral", "mistral-large"),
]
COST_CONFIG: dict[str, Any] = {
    "prices": {
        "version": "bench-1",
        "prices": {model: {"input": 2.5e-6, "output": 1e-5, "cache_read": 1.25e-6} for _, model in MODELS[:6]},
    },
    "update_step_usd": 0.05,
}


@dataclass(frozen=True)
class Plan:
    mode: str
    ingest_events: int
    reps: int
    write_events: int
    query_rows: int
    replay_events: int
    replay_baseline_events: int


PLANS = {
    "quick": Plan("quick", 10_000, 3, 30_000, 1_000_000, 20_000, 10_000),
    "full": Plan("full", 100_000, 3, 300_000, 10_000_000, 1_000_000, 100_000),
}


# -- helpers -----------------------------------------------------------------------------


def calibration_ns() -> float:
    start = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i
    return round((time.perf_counter() - start) / 2_000_000 * 1e9, 1)


CALIBRATION = 0.0


def line(metric: str, unit: str, spine: float, baseline_name: str, baseline: float, **extra: Any) -> dict[str, Any]:
    return {
        "bench": "archive",
        "metric": metric,
        "unit": unit,
        "spine": round(spine, 3),
        "baseline_name": baseline_name,
        "baseline": round(baseline, 3),
        "ratio": round(spine / baseline, 3) if baseline else None,
        "target_ratio": extra.pop("target_ratio", None),
        "peak_rss_mb": rss_mb()["peak_mb"],
        "calibration_loop_ns": CALIBRATION,
        **extra,
    }


def llm_events(n: int, tenant: str, start: datetime = T0) -> list[Event]:
    out = []
    for i in range(n):
        provider, model = MODELS[i % len(MODELS)]
        out.append(
            make_event(
                "llm.call",
                {
                    "provider": provider,
                    "model": model,
                    "deployment": f"{provider}/{model}@eu",
                    "project": f"p{i % 13}",
                    "session_id": f"s{i % 97}",
                    "input_tokens": 200 + i % 1800,
                    "output_tokens": 20 + i % 400,
                    "cached_tokens": 100 if i % 5 == 0 else 0,
                    "latency_ms": 150.0 + (i * 37) % 4000,
                    "ttft_ms": 80.0 + (i * 13) % 900,
                    "finish_reasons": ["stop"],
                },
                tenant=tenant,
                time=start + timedelta(milliseconds=250 * i),
                source="bench",
            )
        )
    return out


def mixed_events(n: int) -> list[Event]:
    """60% llm.call, 30% market.tick, 10% session.heartbeat: what a fleet's archive sees."""
    calls = llm_events(n * 6 // 10, "bench")
    rest = []
    for i in range(n - len(calls)):
        when = T0 + timedelta(milliseconds=333 * i)
        if i % 4:
            data = {"venue": "binance", "symbol": f"S{i % 50}", "price": 100 + i % 977 / 7, "volume": i % 13 / 3}
            rest.append(make_event("market.tick", data, tenant="bench", time=when, source="bench"))
        else:
            data = {"session_id": f"s{i % 97}", "node_id": f"n{i % 7}", "state": "running", "tokens_used": i}
            rest.append(make_event("session.heartbeat", data, tenant="bench", time=when, source="bench"))
    return calls + rest


# -- 1. ingest from the bus ------------------------------------------------------------------


async def raw_consume(bus: streams.Bus, group: str, tenant: str, n: int) -> None:
    subscription = cast(
        "AsyncGenerator[streams.Delivery, None]", bus.subscribe(">", group=group, tenant=tenant, start="all")
    )
    count = 0
    async with contextlib.aclosing(subscription) as deliveries:
        async for delivery in deliveries:
            await delivery.ack()
            count += 1
            if count == n:
                return


async def sink_consume(bus: streams.Bus, archive: Archive, group: str, tenant: str, n: int) -> None:
    stop = asyncio.Event()

    def check(stats: Any) -> None:
        if stats.inserted >= n:
            stop.set()

    stats = await run_sink(
        bus, archive, stop=stop, batch_size=BATCH, max_wait_s=WAIT, on_batch=check, group=group, tenant=tenant
    )
    assert stats.inserted == n, stats


async def ingest(url: str, tmp: Path, plan: Plan) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"spine": [], "raw": []}
    cpu: dict[str, list[float]] = {"spine": [], "raw": []}
    n = plan.ingest_events
    # Both sides on the sink's bus settings (its ack window holds four batches).
    async with streams.connect(url, sink_bus_config(BusConfig(), BATCH)) as bus:
        for rep in range(plan.reps):
            tag = uuid.uuid4().hex[:8]
            tenants = {"spine": f"sink-{tag}", "raw": f"raw-{tag}"}
            for tenant in tenants.values():
                await bus.publish_many(llm_events(n, tenant))
            order = ["spine", "raw"] if rep % 2 == 0 else ["raw", "spine"]
            for side in order:
                with Archive.open(tmp / f"ingest-{tag}.duckdb", read_only=False) as archive:
                    freeze_startup_heap()  # as `spine run archive` does, for both sides
                    wall, cpu0 = time.perf_counter(), time.process_time()
                    if side == "raw":
                        await raw_consume(bus, f"raw-{tag}", tenants[side], n)
                    else:
                        await sink_consume(bus, archive, f"sink-{tag}", tenants[side], n)
                    rates[side].append(n / (time.perf_counter() - wall))
                    cpu[side].append((time.process_time() - cpu0) / n * 1e6)
    spine, raw = statistics.median(rates["spine"]), statistics.median(rates["raw"])
    cpu_spine, cpu_raw = statistics.median(cpu["spine"]), statistics.median(cpu["raw"])
    paired = [s / r for s, r in zip(rates["spine"], rates["raw"], strict=True)]
    return line(
        "ingest",
        "events/s",
        spine,
        "bus.subscribe + ack loop (same NATS)",
        raw,
        target_ratio=0.8,
        events=n,
        runs_spine=[round(x) for x in rates["spine"]],
        runs_baseline=[round(x) for x in rates["raw"]],
        ratio_paired_median=round(statistics.median(paired), 3),
        # Steadier than wall clock on a shared machine: client CPU per event, both sides.
        cpu_us_per_event={"spine": round(cpu_spine, 1), "baseline": round(cpu_raw, 1)},
        cpu_ratio=round(cpu_raw / cpu_spine, 3),
    )


# -- 2. the write path alone -----------------------------------------------------------------


def write_path(tmp: Path, plan: Plan) -> list[dict[str, Any]]:
    events = mixed_events(plan.write_events)
    items = [(e, "BENCH", i) for i, e in enumerate(events)]
    jsonl = tmp / "events.jsonl"
    jsonl.write_bytes(b"\n".join(encode(e) for e in events) + b"\n")
    gc.collect()
    with Archive.open(tmp / "write.duckdb", read_only=False) as archive:
        start, cpu0 = time.perf_counter(), time.process_time()
        for i in range(0, len(items), BATCH):
            archive.write(items[i : i + BATCH])
        spine_s, spine_cpu = time.perf_counter() - start, time.process_time() - cpu0
        start = time.perf_counter()
        archive.checkpoint()
        spine_checkpoint_s = time.perf_counter() - start
        assert archive.sql("SELECT count(*) FROM events").column(0)[0].as_py() == len(events)
    gc.collect()
    with Archive.open(tmp / "checked.duckdb", read_only=False) as archive:
        start, cpu0 = time.perf_counter(), time.process_time()
        for i in reversed(range(0, len(items), BATCH)):
            archive.write(items[i : i + BATCH])
        checked_s, checked_cpu = time.perf_counter() - start, time.process_time() - cpu0
        assert archive.sql("SELECT count(*) FROM events").column(0)[0].as_py() == len(events)
    con = duckdb.connect(str(tmp / "jsonl.duckdb"))
    start, cpu0 = time.perf_counter(), time.process_time()
    con.execute("CREATE TABLE events AS SELECT * FROM read_json(?, format = 'newline_delimited')", [str(jsonl)])
    baseline_s, baseline_cpu = time.perf_counter() - start, time.process_time() - cpu0
    start = time.perf_counter()
    con.execute("CHECKPOINT")
    baseline_checkpoint_s = time.perf_counter() - start
    con.close()
    n = len(events)
    rate = n / spine_s
    return [
        line(
            "write_path",
            "events/s",
            rate,
            "DuckDB read_json of the same events (JSONL)",
            n / baseline_s,
            target_ratio=0.2,
            events=n,
            batch=BATCH,
            target_events_per_s=200_000,
            meets_absolute_target=rate >= 200_000,
            events_per_s_checked=round(n / checked_s),
            checkpoint_s={"spine": round(spine_checkpoint_s, 3), "baseline": round(baseline_checkpoint_s, 3)},
            events_per_s_incl_checkpoint={
                "spine": round(n / (spine_s + spine_checkpoint_s)),
                "baseline": round(n / (baseline_s + baseline_checkpoint_s)),
            },
            cpu_us_per_event_checked=round(checked_cpu / n * 1e6, 2),
            # Steadier than wall clock on a shared machine: CPU per event (all threads), both sides.
            cpu_us_per_event={"spine": round(spine_cpu / n * 1e6, 2), "baseline": round(baseline_cpu / n * 1e6, 2)},
        )
    ]


# -- 3. a report over N archived llm.call rows ------------------------------------------------------


def generate_llm_calls(path: Path, rows: int) -> float:
    """Fill ``store.llm_calls`` with ``rows`` calls over 30 days, straight in DuckDB; returns seconds."""
    with Archive.open(path, read_only=False):
        pass  # creates the layout
    models = ", ".join(f"('{p}', '{m}')" for p, m in MODELS)
    step_us = 30 * 86400 * 1_000_000 // rows
    start = time.perf_counter()
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"""
        INSERT INTO store.llm_calls (id, type, source, subject, time, tenant, dataschema, stream, seq, data,
            archived_at, provider, model, operation, input_tokens, output_tokens, cached_tokens, cost_usd,
            latency_ms, status)
        WITH m(provider, model) AS (VALUES {models}),
        ms AS (SELECT row_number() OVER () - 1 AS k, provider, model FROM m),
        r AS (SELECT i, i % {len(MODELS)} AS k, 200 + i % 1800 AS input_tokens, 20 + i % 400 AS output_tokens,
                     150.0 + (i * 37) % 4000 AS latency_ms FROM range({rows}) t(i))
        SELECT 'bench-' || i, 'llm.call', 'bench', ms.provider || '/' || ms.model,
               TIMESTAMPTZ '{T0.isoformat()}' + to_microseconds(i * {step_us}), 't' || (i % 20), 'spine:llm.call:1',
               'LLM', i + 1,
               json_object('provider', ms.provider, 'model', ms.model, 'input_tokens', input_tokens,
                           'output_tokens', output_tokens, 'latency_ms', latency_ms),
               now(), ms.provider, ms.model, 'chat', input_tokens, output_tokens, 0,
               CASE WHEN k < 6 THEN (input_tokens * 2.5e-6 + output_tokens * 1e-5) END, latency_ms, 'ok'
        FROM r JOIN ms USING (k)
        """
    )
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - start


def query(tmp: Path, plan: Plan) -> tuple[dict[str, Any], Path]:
    path = tmp / "history.duckdb"
    generated_s = generate_llm_calls(path, plan.query_rows)
    with Archive.open(path) as archive:
        start = time.perf_counter()
        cold = run_report(archive, "cost")
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = run_report(archive, "cost")
        warm_s = time.perf_counter() - start
        columns = archive.sql("SELECT time, provider, model, input_tokens, output_tokens, cost_usd FROM llm_calls")
    assert cold.num_rows == warm.num_rows > 0
    start = time.perf_counter()
    day = pc.cast(pc.floor_temporal(columns["time"], unit="day"), pa.date32())
    grouped = (
        columns.append_column("day", day)
        .group_by(["day", "provider", "model"])
        .aggregate([("cost_usd", "sum"), ("cost_usd", "count"), ("input_tokens", "sum"), ("output_tokens", "sum")])
    )
    baseline_s = time.perf_counter() - start
    assert grouped.num_rows == cold.num_rows
    del columns, grouped
    gc.collect()
    return (
        line(
            "query_cost_by_model_by_day",
            "s",
            cold_s,
            "pyarrow group_by over the same columns in memory",
            baseline_s,
            rows=plan.query_rows,
            warm_s=round(warm_s, 3),
            groups=cold.num_rows,
            target_s=1.0,
            meets_absolute_target=cold_s < 1.0,
            generate_s=round(generated_s, 1),
            file_mb=round(path.stat().st_size / 1e6, 1),
        ),
        path,
    )


# -- 4. replay of the cost processor -----------------------------------------------------------


def replay(path: Path, plan: Plan) -> dict[str, Any]:
    step = timedelta(microseconds=30 * 86400 * 1_000_000 // plan.query_rows)
    end = T0 + step * plan.replay_events
    base_end = T0 + step * plan.replay_baseline_events
    processor = registry.build("cost", COST_CONFIG)
    assert row_plan(processor) is not None, "the cost processor should replay from typed rows"
    runs = []
    with Archive.open(path) as archive:
        for _ in range(plan.reps):  # the median of a few runs: the machine is shared and noisy
            gc.collect()
            start = time.perf_counter()
            run = replay_run(archive, processor, start=T0, end=end)
            runs.append(plan.replay_events / (time.perf_counter() - start))
            assert run.handled == plan.replay_events, run.handled
            decisions = len(run.decisions)
            del run
            gc.collect()
            processor = registry.build("cost", COST_CONFIG)
        # The same replay decoding a typed event per row (what processors without row input get).
        start = time.perf_counter()
        decoded_run = replay_run(archive, registry.build("cost", COST_CONFIG), start=T0, end=base_end, rows=False)
        decoded_s = time.perf_counter() - start
        gc.collect()
        start = time.perf_counter()
        decoded = list(read_events(archive, patterns=["llm.call"], start=T0, end=base_end))
        read_s = time.perf_counter() - start
    gc.collect()
    start = time.perf_counter()
    _, base = run_partitioned(registry.build("cost", COST_CONFIG), decoded)
    baseline_s = time.perf_counter() - start
    assert [e.id for e in base.decisions] == [e.id for e in decoded_run.decisions]
    rate = statistics.median(runs)
    return line(
        "replay_cost_processor",
        "events/s",
        rate,
        "the same fold over already-decoded events (no archive read)",
        base.handled / baseline_s,
        events=plan.replay_events,
        baseline_events=base.handled,
        decisions=decisions,
        runs_spine=[round(r) for r in runs],
        # Replaying by decoding and validating one typed event per archived row instead.
        decode_per_row_events_per_s=round(decoded_run.handled / decoded_s),
        read_decode_events_per_s=round(len(decoded) / read_s),
        target_events_per_s=100_000,
        meets_absolute_target=rate >= 100_000,
    )


# -- entry point ----------------------------------------------------------------------------------


BENCHES = ("ingest", "write_path", "query", "replay")


def emit(row: dict[str, Any], mode: str) -> None:
    print(json.dumps(row | {"mode": mode}, default=str), flush=True)


def main() -> None:
    global CALIBRATION
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHES,
        help="run only this benchmark (repeatable); the query and replay rows share one generated file",
    )
    args = parser.parse_args()
    only = set(args.only or BENCHES)
    plan = PLANS["quick" if args.quick else "full"]
    CALIBRATION = calibration_ns()
    with tempfile.TemporaryDirectory(prefix="spine-bench-archive-") as name:
        tmp = Path(name)
        if "ingest" in only:
            with NatsServer(tmp / "nats") as server:
                emit(asyncio.run(ingest(server.url, tmp, plan)), plan.mode)
        if "write_path" in only:
            for row in write_path(tmp, plan):
                emit(row, plan.mode)
        if only & {"query", "replay"}:
            row, history = query(tmp, plan)
            if "query" in only:
                emit(row, plan.mode)
            if "replay" in only:
                emit(replay(history, plan), plan.mode)


if __name__ == "__main__":
    main()
