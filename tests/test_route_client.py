"""The route client against the memory bus, its choice function, and the backlog reporter."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta

from connectors.backlog import backlog_event, report_backlog
from processors.routing import build as build_router
from schemas import Event, make_event
from schemas.envelope import NodeBacklogEvent
from schemas.payloads.decisions import RouteCandidate, RouteDecision
from streams.bus import Record, Undecodable
from streams.routes import RouteClient, choose, fallbacks
from streams.runner import Runner, RunnerConfig
from streams.transports.memory import MemoryBus
from tests.decisions_support import at, call


def fresh_bus() -> MemoryBus:
    return MemoryBus(f"routes-{uuid.uuid4().hex}")


def candidate(name: str, weight: float, breaker: str = "closed", open_until: int | None = None) -> RouteCandidate:
    until = at(open_until) if open_until is not None else None
    provider = name.split("/", maxsplit=1)[0]
    fields: dict[str, object] = {"deployment": name, "provider": provider, "model": "m", "weight": weight}
    return RouteCandidate.model_validate({**fields, "breaker": breaker, "open_until": until})


def decision(version: int, strategy: str, *candidates: RouteCandidate, group: str = "gpt-4o") -> RouteDecision:
    return RouteDecision(model_group=group, version=version, strategy=strategy, candidates=candidates)  # type: ignore[arg-type]


def route_event(data: RouteDecision, tenant: str = "acme") -> Event:
    return make_event("decision.route", data, tenant=tenant, time=at(data.version), source="tests")


# -- choosing ---------------------------------------------------------------------------------------


def test_weighted_choice_is_stable_per_key_and_follows_the_weights() -> None:
    table = decision(1, "weighted", candidate("a/x", 0.75), candidate("b/y", 0.25))
    keys = [f"user-{i}" for i in range(4000)]
    picks = {k: choose(table, k) for k in keys}
    assert all(choose(table, k) == picks[k] for k in keys[:100])  # the same key, the same deployment
    share = Counter(p.deployment for p in picks.values() if p is not None)
    assert 0.72 < share["a/x"] / len(keys) < 0.78
    # Shift 10% of the traffic: only keys whose share moved change deployment (rendezvous hashing).
    shifted = decision(2, "weighted", candidate("a/x", 0.65), candidate("b/y", 0.35))
    moved = [k for k in keys if choose(shifted, k).deployment != picks[k].deployment]  # type: ignore[union-attr]
    assert all(picks[k].deployment == "a/x" for k in moved)  # type: ignore[union-attr]
    assert 0.07 < len(moved) / len(keys) < 0.13


def test_ordered_choice_spills_by_weight_and_sheds_when_everyone_is_throttled() -> None:
    table = decision(1, "cheapest", candidate("a/x", 0.3, "half_open"), candidate("b/y", 1.0))
    share = Counter(choose(table, f"k{i}").deployment for i in range(3000))  # type: ignore[union-attr]
    assert 0.26 < share["a/x"] / 3000 < 0.34 and share["b/y"] + share["a/x"] == 3000
    throttled = decision(2, "fallback", candidate("a/x", 0.5), candidate("b/y", 0.5))
    picks = [choose(throttled, f"k{i}") for i in range(3000)]
    assert 0.2 < picks.count(None) / 3000 < 0.3  # both decline a quarter of the keys
    assert [c.deployment for c in fallbacks(table, "k1")] in (["a/x", "b/y"], ["b/y", "a/x"])


def test_weighted_shares_below_one_are_shed() -> None:
    half = decision(1, "weighted", candidate("a/x", 0.1, "half_open"))
    picks = [choose(half, f"k{i}") for i in range(2000)]
    assert 0.07 < sum(p is not None for p in picks) / 2000 < 0.13


def test_an_all_open_table_offers_a_probe_once_the_cooldown_is_over() -> None:
    table = decision(3, "weighted", candidate("a/x", 0, "open", open_until=100), candidate("b/y", 0, "open", 200))
    assert choose(table, "k", now=at(99)) is None
    assert choose(table, "k", now=at(100)).deployment == "a/x"  # type: ignore[union-attr]
    assert choose(table, "k") is None  # no clock, no probe
    assert fallbacks(table, "k", now=at(10)) == []


# -- the client on a bus ------------------------------------------------------------------------------


async def test_the_client_reads_stored_tables_then_follows_new_ones_and_keeps_the_highest_version() -> None:
    bus = fresh_bus()
    v1 = decision(1, "weighted", candidate("a/x", 1.0))
    v2 = decision(2, "weighted", candidate("a/x", 0.5), candidate("b/y", 0.5))
    await bus.publish_many([route_event(v1), route_event(v2), route_event(v1, tenant="other")])
    async with RouteClient(bus, tenant="*") as client:
        async with asyncio.timeout(5):
            await client.ready()
        table = client.table("gpt-4o", tenant="acme")
        assert table is not None and table.version == 2
        assert client.table("gpt-4o", tenant="other").version == 1  # type: ignore[union-attr]
        assert client.table("nope") is None and client.choose("nope", "k") is None
        # an old version arriving late (a re-publish after the broker's duplicate window) is ignored
        stale = make_event("decision.route", v1, tenant="acme", time=at(9), source="tests")
        v3 = decision(3, "fallback", candidate("b/y", 1.0))
        await bus.publish_many([stale, route_event(v3)])
        async with asyncio.timeout(5):
            found = await client.wait_for("gpt-4o", lambda t: t.version >= 3, tenant="acme")
        assert found.decision.strategy == "fallback"
        assert client.choose("gpt-4o", "user-1", tenant="acme").deployment == "b/y"  # type: ignore[union-attr]
        assert [c.deployment for c in client.fallbacks("gpt-4o", "user-1", tenant="acme")] == ["b/y"]
        assert client.seen == 4


async def test_a_tripped_breaker_reaches_the_client_through_the_runner() -> None:
    bus = fresh_bus()
    stop = asyncio.Event()
    runner = Runner(bus, build_router({}), RunnerConfig(batch_wait_s=0.01))
    task = asyncio.create_task(runner.run(stop))
    try:
        async with RouteClient(bus, tenant="acme", clock=lambda: at(0)) as client:
            await bus.publish_many([call(0, "openai/east"), call(1, "azure/west")])
            async with asyncio.timeout(5):
                await client.wait_for("gpt-4o", lambda t: len(t.decision.candidates) == 2, tenant="acme")
            await bus.publish_many([call(2 + i, "openai/east", status="error", error="server_error") for i in range(5)])
            async with asyncio.timeout(5):
                table = await client.wait_for("gpt-4o", lambda t: t.version == 3, tenant="acme")
            assert [(c.deployment, c.breaker) for c in table.decision.candidates] == [
                ("azure/west", "closed"),
                ("openai/east", "open"),
            ]
            assert {client.choose("gpt-4o", f"u{i}", tenant="acme").deployment for i in range(50)} == {"azure/west"}  # type: ignore[union-attr]
    finally:
        stop.set()
        await task


class FlakyBus(MemoryBus):
    """A memory bus whose first follow fails after one record, like a broker hiccup."""

    failures = 1

    async def follow(
        self, stream: str, *, after: Mapping[int, int] | None = None, pattern: str = ">", tenant: str = "*"
    ) -> AsyncIterator[Record | Undecodable]:
        async for item in super().follow(stream, after=after, pattern=pattern, tenant=tenant):
            yield item
            if self.failures:
                self.failures -= 1
                raise ConnectionError("broker went away")


async def test_the_client_resumes_after_the_broker_fails() -> None:
    bus = FlakyBus(f"flaky-{uuid.uuid4().hex}")
    async with RouteClient(bus, tenant="acme") as client:
        async with asyncio.timeout(5):
            await client.ready()
        await bus.publish(route_event(decision(1, "weighted", candidate("a/x", 1.0))))
        await bus.publish(route_event(decision(2, "weighted", candidate("b/y", 1.0))))
        async with asyncio.timeout(5):
            await client.wait_for("gpt-4o", lambda t: t.version == 2, tenant="acme")
        assert client.errors == 1 and client.seen == 2


# -- the backlog reporter -----------------------------------------------------------------------------


async def test_the_backlog_reporter_publishes_consumer_lag_as_node_backlog() -> None:
    bus = fresh_bus()
    await bus.publish_many([call(i, "openai/east") for i in range(7)])
    deliveries = bus.subscribe("llm.>", group="workers", start="all")
    first = await anext(deliveries)
    await first.ack()
    second = await anext(deliveries)  # delivered, not acked: in flight
    stop = asyncio.Event()
    task = asyncio.create_task(report_backlog(bus, ["workers", "nobody"], stop=stop, interval_s=0.05, node_id="n1"))
    await asyncio.sleep(0.12)
    stop.set()
    published = await task
    reports = [r.event async for r in bus.replay("SESSIONS", pattern="node.backlog")]
    assert published == len(reports) >= 2  # the unknown group is skipped, the others go on
    report = reports[0]
    assert isinstance(report, NodeBacklogEvent) and report.subject == "workers"
    assert report.data.in_flight >= 1 and report.data.pending + report.data.in_flight == 6
    assert report.data.node_id == "n1" and report.data.stream == "LLM"
    await second.ack()


def test_backlog_event_shape() -> None:
    from streams.bus import GroupLag, StreamLag

    event = backlog_event(GroupLag("g", {"LLM": StreamLag(5, 2), "MARKET": StreamLag(1, 0)}), tenant="acme")
    assert isinstance(event, NodeBacklogEvent)
    assert (event.data.pending, event.data.in_flight, event.data.stream) == (6, 2, None)
    assert event.tenant == "acme" and event.time - at(0) > timedelta(days=-36500)
