"""The runner's commit protocol: a crash at every step, replicas, dead letters (memory bus)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.cost import Budget, CostConfig, CostProcessor, ModelPrice, PriceTable
from schemas import Event, make_event
from schemas.envelope import DeadLetterEvent
from streams import Bus
from streams.processing import Emit, run_partitioned
from streams.runner import Runner, RunnerConfig, decode_checkpoint, load_partitions
from streams.transports.memory import MemoryBus

PRICES = PriceTable(
    version="test-1",
    prices={
        "gpt-4o": ModelPrice(input=2.5e-6, output=1e-5, cache_read=1.25e-6),
        "anthropic/claude": ModelPrice(input=3e-6, output=1.5e-5),
    },
)
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def cost_processor() -> CostProcessor:
    budgets = (Budget(name="daily", scope="tenant", soft_usd=0.02, hard_usd=0.05),)
    return CostProcessor(CostConfig(prices=PRICES, budgets=budgets, update_step_usd=0.01))


def calls(n: int, tenants: tuple[str, ...] = ("acme", "globex", "initech")) -> list[Event]:
    models = [("openai", "gpt-4o"), ("anthropic", "claude"), ("openai", "unknown-model")]
    out = []
    for i in range(n):
        provider, model = models[i % 3]
        out.append(
            make_event(
                "llm.call",
                {
                    "provider": provider,
                    "model": model,
                    "input_tokens": 500 + i % 7 * 100,
                    "output_tokens": 50 + i % 5 * 10,
                    "cached_tokens": 100 if i % 4 == 0 else 0,
                    "project": f"p{i % 2}",
                    "session_id": f"s{i % 5}",
                },
                tenant=tenants[i % len(tenants)],
                time=T0 + timedelta(minutes=7 * i),
                source="tests",
            )
        )
    return out


async def run_until(
    bus: Bus, processor: Any, config: RunnerConfig, done: Callable[[Runner[Any]], bool], fault: Any = None
) -> Runner[Any]:
    runner = Runner(bus, processor, config, fault=fault)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        for _ in range(400):
            if task.done():
                break
            if done(runner):
                break
            await asyncio.sleep(0.025)
        stop.set()
        await asyncio.wait_for(task, 10)
    finally:
        if not task.done():
            task.cancel()
    return runner


async def decisions_on(bus: Bus) -> list[Event]:
    return [r.event async for r in bus.replay("DECISIONS")]


async def letters_on(bus: Bus) -> list[DeadLetterEvent]:
    return [r.event async for r in bus.replay("DLQ") if isinstance(r.event, DeadLetterEvent)]


async def states(bus: Bus, processor: Any, partitions: int = 8) -> dict[int, Any]:
    store = await bus.checkpoints()
    parts = await load_partitions(store, processor, list(range(partitions)), partitions)
    return {p: processor.snapshot(part.state) for p, part in parts.items() if part.handled}


def fresh_bus() -> MemoryBus:
    return MemoryBus(f"runner-{uuid.uuid4().hex}")


async def test_live_run_equals_the_pure_fold() -> None:
    bus = fresh_bus()
    events = calls(60)
    await bus.publish_many(events)
    processor = cost_processor()
    runner = await run_until(bus, processor, RunnerConfig(batch_max=7), lambda r: r.health.handled >= 60)
    assert runner.health.handled == 60
    parts, pure = run_partitioned(cost_processor(), events)
    live = await decisions_on(bus)
    assert sorted(e.id for e in live) == sorted(e.id for e in pure.decisions)
    assert {e.id: e for e in live} == {e.id: e for e in pure.decisions}
    assert await states(bus, processor) == {p: processor.snapshot(part.state) for p, part in parts.items()}
    # Provenance: each decision names its cause and carries event time.
    by_id = {e.id: e for e in events}
    for decision in live:
        cause = by_id[decision.causationid or ""]
        assert decision.time == cause.time and decision.tenant == cause.tenant
        assert decision.correlationid == cause.id


@pytest.mark.parametrize("step", ["read", "folded", "published", "checkpointing", "checkpointed"])
@pytest.mark.parametrize("on_batch", [1, 3])
async def test_a_crash_at_any_step_loses_nothing_and_counts_nothing_twice(step: str, on_batch: int) -> None:
    bus = fresh_bus()
    events = calls(50)
    await bus.publish_many(events)
    seen: dict[str, int] = {}

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        # The on_batch-th time the runner reaches this step (batches overlap: batch N+1
        # is folded while batch N is published and checkpointed).
        seen[at] = seen.get(at, 0) + 1
        if at == step and seen[at] == on_batch:
            raise Crash(f"crash at {step}")

    with pytest.raises(Crash):
        await run_until(bus, cost_processor(), RunnerConfig(batch_max=9, partitions=4), lambda r: False, fault)
    # A new runner process: only the checkpoints and the streams survive.
    await run_until(bus, cost_processor(), RunnerConfig(batch_max=9, partitions=4), lambda r: _caught_up(r, bus))
    parts, pure = run_partitioned(cost_processor(), events, partitions=4)
    live = await decisions_on(bus)
    assert len(live) == len({e.id for e in live}), "a decision was stored twice"
    assert {e.id for e in live} == {e.id for e in pure.decisions}
    processor = cost_processor()
    assert await states(bus, processor, 4) == {p: processor.snapshot(part.state) for p, part in parts.items()}


def _caught_up(runner: Runner[Any], bus: MemoryBus) -> bool:
    last = bus.broker.streams["LLM"].last_seq
    return runner.health.positions.get("LLM/0", 0) >= last


async def test_two_replicas_split_the_work_and_their_union_is_the_single_result() -> None:
    bus = fresh_bus()
    events = calls(90, tenants=("a", "b", "c", "d", "e", "f", "g"))
    await bus.publish_many(events)
    configs = [RunnerConfig(replicas=2, replica=i, batch_max=13) for i in range(2)]
    runners = await asyncio.gather(
        *(run_until(bus, cost_processor(), c, lambda r: _caught_up(r, bus)) for c in configs)
    )
    assert all(r.health.handled > 0 for r in runners), "each replica owns some tenants"
    assert sum(r.health.handled for r in runners) == 90
    _, pure = run_partitioned(cost_processor(), events)
    live = await decisions_on(bus)
    assert sorted(e.id for e in live) == sorted(e.id for e in pure.decisions)


async def test_late_events_and_processor_errors_are_dead_lettered_and_the_stream_goes_on() -> None:
    bus = fresh_bus()

    class Fragile(CostProcessor):
        # The runner folds a row processor's inputs through handle_row (streams.rows).
        def handle_row(self, state: Any, cause: Any, ts: float, values: Any) -> Any:
            if values[0] == "boom":
                raise RuntimeError("cannot price this")
            return super().handle_row(state, cause, ts, values)

    on_time = calls(3, tenants=("acme",))
    late = make_event("llm.call", {"provider": "openai", "model": "gpt-4o"}, tenant="acme", time=T0 - timedelta(days=2))
    boom = make_event("llm.call", {"provider": "boom", "model": "model"}, tenant="acme", time=T0)
    after = make_event(
        "llm.call", {"provider": "openai", "model": "gpt-4o"}, tenant="acme", time=T0 + timedelta(hours=1)
    )
    await bus.publish_many([*on_time, late, boom, after])
    await bus.publish_raw("spine.acme.llm.call.x", b"{broken")
    processor = Fragile(CostConfig(prices=PRICES))
    runner = await run_until(bus, processor, RunnerConfig(), lambda r: _caught_up(r, bus))
    assert runner.health.handled == 6 and runner.health.errors == 1
    letters = {e.type: e for e in await letters_on(bus)}
    assert set(letters) == {"dlq.late", "dlq.rejected", "dlq.undecodable"}
    assert letters["dlq.late"].data.original_id == late.id and "watermark" in letters["dlq.late"].data.reason
    assert "cannot price this" in letters["dlq.rejected"].data.reason
    assert letters["dlq.undecodable"].data.original == b"{broken"
    # The stream went on after the failures: the last call is in the totals.
    (snapshot,) = (await states(bus, processor)).values()
    tenant_day = [row for row in snapshot["totals"] if row[3] == "tenant" and row[1] == "day"]
    assert tenant_day == [[*tenant_day[0][:5], pytest.approx(tenant_day[0][5]), 4, *tenant_day[0][7:]]]
    assert after.time.date().isoformat() == tenant_day[0][2]


async def test_an_input_stored_twice_is_folded_once() -> None:
    bus = fresh_bus()
    (event,) = calls(1, tenants=("acme",))
    await bus.publish(event)
    # A producer retry after the duplicate window: the broker stores a second copy.
    from schemas import encode

    await bus.publish_raw("spine.acme.llm.call.openai/gpt-4o", encode(event), msg_id=None)
    processor = cost_processor()
    await run_until(bus, processor, RunnerConfig(), lambda r: _caught_up(r, bus))
    (snapshot,) = (await states(bus, processor)).values()
    tenant_day = [row for row in snapshot["totals"] if row[3] == "tenant" and row[1] == "day"]
    assert tenant_day[0][6] == 1  # calls


async def test_checkpoints_record_positions_with_the_state() -> None:
    bus = fresh_bus()
    await bus.publish_many(calls(10, tenants=("acme",)))
    await run_until(bus, cost_processor(), RunnerConfig(), lambda r: r.health.handled >= 10)
    store = await bus.checkpoints()
    keys = await store.keys("cost.")
    assert len(keys) == 1
    raw = await store.get(keys[0])
    assert raw is not None
    doc = decode_checkpoint(raw)
    assert doc["positions"] == {"LLM/0": 10} and doc["handled"] == 10 and doc["partitions"] == 8


def test_emit_is_a_plain_value() -> None:
    from schemas.payloads.decisions import ScaleDecision

    emit = Emit("decision.scale", ScaleDecision(workload="w", current=1, desired=2, rule="r"), "w")
    assert emit.subject == "w"
