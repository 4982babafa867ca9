"""Routing, alerting and scaling under the runner, against raw consume loops; route propagation latency.

    python benchmarks/decisions.py [--quick]

Prints one JSON object per line (DESIGN.md, Conventions). Starts its own
nats-server (``streams.embedded.NatsServer``) on a free port in a temporary
directory; never the system one.

Throughput, per processor (routing over ``llm.call``, alerting and scaling
over ``market.tick``), per transport (memory, NATS): the events a
``streams.runner.Runner`` folds per second from a pre-filled stream, with
everything it does (follow, partitions, duplicate check, fold, deterministic
ids, publish of the decisions, a checkpoint per batch), against:

- ``{p}_events_per_s_{t}``: the raw consume loop, ``bus.follow`` on the same
  transport reading and decoding the same events with no processor. Target:
  at least 0.5x (the processor and its bookkeeping at most halve the rate).
- ``{p}_runner_vs_hand_loop_{t}``: the same processor folded by hand over that
  loop (no publish, no checkpoint): what the exactly-once machinery costs.
- ``{p}_vs_nats_py_nats``: a bare nats-py pull consumer, ``fetch`` +
  ``orjson.loads`` (as ``benchmarks/bus.py``), with no validation at all.

Latency: on NATS, with the routing runner and a ``streams.routes.RouteClient``
following DECISIONS, the time from publishing the ``llm.call`` that trips a
breaker to the client holding the new table (p50/p99 over many flips), with
the runner's default batching and with ``batch_wait_s=0.005``; the baseline is
the same publish and one follow hop with no processor in between. Target: p99
under 100 ms.
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
import gc
import json
import statistics
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
import orjson
from _measure import rss_mb
from nats.js import api

import streams
from processors import registry
from schemas import Event, decode, make_event
from streams.bus import Bus, Record
from streams.embedded import NatsServer
from streams.processing import Partition, fold, key_function, partition_of
from streams.routes import RouteClient, RouteTable
from streams.runner import Runner, RunnerConfig

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
TARGET_RATIO = 0.5
LATENCY_TARGET_MS = 100.0


@dataclass(frozen=True)
class Plan:
    mode: str
    events: int
    reps: int
    flips: int


PLANS = {
    "quick": Plan("quick", events=4_000, reps=1, flips=30),
    "full": Plan("full", events=40_000, reps=3, flips=300),
}

ROUTING: dict[str, Any] = {"groups": {"g1": {"strategy": "cheapest"}, "g2": {"strategy": "lowest_latency"}}}
ALERTING: dict[str, Any] = {
    "rules": [
        {"kind": "rate_of_change", "name": "drop", "symbol": "*", "change_pct": -3, "window_s": 3600},
        {"kind": "volatility", "name": "vol", "symbol": "*", "window_s": 1800, "interval_s": 60, "stdev_pct": 0.3},
        {"kind": "threshold", "name": "low", "type": "market.tick", "field": "price", "op": "<", "value": 95},
    ]
}
SCALING: dict[str, Any] = {
    "workloads": [
        {
            "name": "agents",
            "max_replicas": 50,
            "signals": [
                {"kind": "volatility", "symbol": "S0", "target_per_replica": 0.05, "window_s": 1800},
                {"kind": "event_rate", "types": "market.tick", "target_per_replica": 2},
            ],
            "rules": [{"name": "crash", "symbol": "S1", "change_pct": -4, "min_replicas": 10}],
        }
    ]
}
CONFIGS = {"routing": ROUTING, "alerting": ALERTING, "scaling": SCALING}
STREAM_OF = {"routing": "LLM", "alerting": "MARKET", "scaling": "MARKET"}
TYPE_OF = {"LLM": "llm.call", "MARKET": "market.tick"}


def line(
    bench: str,
    metric: str,
    unit: str,
    spine: float,
    baseline_name: str,
    baseline: float,
    target: float | None,
    **extra: Any,
) -> str:
    doc = {
        "bench": bench,
        "metric": metric,
        "unit": unit,
        "spine": round(spine, 2),
        "baseline_name": baseline_name,
        "baseline": round(baseline, 2),
        "ratio": round(spine / baseline, 3) if baseline else None,
        "target_ratio": target,
        "peak_rss_mb": rss_mb()["peak_mb"],
        **extra,
    }
    return json.dumps(doc)


# -- inputs -------------------------------------------------------------------------------------------


def llm_calls(n: int) -> list[Event]:
    """Calls of 8 tenants to 2 groups of 3 deployments; one deployment flaps, another sees 429s."""
    out = []
    for i in range(n):
        tenant, group, dep = f"t{i % 8}", f"g{i % 2 + 1}", i % 3
        deployment = f"p{dep}/m{group}@r{dep}"
        error = None
        if dep == 0 and (i // 500) % 4 == 1 and i % 2 == 0:
            error = "server_error"
        elif dep == 1 and i % 7 == 0:
            error = "rate_limit"
        data = {
            "provider": f"p{dep}",
            "model": f"m{group}",
            "deployment": deployment,
            "model_group": group,
            "input_tokens": 800,
            "output_tokens": 200,
            "cost_usd": 0.002 * (dep + 1),
            "latency_ms": 400.0 + 150 * dep + (i % 13) * 10,
            "ttft_ms": 120.0,
            "status": "error" if error else "ok",
            "error_type": error,
        }
        out.append(make_event("llm.call", data, tenant=tenant, time=T0 + timedelta(milliseconds=50 * i)))
    return out


def market_ticks(n: int) -> list[Event]:
    """Ticks of 16 symbols over 4 tenants, with a crash in the middle."""
    out = []
    for i in range(n):
        symbol, tenant = f"S{i % 16}", f"t{i % 4}"
        phase = i / n
        level = 1.0 if phase < 0.4 else 0.93 if phase < 0.6 else 0.97
        price = 100 * level * (1 + 0.003 * ((i // 16) % 5 - 2))
        data = {"venue": "bench", "symbol": symbol, "price": round(price, 4)}
        out.append(make_event("market.tick", data, tenant=tenant, time=T0 + timedelta(milliseconds=250 * i)))
    return out


# -- the sides ------------------------------------------------------------------------------------------


async def run_runner(bus: Bus, name: str, n: int) -> float:
    """Events/s of a fresh runner (its own checkpoint group) folding ``n`` stored events."""
    runner = Runner(bus, registry.build(name, CONFIGS[name]), RunnerConfig(group=f"bench-{uuid.uuid4().hex[:8]}"))
    stop = asyncio.Event()
    gc.collect()
    began = time.perf_counter()
    task = asyncio.create_task(runner.run(stop))
    while runner.health.handled < n:
        if task.done():
            task.result()
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - began
    stop.set()
    await task
    return n / elapsed


def hand_folder(name: str) -> Callable[[Event], None]:
    """The processor folded with no runner: partitions and duplicate check as the runner has them."""
    processor = registry.build(name, CONFIGS[name])
    parts: dict[int, Partition[Any]] = {}
    key_of = key_function(processor)

    def handle(event: Event) -> None:
        p = partition_of(key_of(event), 8)
        part = parts.get(p)
        if part is None:
            part = parts[p] = Partition(p, processor.initial_state())
        fold(processor, part, event)

    return handle


async def follow_loop(bus: Bus, stream: str, n: int, handle: Callable[[Event], None] | None) -> float:
    """``bus.follow`` (any transport) over ``n`` stored events, folding each by hand if ``handle``."""
    gc.collect()
    began = time.perf_counter()
    count = 0
    async for record in bus.follow(stream):
        if handle is not None and isinstance(record, Record):
            handle(record.event)
        count += 1
        if count == n:
            break
    return n / (time.perf_counter() - began)


async def nats_loop(url: str, stream: str, n: int, handle: Callable[[Event], None] | None) -> float:
    """A bare nats-py pull consumer: fetch + orjson.loads, or Spine's decode + a fold if ``handle``."""
    nc = await nats.connect(url, name="bench-raw")
    js = nc.jetstream(timeout=10.0)
    cfg = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.ALL,
        filter_subject=f"spine.*.{TYPE_OF[stream]}.>",
        mem_storage=True,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(cfg.filter_subject or ">", stream=stream, config=cfg)
    gc.collect()
    began = time.perf_counter()
    count = 0
    try:
        while count < n:
            try:
                msgs = await sub.fetch(256, timeout=2.0)
            except TimeoutError:
                continue
            for msg in msgs:
                if handle is None:
                    orjson.loads(msg.data)
                else:
                    handle(decode(msg.data))
                count += 1
        return n / (time.perf_counter() - began)
    finally:
        await sub.unsubscribe()
        await nc.close()


async def throughput(url: str, plan: Plan, name: str, bus: Bus, transport: str) -> list[str]:
    stream = STREAM_OF[name]
    n = plan.events
    runs: dict[str, list[float]] = {"spine": [], "raw": [], "hand": [], "nats_py": []}
    for _ in range(plan.reps):
        runs["spine"].append(await run_runner(bus, name, n))
        runs["raw"].append(await follow_loop(bus, stream, n, None))
        runs["hand"].append(await follow_loop(bus, stream, n, hand_folder(name)))
        if transport == "nats":
            runs["nats_py"].append(await nats_loop(url, stream, n, None))
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    extra = {"transport": transport, "processor": name, "events": n, "reps": plan.reps, "mode": plan.mode}
    rows = [
        line(
            "decisions",
            f"{name}_events_per_s_{transport}",
            "events/s",
            med["spine"],
            "bus.follow loop: read + decode, no processor",
            med["raw"],
            TARGET_RATIO,
            **extra,
        ),
        line(
            "decisions",
            f"{name}_runner_vs_hand_loop_{transport}",
            "events/s",
            med["spine"],
            "bus.follow loop + the same fold by hand (no publish, no checkpoint)",
            med["hand"],
            None,
            **extra,
        ),
    ]
    if "nats_py" in med:
        rows.append(
            line(
                "decisions",
                f"{name}_vs_nats_py_{transport}",
                "events/s",
                med["spine"],
                "nats-py pull fetch + orjson.loads (no validation)",
                med["nats_py"],
                None,
                **extra,
            )
        )
    return rows


# -- latency --------------------------------------------------------------------------------------------


async def route_latency(url: str, plan: Plan, batch_wait_s: float) -> list[float]:
    """Publish the call that trips a breaker; time until the route client holds the new table (ms)."""
    cfg = {"breaker": {"failures": 3, "cooldown_s": 1, "half_open_successes": 1}, "rate_limit": {"min_requests": 10**6}}
    tenant = f"lat{uuid.uuid4().hex[:6]}"
    async with streams.connect(url) as bus:
        config = RunnerConfig(tenant=tenant, group=f"lat-{tenant}", batch_wait_s=batch_wait_s)
        runner = Runner(bus, registry.build("routing", cfg), config)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        async with RouteClient(bus, tenant=tenant) as client:
            await client.ready()
            clock = 0.0

            def call(status: str = "ok") -> Event:
                nonlocal clock
                clock += 0.5
                data = {
                    "provider": "p",
                    "model": "m",
                    "deployment": "p/m@a",
                    "model_group": "g",
                    "status": status,
                    "error_type": "server_error" if status == "error" else None,
                }
                return make_event("llm.call", data, tenant=tenant, time=T0 + timedelta(seconds=clock))

            async def newer_than(version: int, *, closed: bool = False) -> RouteTable:
                """The table once its version passes ``version`` (and, if ``closed``, the breaker closed)."""

                def ready(table: RouteTable) -> bool:
                    return table.version > version and (not closed or table.decision.candidates[0].breaker == "closed")

                async with asyncio.timeout(10):
                    return await client.wait_for("g", ready, tenant=tenant)

            await bus.publish(call())
            await newer_than(0)
            samples: list[float] = []
            for _ in range(plan.flips):
                handled = runner.health.handled
                for _ in range(2):  # failures 1 and 2: no visible change
                    await bus.publish(call("error"))
                async with asyncio.timeout(10):
                    # both folded before the timed event (the runner exposes a counter, not an event)
                    while runner.health.handled < handled + 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.001)
                version = client.table("g", tenant=tenant).version  # type: ignore[union-attr]
                await asyncio.sleep(0.06)  # let the runner go idle: the flip lands like a live call
                began = time.monotonic()
                await bus.publish(call("error"))  # the third failure trips the breaker
                table = await newer_than(version)
                samples.append((table.received - began) * 1000)
                clock += 2  # past the cooldown: the next call half-opens and (one success) closes it
                await bus.publish(call())
                await newer_than(table.version, closed=True)
        stop.set()
        await task
    return samples


async def latency_rows(url: str, plan: Plan) -> list[str]:
    floor = await follow_floor(url, plan)
    rows = []
    for wait, suffix in ((RunnerConfig().batch_wait_s, ""), (0.005, "_batch_wait_5ms")):
        samples = await route_latency(url, plan, wait)
        q, fq = statistics.quantiles(samples, n=100), statistics.quantiles(floor, n=100)
        extra = {"flips": len(samples), "mode": plan.mode, "batch_wait_s": wait, "max_ms": round(max(samples), 1)}
        base = "publish + one follow hop, no processor"
        rows.append(line("decisions", f"route_propagation_p50{suffix}", "ms", q[49], base, fq[49], None, **extra))
        rows.append(
            line(
                "decisions",
                f"route_propagation_p99{suffix}",
                "ms",
                q[98],
                base,
                fq[98],
                None,
                target_ms=LATENCY_TARGET_MS,
                meets_target=q[98] < LATENCY_TARGET_MS,
                **extra,
            )
        )
    return rows


async def follow_floor(url: str, plan: Plan) -> list[float]:
    """Publish one event and time its arrival at a follower: the hops with no processor in between."""
    tenant = f"floor{uuid.uuid4().hex[:6]}"
    samples: list[float] = []
    async with streams.connect(url) as bus:
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def follow() -> None:
            async for _ in bus.follow("MARKET", tenant=tenant):
                arrived.put_nowait(time.monotonic())

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        for i in range(plan.flips):
            await asyncio.sleep(0.06)
            event = make_event(
                "market.tick",
                {"venue": "b", "symbol": "S", "price": 1.0},
                tenant=tenant,
                time=T0 + timedelta(seconds=i),
            )
            began = time.monotonic()
            await bus.publish(event)
            samples.append((await asyncio.wait_for(arrived.get(), 10) - began) * 1000)
        task.cancel()
    return samples


# -- main ----------------------------------------------------------------------------------------------


async def main(plan: Plan) -> None:
    with tempfile.TemporaryDirectory(prefix="spine-bench-") as tmp, NatsServer(Path(tmp)) as server:
        calls, ticks = llm_calls(plan.events), market_ticks(plan.events)
        memory = await streams.connect(f"memory://bench-{uuid.uuid4().hex}")
        await memory.publish_many(calls + ticks)
        async with streams.connect(server.url) as nats_bus:
            await nats_bus.provision()
            for chunk in range(0, len(calls + ticks), 5000):
                await nats_bus.publish_many((calls + ticks)[chunk : chunk + 5000])
            for name in ("routing", "alerting", "scaling"):
                for transport, bus in (("memory", memory), ("nats", nats_bus)):
                    for row in await throughput(server.url, plan, name, bus, transport):
                        print(row, flush=True)
        await memory.aclose()
        for row in await latency_rows(server.url, plan):
            print(row, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="A short run (under a minute).")
    args = parser.parse_args()
    asyncio.run(main(PLANS["quick" if args.quick else "full"]))
    sys.exit(0)
