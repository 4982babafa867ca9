"""Cost-processor throughput: the native runner vs Faust, Quix Streams and raw consume loops, same run.

    python benchmarks/processors.py [--quick]

Starts its own nats-server (``streams.embedded.NatsServer``) and Tansu Kafka-API
broker (``streams.embedded_kafka.TansuBroker``) on free ports and prints one JSON
object per line (DESIGN.md, Conventions):

- ``cost_nats``: ``streams.runner.Runner`` hosting ``CostProcessor`` on NATS
  (follow, fold, publish decisions with acks, checkpoint to the KV bucket) vs a
  raw nats-py ordered pull loop doing only ``orjson.loads`` + a sum of the cost
  per tenant/model over the same events (``raw-nats``).
- ``cost_vs_faust``, ``cost_vs_quixstreams``, ``cost_vs_raw_aiokafka``: on
  Tansu, the native runner hosting ``CostProcessor`` on the Kafka Bus (follow,
  fold, publish decisions, checkpoint to the compacted checkpoint topic) vs the
  cost processor hosted by Faust (``connectors.faust_app``), the same
  aggregation (cost per tenant/model/day from the price table, in keyed
  state) as a Quix Streams app, and a raw aiokafka loop doing
  ``orjson.loads`` + sum (``raw-aiokafka``).
- ``runner_memory_peak_rss``: the native runner consumes N events (1M in a full
  run) in a fresh child process; RSS at 10/50/100 %; peak must stay flat.

Each side reads the same number of pre-published ``llm.call`` events (untimed
setup); throughput = events / wall time from start until the last one is folded.
The native and raw rows also give ``steady_*``: the same after each side's first
batch, without start-up (connecting, loading checkpoints, the first fetch),
with each side's ``startup_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import orjson
from nats.js import api

# Run as a script, this file's folder comes first on sys.path, and this file would shadow the
# `processors` package: move the folder last before importing Spine.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _measure import rss_mb

import streams
from processors.cost import Budget, CostConfig, CostProcessor, ModelPrice, PriceTable
from schemas import encode, make_event, uuid7
from spine.gcpolicy import freeze_startup_heap
from streams.catalog import nats_subject
from streams.config import KafkaSettings
from streams.embedded import NatsServer
from streams.embedded_kafka import TansuBroker
from streams.runner import Runner, RunnerConfig

PRICES = PriceTable(
    version="bench-1",
    prices={
        "gpt-4o": ModelPrice(input=2.5e-6, output=1e-5, cache_read=1.25e-6),
        "anthropic/claude": ModelPrice(input=3e-6, output=1.5e-5),
        "gemini/flash": ModelPrice(input=1e-7, output=4e-7),
    },
)
MODELS = (("openai", "gpt-4o"), ("anthropic", "claude"), ("gemini", "flash"))
T0 = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
CHECKPOINTS = (10, 50, 100)
FLAT_SLACK_MB = 16.0
KAFKA = streams.BusConfig(kafka=KafkaSettings(idempotence=False))  # Tansu refuses InitProducerId


@dataclass(frozen=True)
class Plan:
    mode: str
    native: int
    reps: int
    faust: int
    quix: int
    raw: int
    memory: int


SPINE_DOES = (
    "follow + decode of the fields the fold reads (streams.rows) + fold + publish decisions (acked)"
    " + checkpoint per batch"
)


@dataclass(frozen=True)
class Timing:
    """One side's run: ``events`` in ``seconds`` from its start; ``steady`` from its first
    batch on (``startup_s`` until then: connecting, loading checkpoints, the first fetch)."""

    events: int
    seconds: float
    startup_s: float
    steady: float  # events/s after the first batch

    @property
    def rate(self) -> float:
        return self.events / self.seconds


class _Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: tuple[float, int] | None = None

    def seen(self, count: int) -> None:
        if self.first is None and count:
            self.first = (time.perf_counter(), count)

    def done(self, n: int) -> Timing:
        end = time.perf_counter()
        first_at, first_count = self.first or (self.start, 0)
        steady = (n - first_count) / (end - first_at) if end > first_at and n > first_count else n / (end - self.start)
        return Timing(n, end - self.start, first_at - self.start, steady)


PLANS = {
    "quick": Plan("quick", native=20_000, reps=1, faust=1_000, quix=20_000, raw=20_000, memory=100_000),
    "full": Plan("full", native=300_000, reps=3, faust=3_000, quix=100_000, raw=300_000, memory=1_000_000),
}


def processor() -> CostProcessor:
    budgets = (Budget(name="daily", scope="tenant", soft_usd=50.0, hard_usd=100.0),)
    return CostProcessor(CostConfig(prices=PRICES, budgets=budgets, update_step_usd=1.0))


def templates(tenant: str) -> list[tuple[str, bytes, str]]:
    """(broker subject, event bytes with a placeholder id, kafka key) per model: fast distinct events."""
    out = []
    for i, (provider, model) in enumerate(MODELS):
        event = make_event(
            "llm.call",
            {
                "provider": provider,
                "model": model,
                "project": f"p{i % 2}",
                "session_id": f"s{i}",
                "input_tokens": 800 + 100 * i,
                "output_tokens": 150 + 20 * i,
                "cached_tokens": 128,
                "latency_ms": 1500.0,
            },
            tenant=tenant,
            id="0" * 36,
            time=T0,
            source="bench",
        )
        out.append((nats_subject(tenant, event.type, event.subject), encode(event), f"{tenant}/{event.subject}"))
    return out


def event_bytes(tenant: str, n: int) -> list[tuple[str, bytes, str]]:
    """``n`` distinct llm.call events (fresh ids, event time one second apart)."""
    base = templates(tenant)
    stamp = b'"time":"2026-11-20T00:00:00Z"'
    out = []
    for i in range(n):
        subject, raw, key = base[i % len(base)]
        when = (T0 + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        data = raw.replace(b"0" * 36, uuid7().encode(), 1).replace(stamp, b'"time":"' + when + b'"', 1)
        out.append((subject, data, key))
    return out


def _runs(natives: list[Timing], raws: list[Timing]) -> dict[str, Any]:
    """Every rep of both sides, and the same comparison after each side's first batch."""
    steady_spine = statistics.median(t.steady for t in natives)
    steady_base = statistics.median(t.steady for t in raws)
    return {
        "runs_spine": [round(t.rate) for t in natives],
        "runs_baseline": [round(t.rate) for t in raws],
        "startup_s_spine": [round(t.startup_s, 3) for t in natives],
        "startup_s_baseline": [round(t.startup_s, 3) for t in raws],
        "steady_spine": round(steady_spine),
        "steady_baseline": round(steady_base),
        "steady_ratio": round(steady_spine / steady_base, 3),
    }


def line(metric: str, unit: str, spine: float | None, baseline_name: str, baseline: float | None, **extra: Any) -> dict:
    return {
        "bench": "processors",
        "metric": metric,
        "unit": unit,
        "spine": None if spine is None else round(spine, 1),
        "baseline_name": baseline_name,
        "baseline": None if baseline is None else round(baseline, 1),
        "ratio": round(spine / baseline, 3) if spine and baseline else None,
        "target_ratio": extra.pop("target_ratio", None),
        "peak_rss_mb": extra.pop("peak_rss_mb", rss_mb()["peak_mb"]),
        **extra,
    }


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


# -- NATS: the native runner and raw nats-py ----------------------------------------------


async def nats_fill(url: str, tenant: str, n: int) -> None:
    async with streams.connect(url) as bus:
        await bus.provision()
    nc = await nats.connect(url, name="bench-fill")
    js = nc.jetstream(timeout=20.0)
    try:
        futures = []
        for subject, data, _ in event_bytes(tenant, n):
            msg_id = orjson.loads(data)["id"]
            futures.append(
                await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id, "ce-type": "llm.call"})
            )
            if len(futures) >= 10_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await nc.drain()


async def native_run(
    url: str,
    tenant: str,
    n: int,
    on_count: Callable[[int], None] | None = None,
    config: streams.BusConfig | None = None,
    group: str | None = None,
) -> Timing:
    """How long the native runner takes to fold ``n`` events of ``tenant`` (decisions published, checkpointed).

    ``group`` (checkpoint namespace) must be new: a group that already folded the events resumes past them.
    """
    async with streams.connect(url, config) as bus:
        runner = Runner(bus, processor(), RunnerConfig(tenant=tenant, group=group or f"bench-{tenant}"))
        stop = asyncio.Event()
        freeze_startup_heap()  # as `spine run` does
        clock = _Stopwatch()
        task = asyncio.create_task(runner.run(stop))
        marks = sorted({n * p // 100 for p in CHECKPOINTS})
        while runner.health.handled < n:
            clock.seen(runner.health.handled)
            if task.done():
                task.result()
                raise RuntimeError("runner stopped early")
            if on_count is not None and marks and runner.health.handled >= marks[0]:
                on_count(marks.pop(0))
            await asyncio.sleep(0.002)
        timing = clock.done(n)
        for mark in marks:
            if on_count is not None:
                on_count(mark)
        stop.set()
        await asyncio.wait_for(task, 30)
    return timing


async def raw_nats(url: str, tenant: str, n: int) -> Timing:
    """An ordered pull over the same events: fetch, orjson.loads, sum cost inputs per tenant/model."""
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream(timeout=20.0)
    cfg = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        filter_subject=f"spine.{tenant}.llm.call.*",
        deliver_policy=api.DeliverPolicy.ALL,
        mem_storage=True,
        inactive_threshold=30.0,
    )
    totals: dict[tuple[str, str], list[float]] = {}
    freeze_startup_heap()  # the same GC policy as the native side
    clock = _Stopwatch()
    sub = await js.pull_subscribe(cfg.filter_subject or "", stream="LLM", config=cfg)
    count = 0
    try:
        while count < n:
            try:
                msgs = await sub.fetch(256, timeout=2.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                _sum(totals, orjson.loads(msg.data))
                count += 1
            clock.seen(count)
        timing = clock.done(n)
    finally:
        await sub.unsubscribe()
        await nc.drain()
    return timing


def _sum(totals: dict[tuple[str, str], list[float]], doc: dict[str, Any]) -> None:
    data = doc["data"]
    acc = totals.get((doc["tenant"], data["model"]))
    if acc is None:
        acc = totals[(doc["tenant"], data["model"])] = [0.0, 0.0, 0.0]
    acc[0] += 1
    acc[1] += data["input_tokens"]
    acc[2] += data["output_tokens"]


async def nats_throughput(url: str, plan: Plan) -> tuple[dict[str, Any], float]:
    natives: list[Timing] = []
    raws: list[Timing] = []
    for rep in range(plan.reps):
        tenant = f"bench-{rep}-{uuid.uuid4().hex[:6]}"
        await nats_fill(url, tenant, plan.native)
        order = ("native", "raw") if rep % 2 == 0 else ("raw", "native")
        for side in order:
            if side == "native":
                natives.append(await native_run(url, tenant, plan.native))
            else:
                raws.append(await raw_nats(url, tenant, plan.native))
    spine, base = statistics.median(t.rate for t in natives), statistics.median(t.rate for t in raws)
    row = line(
        "cost_nats",
        "events/s",
        spine,
        "raw-nats",
        base,
        target_ratio=0.5,
        events=plan.native,
        reps=plan.reps,
        **_runs(natives, raws),
        spine_does=SPINE_DOES,
        baseline_does="ordered pull fetch(256) + orjson.loads + sum per tenant/model",
    )
    return row, spine


# -- Kafka (Tansu): Faust, Quix Streams, raw aiokafka --------------------------------------


async def kafka_fill(url: str, tenant: str, n: int) -> None:
    from schemas import decode

    async with streams.connect(url, KAFKA) as bus:
        await bus.provision()
        batch = []
        for _, data, _ in event_bytes(tenant, n):
            batch.append(decode(data))
            if len(batch) >= 5000:
                await bus.publish_many(batch)
                batch = []
        if batch:
            await bus.publish_many(batch)


async def faust_run(url: str, tenant: str, n: int, data_dir: Path) -> float:
    from connectors.faust_app import FaustSettings, build_app

    settings = FaustSettings(
        broker=url,
        app_id=f"bench-{tenant}",
        topic_partitions=4,
        session_timeout_s=3.0,
        heartbeat_interval_s=0.3,
        data_dir=data_dir,
    )
    host = build_app(processor(), settings)
    start = time.perf_counter()
    await host.start()
    try:
        deadline = start + 300
        while host.health.handled < n:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"faust folded {host.health.handled} of {n} in 300 s")
            await asyncio.sleep(0.01)
        return time.perf_counter() - start
    finally:
        await host.stop()


async def raw_aiokafka(bootstrap: str, n: int) -> Timing:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        "spine.llm", bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", group_id=None
    )
    totals: dict[tuple[str, str], list[float]] = {}
    freeze_startup_heap()  # the same GC policy as the native side
    clock = _Stopwatch()
    await consumer.start()
    count = 0
    try:
        while count < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                for record in records:
                    _sum(totals, orjson.loads(record.value))
                    count += 1
            clock.seen(count)
        timing = clock.done(n)
    finally:
        await consumer.stop()
    return timing


def quix_run(bootstrap: str, n: int, state_dir: str) -> float:
    """The same aggregation in Quix Streams: cost per tenant/model/day in keyed state."""
    from quixstreams import Application

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
        producer_extra_config={"enable.idempotence": False},  # Tansu refuses InitProducerId
    )
    topic = app.topic("spine.llm", value_deserializer="json", key_deserializer="str")
    sdf = app.dataframe(topic)
    prices = {f"{p}/{m}": PRICES.lookup(p, m) for p, m in MODELS}
    seen = [0]

    def fold(doc: dict[str, Any], state: Any) -> dict[str, Any]:
        data = doc["data"]
        price = prices[f"{data['provider']}/{data['model']}"]
        cached = min(data["cached_tokens"], data["input_tokens"])
        cost = (
            (data["input_tokens"] - cached) * price.input
            + cached * (price.cache_read or price.input)
            + data["output_tokens"] * price.output
        )
        key = f"{doc['time'][:10]}|{data['model']}"
        total = state.get(key, [0.0, 0]) or [0.0, 0]
        state.set(key, [total[0] + cost, total[1] + 1])
        seen[0] += 1
        return doc

    sdf = sdf.apply(fold, stateful=True)
    start = time.perf_counter()
    app.run(count=n, timeout=120)
    if seen[0] < n:
        raise RuntimeError(f"quixstreams folded {seen[0]} of {n}")
    return time.perf_counter() - start


def kafka_rows(plan: Plan, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    common = {"transport": "kafka (Tansu, memory storage), every side reading the same topic"}
    n = max(plan.faust, plan.quix, plan.raw, plan.native)
    with TansuBroker(tmp / "tansu") as broker:
        tenant = f"kbench-{uuid.uuid4().hex[:6]}"
        asyncio.run(kafka_fill(broker.url, tenant, n))
        natives: list[Timing] = []
        raws: list[Timing] = []
        for rep in range(plan.reps):  # alternate the order: the machine is shared and noisy
            for side in ("native", "raw") if rep % 2 == 0 else ("raw", "native"):
                if side == "native":
                    group = f"bench-{tenant}-{rep}"  # each rep folds from the start
                    natives.append(asyncio.run(native_run(broker.url, tenant, plan.native, config=KAFKA, group=group)))
                else:
                    raws.append(asyncio.run(raw_aiokafka(broker.bootstrap, plan.raw)))
        native, raw = statistics.median(t.rate for t in natives), statistics.median(t.rate for t in raws)
        try:
            faust: float | None = plan.faust / asyncio.run(faust_run(broker.url, tenant, plan.faust, tmp / "faust"))
            faust_error = None
        except Exception as exc:
            faust, faust_error = None, f"{type(exc).__name__}: {exc}"
        try:
            quix: float | None = plan.quix / quix_run(broker.bootstrap, plan.quix, str(tmp / "quix"))
            quix_error = None
        except Exception as exc:
            quix, quix_error = None, f"{type(exc).__name__}: {exc}"
    rows.append(
        line(
            "cost_vs_faust",
            "events/s",
            native,
            "faust",
            faust,
            target_ratio=5.0,
            events=plan.faust,
            baseline_does="connectors.faust_app: route + fold agents, checkpoint in a Faust table, one event at a time",
            error=faust_error,
            **common,
        )
    )
    rows.append(
        line(
            "cost_vs_quixstreams",
            "events/s",
            native,
            "quixstreams",
            quix,
            target_ratio=1.0,
            events=plan.quix,
            baseline_does="StreamingDataFrame.apply(stateful): cost per tenant/model/day in RocksDB state",
            error=quix_error,
            **common,
        )
    )
    rows.append(
        line(
            "cost_vs_raw_aiokafka",
            "events/s",
            native,
            "raw-aiokafka",
            raw,
            target_ratio=0.5,
            events=plan.raw,
            **_runs(natives, raws),
            spine_does=SPINE_DOES,
            baseline_does="AIOKafkaConsumer.getmany + orjson.loads + sum per tenant/model",
            **common,
        )
    )
    return rows


# -- memory -------------------------------------------------------------------------------


async def memory_child(url: str, tenant: str, n: int) -> dict[str, Any]:
    samples: dict[str, dict[str, float]] = {}
    marks = {n * p // 100: p for p in CHECKPOINTS}

    def on_count(count: int) -> None:
        samples[f"{marks[count]}%"] = rss_mb()

    before = rss_mb()
    timing = await native_run(url, tenant, n, on_count)
    return {"events_per_s": timing.rate, "start": before, "checkpoints": samples}


def memory(url: str, plan: Plan) -> dict[str, Any]:
    n = plan.memory
    tenant = f"mem-{uuid.uuid4().hex[:6]}"
    asyncio.run(nats_fill(url, tenant, n))
    args = [sys.executable, __file__, "--child", "--url", url, "--tenant", tenant, "--n", str(n)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    first, last = f"{CHECKPOINTS[0]}%", f"{CHECKPOINTS[-1]}%"
    growth = result["checkpoints"][last]["peak_mb"] - result["checkpoints"][first]["peak_mb"]
    return line(
        "runner_memory_peak_rss",
        "MB",
        result["checkpoints"][last]["peak_mb"],
        "flat",
        None,
        target=f"flat: peak RSS grows < {FLAT_SLACK_MB:.0f} MB from {first} to {last} of the events",
        flat=growth < FLAT_SLACK_MB,
        peak_growth_mb=round(growth, 1),
        peak_rss_mb=result["checkpoints"][last]["peak_mb"],
        events=n,
        rss=result["checkpoints"] | {"start": result["start"]},
        events_per_s=round(result["events_per_s"]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--only", choices=["nats", "kafka", "memory"], help="run one part")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.child:
        print(json.dumps(asyncio.run(memory_child(args.url, args.tenant, args.n))))
        return
    plan = PLANS["quick" if args.quick else "full"]
    with tempfile.TemporaryDirectory(prefix="spine-bench-") as tmp, NatsServer(Path(tmp) / "nats") as server:
        if args.only in (None, "nats"):
            row, _ = asyncio.run(nats_throughput(server.url, plan))
            emit(row | {"mode": plan.mode})
        if args.only in (None, "kafka"):
            for row in kafka_rows(plan, Path(tmp)):
                emit(row | {"mode": plan.mode})
        if args.only in (None, "memory"):
            emit(memory(server.url, plan) | {"mode": plan.mode})


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        main()
