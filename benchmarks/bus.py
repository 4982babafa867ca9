"""Bus throughput and memory on the embedded NATS, against raw nats-py in the same run.

    python benchmarks/bus.py [--quick] [--transport nats|kafka]

``--transport kafka`` measures Spine on Kafka against raw aiokafka instead, on
Tansu brokers it starts itself (``benchmarks/_bus_kafka.py`` says how).

Starts its own nats-server (``streams.embedded.NatsServer``) on a free port in a
temporary directory and prints one JSON object per line (DESIGN.md, Conventions):

- ``publish``: ``bus.publish_many(events)`` vs ``js.publish_async`` of the same
  bytes and headers, every ack awaited. Spine's figure includes encoding,
  subject and header building (its real work); raw publishes pre-encoded bytes.
- ``consume``: ``bus.subscribe(...)`` + ``await delivery.ack()`` vs a durable
  pull consumer doing ``fetch(batch)`` + ``orjson.loads`` + ``msg.ack()``.
- ``memory``: each side consumes N events (1M in a full run) in a fresh child
  process, sampling RSS and peak RSS at 10/50/100%; peak RSS must stay flat.

Throughput figures are medians over several repetitions (the sides alternate
who goes first); each side reads and writes its own tenant's copy of the events.
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
import functools
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nats
import nats.errors
import orjson
from _measure import rss_mb
from nats.aio.client import Client
from nats.js import JetStreamContext, api

import streams
from schemas import Event, encode, make_event, uuid7
from schemas.samples import SAMPLES
from streams.catalog import nats_subject
from streams.embedded import NatsServer

TYPE = "llm.call"
STREAM = "LLM"
TARGET_RATIO = 0.8
CHECKPOINTS = (10, 50, 100)
# Peak RSS may grow this much between the 10% and the 100% checkpoint and still count as flat.
FLAT_SLACK_MB = 16.0

RawMsg = tuple[str, bytes, dict[str, str]]


@dataclass(frozen=True)
class Plan:
    mode: str
    events: int  # per side per repetition
    reps: int
    memory_events: int
    memory_baseline_events: int


PLANS = {
    "quick": Plan("quick", events=10_000, reps=3, memory_events=50_000, memory_baseline_events=25_000),
    "full": Plan("full", events=25_000, reps=5, memory_events=1_000_000, memory_baseline_events=100_000),
}


# -- measurement helpers ------------------------------------------------------------


def events_for(tenant: str, n: int) -> list[Event]:
    sample = SAMPLES[TYPE]
    return [make_event(TYPE, sample, tenant=tenant) for _ in range(n)]


def headers_of(event: Event) -> dict[str, str]:
    return {"Nats-Msg-Id": event.id, "ce-type": event.type}


async def raw_connect(url: str) -> tuple[Client, JetStreamContext]:
    nc = await nats.connect(url, name="bench-raw")
    return nc, nc.jetstream(timeout=10.0)


def raw_consumer_config(durable: str, tenant: str, batch: int) -> api.ConsumerConfig:
    """What Spine's consumer group asks for, so the server does the same work for both."""
    return api.ConsumerConfig(
        durable_name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=30.0,
        filter_subject=f"spine.{tenant}.{TYPE}.*",
        deliver_policy=api.DeliverPolicy.ALL,
        max_ack_pending=max(1000, batch * 8),
    )


async def raw_consume(
    js: JetStreamContext,
    durable: str,
    tenant: str,
    n: int,
    batch: int,
    on_count: Callable[[int], None] | None = None,
) -> None:
    """Durable pull consume of ``n`` events: fetch, parse the body, ack."""
    cfg = raw_consumer_config(durable, tenant, batch)
    sub = await js.pull_subscribe(cfg.filter_subject or "", durable=durable, stream=STREAM, config=cfg)
    count = 0
    try:
        while count < n:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                orjson.loads(msg.data)
                await msg.ack()
                count += 1
                if on_count is not None:
                    on_count(count)
    finally:
        await sub.unsubscribe()


async def spine_consume(
    bus: streams.Bus,
    group: str,
    tenant: str,
    n: int,
    on_count: Callable[[int], None] | None = None,
) -> None:
    count = 0
    # The transports' subscribe is an async generator: close it to unsubscribe at once.
    subscription = cast(
        "AsyncGenerator[streams.Delivery, None]", bus.subscribe(TYPE, group=group, tenant=tenant, start="all")
    )
    async with contextlib.aclosing(subscription) as deliveries:
        async for delivery in deliveries:
            await delivery.ack()
            count += 1
            if on_count is not None:
                on_count(count)
            if count == n:
                break


async def settled(check: Callable[[], Awaitable[int]], what: str) -> None:
    """Wait (untimed) until the server has no pending or unacked messages left for a consumer."""
    left = -1
    for _ in range(50):
        left = await check()
        if left == 0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what}: {left} events still pending or unacked after the run")


@dataclass
class Runs:
    """Per-repetition figures of one metric: events/s and client CPU per event, each side."""

    rate: dict[str, list[float]] = field(default_factory=lambda: {"spine": [], "raw": []})
    cpu_us: dict[str, list[float]] = field(default_factory=lambda: {"spine": [], "raw": []})

    async def measure(self, side: str, n: int, work: Awaitable[Any]) -> None:
        gc.collect()  # start each side with the same (clean) collector state
        wall, cpu = time.perf_counter(), time.process_time()
        await work
        self.rate[side].append(n / (time.perf_counter() - wall))
        self.cpu_us[side].append((time.process_time() - cpu) / n * 1e6)

    def row(self, metric: str, **extra: Any) -> dict[str, Any]:
        spine, raw = statistics.median(self.rate["spine"]), statistics.median(self.rate["raw"])
        paired = [s / r for s, r in zip(self.rate["spine"], self.rate["raw"], strict=True)]
        cpu_spine, cpu_raw = statistics.median(self.cpu_us["spine"]), statistics.median(self.cpu_us["raw"])
        return line(
            "bus",
            metric,
            "events/s",
            spine,
            raw,
            **extra,
            # Steadier than wall clock on a shared machine: client CPU per event (the client is the bottleneck).
            ratio_paired_median=round(statistics.median(paired), 3),
            cpu_us_per_event={"spine": round(cpu_spine, 1), "baseline": round(cpu_raw, 1)},
            cpu_ratio=round(cpu_raw / cpu_spine, 3),
            runs_spine=[round(x) for x in self.rate["spine"]],
            runs_baseline=[round(x) for x in self.rate["raw"]],
        )


def line(bench: str, metric: str, unit: str, spine: float, baseline: float, **extra: Any) -> dict[str, Any]:
    return {
        "bench": bench,
        "metric": metric,
        "unit": unit,
        "spine": round(spine, 1),
        "baseline_name": extra.pop("baseline_name", "nats-py"),
        "baseline": round(baseline, 1),
        "ratio": round(spine / baseline, 3) if baseline else None,
        "target_ratio": extra.pop("target_ratio", TARGET_RATIO),
        "peak_rss_mb": extra.pop("peak_rss_mb", rss_mb()["peak_mb"]),
        **extra,
    }


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def progress(what: str, since: float) -> None:
    """A line on stderr (stdout stays JSON): where a long run spends its time."""
    print(f"bus bench: {what} in {time.perf_counter() - since:.0f}s", file=sys.stderr, flush=True)


# -- throughput ---------------------------------------------------------------------


async def throughput(url: str, plan: Plan) -> list[dict[str, Any]]:
    config = streams.BusConfig()
    batch = config.fetch_batch
    pub, con = Runs(), Runs()
    n = plan.events
    async with streams.connect(url, config) as bus:
        nc, js = await raw_connect(url)
        try:
            for rep in range(plan.reps):
                # Same-length tenants: both sides move byte-for-byte the same sizes.
                tenants = {"spine": f"spine{rep:03d}", "raw": f"rawpy{rep:03d}"}
                groups = {"spine": f"bench-spine-{rep}", "raw": f"bench-raw-{rep}"}
                spine_events = events_for(tenants["spine"], n)
                raw_events = (make_event(TYPE, SAMPLES[TYPE], tenant=tenants["raw"]) for _ in range(n))
                raw_msgs = [(nats_subject(e.tenant, e.type, e.subject), encode(e), headers_of(e)) for e in raw_events]

                async def publish(side: str, events: list[Event] = spine_events, msgs: list[RawMsg] = raw_msgs) -> None:
                    if side == "spine":
                        acks = [bool(a.duplicate) for a in await bus.publish_many(events)]
                    else:
                        futures = [await js.publish_async(subject, data, headers=hdrs) for subject, data, hdrs in msgs]
                        acks = [bool(a.duplicate) for a in await asyncio.gather(*futures)]
                    assert len(acks) == n and not any(acks), f"{side}: lost or duplicate publishes"

                async def consume(side: str, group: str, tenant: str) -> None:
                    if side == "spine":
                        await spine_consume(bus, group, tenant, n)
                    else:
                        await raw_consume(js, group, tenant, n, batch)

                # Alternate who goes first, so drift on a shared machine hits both sides alike.
                order = ["spine", "raw"] if rep % 2 == 0 else ["raw", "spine"]
                for side in order:
                    await pub.measure(side, n, publish(side))
                for side in order:
                    await con.measure(side, n, consume(side, groups[side], tenants[side]))
                await settled(functools.partial(spine_lag, bus, groups["spine"]), "spine consume")
                await settled(functools.partial(raw_lag, js, groups["raw"]), "raw consume")
                del spine_events, raw_msgs
        finally:
            await nc.drain()

    common = {
        "events": n,
        "reps": plan.reps,
        "event_type": TYPE,
        "event_bytes": len(encode(events_for("x", 1)[0])),
        "peak_rss_of": "this bench process, which holds both sides' pre-built events",
    }
    return [
        pub.row(
            "publish",
            baseline_name="nats-py js.publish_async + await all acks",
            spine_includes="encode + subject + headers per event (raw publishes pre-encoded bytes)",
            spine_path="core publish with a reply inbox per call, acks parsed in its callback (not publish_async)",
            publish_window=config.publish_window,
            **common,
        ),
        con.row(
            "consume_ack",
            baseline_name="nats-py durable pull fetch + orjson.loads + msg.ack",
            spine_includes="decode + validation into typed events, attempt/DLQ checks",
            spine_path="own pull requests, one wake-up per batch (nats-py's fetch starts 2 tasks per message)",
            fetch_batch=batch,
            **common,
        ),
    ]


async def spine_lag(bus: streams.Bus, group: str) -> int:
    return (await bus.lag(group)).total


async def raw_lag(js: JetStreamContext, durable: str) -> int:
    info = await js.consumer_info(STREAM, durable)
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


# -- memory -------------------------------------------------------------------------


async def fill(url: str, tenant: str, n: int) -> None:
    """Store ``n`` distinct events fast (untimed setup): one template, fresh ids, core publishes, no headers."""
    placeholder = b"0" * len(uuid7())
    template = encode(make_event(TYPE, SAMPLES[TYPE], tenant=tenant, id=placeholder.decode()))
    subject = nats_subject(tenant, TYPE, make_event(TYPE, SAMPLES[TYPE]).subject)
    nc, js = await raw_connect(url)
    try:
        before = (await js.stream_info(STREAM)).state.messages
        for sent in range(n):
            await nc.publish(subject, template.replace(placeholder, uuid7().encode(), 1))
            if sent % 10_000 == 9_999:
                await nc.flush()  # backpressure: let the server catch up
        await nc.flush()
        stored = 0
        for _ in range(600):
            stored = (await js.stream_info(STREAM)).state.messages - before
            if stored >= n:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"fill: only {stored} of {n} events stored")
    finally:
        await nc.drain()


async def memory_child(side: str, url: str, tenant: str, n: int) -> dict[str, Any]:
    """Consume ``n`` events on one side, sampling RSS; runs in a fresh process."""
    marks = {n * p // 100: p for p in CHECKPOINTS}
    samples: dict[str, dict[str, float]] = {}
    start = time.perf_counter()

    def on_count(count: int) -> None:
        if count in marks:
            samples[f"{marks[count]}%"] = rss_mb()

    before = rss_mb()
    if side == "spine":
        async with streams.connect(url) as bus:
            await spine_consume(bus, "bench-memory-spine", tenant, n, on_count)
    else:
        nc, js = await raw_connect(url)
        try:
            await raw_consume(js, "bench-memory-raw", tenant, n, streams.BusConfig().fetch_batch, on_count)
        finally:
            await nc.drain()
    return {"events_per_s": n / (time.perf_counter() - start), "start": before, "checkpoints": samples}


def run_child(side: str, url: str, tenant: str, n: int) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", side, "--url", url, "--tenant", tenant, "--n", str(n)]
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"memory child ({side}) failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def memory(url: str, plan: Plan) -> dict[str, Any]:
    n = plan.memory_events
    start = time.perf_counter()
    asyncio.run(fill(url, "memory", n))
    progress(f"stored {n} events for the memory run", start)
    start = time.perf_counter()
    spine = run_child("spine", url, "memory", n)
    progress(f"Spine consumed {n}", start)
    start = time.perf_counter()
    raw = run_child("raw", url, "memory", plan.memory_baseline_events)
    progress(f"nats-py consumed {plan.memory_baseline_events}", start)
    first, last = f"{CHECKPOINTS[0]}%", f"{CHECKPOINTS[-1]}%"
    growth = spine["checkpoints"][last]["peak_mb"] - spine["checkpoints"][first]["peak_mb"]
    baseline_growth = raw["checkpoints"][last]["peak_mb"] - raw["checkpoints"][first]["peak_mb"]
    return line(
        "bus",
        "consume_memory_peak_rss",
        "MB",
        spine["checkpoints"][last]["peak_mb"],
        raw["checkpoints"][last]["peak_mb"],
        baseline_name="nats-py durable pull fetch + orjson.loads + msg.ack",
        target_ratio=None,
        target=f"flat: peak RSS grows < {FLAT_SLACK_MB:.0f} MB from {first} to {last} of the events",
        flat=growth < FLAT_SLACK_MB,
        peak_growth_mb=round(growth, 1),
        baseline_peak_growth_mb=round(baseline_growth, 1),
        peak_rss_mb=spine["checkpoints"][last]["peak_mb"],
        events=n,
        baseline_events=plan.memory_baseline_events,
        spine_rss=spine["checkpoints"] | {"start": spine["start"]},
        baseline_rss=raw["checkpoints"] | {"start": raw["start"]},
        spine_events_per_s=round(spine["events_per_s"]),
        baseline_events_per_s=round(raw["events_per_s"]),
        note=(
            "each side consumes (with acks) in a fresh child process; RSS and peak RSS in MB after that share "
            "of its events; the baseline reads fewer events to keep the run short"
        ),
    )


# -- entry point --------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--transport", choices=["nats", "kafka"], default="nats", help="the broker to measure on")
    parser.add_argument("--child", choices=["spine", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(memory_child(args.child, args.url, args.tenant, args.n))))
        return
    plan = PLANS["quick" if args.quick else "full"]
    if args.transport == "kafka":
        from _bus_kafka import kafka_rows  # the Kafka mode lives next door; aiokafka only loads for it

        for row in kafka_rows(plan.reps, plan.events, line, progress):
            emit(row | {"mode": plan.mode})
        return
    with tempfile.TemporaryDirectory(prefix="spine-bench-") as tmp, NatsServer(Path(tmp)) as server:
        start = time.perf_counter()
        for row in asyncio.run(throughput(server.url, plan)):
            emit(row | {"mode": plan.mode})
        progress(f"throughput, {plan.reps} x {plan.events} events a side", start)
        emit(memory(server.url, plan) | {"mode": plan.mode})


if __name__ == "__main__":
    main()
