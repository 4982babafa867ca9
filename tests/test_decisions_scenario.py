"""The scripted scenario (market crash, provider outage and recovery, budget overrun) and determinism.

The scenario is the demo's (``spine.cli.demo_decisions``): the same script gives exactly these
decisions, run twice, folded pure, or hosted by the runner on the memory bus and split across two
replicas.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from processors import registry
from schemas import Event
from spine.cli.demo_decisions import SCENARIO_CONFIG, scenario_events
from streams.processing import run_partitioned, run_pure
from streams.runner import Runner, RunnerConfig
from streams.transports.memory import MemoryBus
from tests.decisions_support import call, tick

START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def build(name: str) -> Any:
    return registry.build(name, SCENARIO_CONFIG[name])


def offset(event: Event) -> str:
    s = int((event.time - START).total_seconds())
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def scenario(events: list[Event] | None = None) -> dict[str, list[Event]]:
    """Every processor's decisions over the scenario; alerting also reads cost's budget decisions."""
    events = events if events is not None else scenario_events("ops", START)
    budgets: list[Event] = [d for d in run_pure(build("cost"), events).decisions if d.type == "decision.budget"]
    with_budgets = sorted(events + budgets, key=lambda e: e.time)  # stable: a decision right after its cause
    return {
        "budget": budgets,
        "routing": run_pure(build("routing"), events).decisions,
        "alerting": run_pure(build("alerting"), with_budgets).decisions,
        "scaling": run_pure(build("scaling"), events).decisions,
    }


ROUTES = [
    ("00:00:05", 1, [("eastus", 1.0, "closed"), ("westeurope", 1.0, "closed")]),
    ("01:10:35", 2, [("westeurope", 1.0, "closed"), ("eastus", 0.0, "open")]),  # 3 x 503 within 2 min
    ("01:11:50", 3, [("westeurope", 0.8, "closed"), ("eastus", 0.0, "open")]),  # west carries all: 429s
    ("01:12:05", 4, [("westeurope", 0.6, "closed"), ("eastus", 0.0, "open")]),
    ("01:12:20", 5, [("westeurope", 0.7, "closed"), ("eastus", 0.0, "open")]),
    ("01:12:35", 6, [("eastus", 0.1, "half_open"), ("westeurope", 0.7, "closed")]),  # 120 s cooldown
    ("01:13:10", 7, [("westeurope", 0.7, "closed"), ("eastus", 0.0, "open")]),  # the probe times out
    ("01:17:20", 8, [("eastus", 0.1, "half_open"), ("westeurope", 0.7, "closed")]),  # 240 s cooldown
    ("01:17:40", 9, [("eastus", 1.0, "closed"), ("westeurope", 0.7, "closed")]),  # three good probes
    ("01:18:05", 10, [("eastus", 1.0, "closed"), ("westeurope", 0.8, "closed")]),  # 429s leave the window
    ("01:18:35", 11, [("eastus", 1.0, "closed"), ("westeurope", 1.0, "closed")]),
]
ALERTS = [
    ("00:40:00", "firing", "session-error/s-6"),
    ("00:45:00", "resolved", "session-error/s-6"),
    ("00:47:35", "firing", "budget-soft/ops-daily/ops/soft"),
    ("01:09:00", "firing", "btc-volatility/BTC-USD"),
    ("01:10:00", "firing", "btc-drop-5pct-1h/BTC-USD"),
    ("01:11:20", "firing", "budget-hard/ops-daily/ops/hard"),
    ("01:12:35", "firing", "provider-errors/azure"),
    ("01:13:10", "firing", "provider-errors/openai"),
    ("01:18:20", "resolved", "provider-errors/openai"),
    ("01:22:00", "resolved", "provider-errors/azure"),
    ("01:32:20", "firing", "node-offline/node-b"),
    ("01:48:00", "resolved", "btc-volatility/BTC-USD"),
    ("01:50:01", "resolved", "node-offline/node-b"),
    ("01:53:30", "resolved", "btc-drop-5pct-1h/BTC-USD"),
]
SCALES = [
    ("00:19:30", "coding-agents", 1, 2, "sessions"),
    ("00:33:30", "coding-agents", 2, 3, "sessions"),
    ("00:47:30", "coding-agents", 3, 4, "sessions"),
    ("01:05:00", "market-agents", 2, 3, "volatility:BTC-USD"),
    ("01:09:00", "market-agents", 3, 4, "volatility:BTC-USD"),
    ("01:10:00", "market-agents", 4, 10, "btc-crash"),  # BTC fell 5% within the hour: at least 10
    ("01:12:30", "market-agents", 10, 12, "backlog:market-agents"),
    ("01:15:30", "coding-agents", 4, 3, "sessions"),
    ("01:30:30", "market-agents", 12, 10, "btc-crash"),  # backlog drained; the floor holds
    ("01:43:30", "market-agents", 10, 6, "volatility:BTC-USD"),  # after 600 s of stabilization
    ("01:49:00", "market-agents", 6, 5, "volatility:BTC-USD"),
    ("01:53:00", "market-agents", 5, 4, "volatility:BTC-USD"),
]


def test_the_scripted_scenario_yields_exactly_these_decisions() -> None:
    out = scenario()
    assert [(offset(d), d.data.level) for d in out["budget"]] == [  # type: ignore[union-attr]
        ("00:47:35", "soft"),
        ("01:11:20", "hard"),
    ]
    routes = [
        (offset(d), d.data.version, [(c.deployment.split("@")[1], c.weight, c.breaker) for c in d.data.candidates])  # type: ignore[union-attr]
        for d in out["routing"]
    ]
    assert routes == ROUTES
    assert [(offset(d), d.data.status, d.data.dedup_key) for d in out["alerting"]] == ALERTS  # type: ignore[union-attr]
    scales = [
        (offset(d), d.data.workload, d.data.current, d.data.desired, d.data.rule)  # type: ignore[union-attr]
        for d in out["scaling"]
    ]
    assert scales == SCALES
    crash = out["alerting"][4].data
    assert crash.severity == "critical" and crash.labels == {"team": "trading", "symbol": "BTC-USD"}  # type: ignore[union-attr]
    assert out["routing"][1].data.reason.startswith("openai/gpt-4o@eastus opened: 3 failures in 120s")  # type: ignore[union-attr]


def test_the_same_input_twice_gives_identical_decisions_ids_included() -> None:
    events = scenario_events("ops", START)
    first, second = scenario(events), scenario(list(events))
    for name in first:
        assert [d.id for d in first[name]] == [d.id for d in second[name]]
        assert first[name] == second[name]


# -- hosted by the runner on the memory bus, one replica or two --------------------------------------


def multi_tenant_calls() -> list[Event]:
    out = []
    for i in range(240):
        tenant = f"t{i % 6}"
        deployment = ("openai/east", "azure/west")[i % 2]
        failing = 40 <= i < 80 and deployment == "openai/east"
        out.append(
            call(
                i * 2,
                deployment,
                tenant=tenant,
                status="error" if failing else "ok",
                error="timeout" if failing else None,
            )
        )
    return out


def multi_tenant_ticks() -> list[Event]:
    return [
        tick(30 * i, 100_000 * (1 - (0.0009 * i if i < 80 else 0.072 - 0.0005 * (i - 80))), f"SYM-{i % 3}", f"t{i % 5}")
        for i in range(360)
    ]


MARKET_RULES = {
    "rules": [
        {"kind": "rate_of_change", "name": "drop", "symbol": "*", "change_pct": -2, "window_s": 3600},
        {"kind": "volatility", "name": "vol", "symbol": "*", "window_s": 3600, "interval_s": 300, "stdev_pct": 0.01},
    ]
}
MARKET_WORKLOADS = {
    "evaluation_interval_s": 60,
    "workloads": [
        {
            "name": "agents",
            "max_replicas": 30,
            "scale_down_stabilization_s": 120,
            "signals": [{"kind": "event_rate", "types": "market.tick", "window_s": 600, "target_per_replica": 0.004}],
            "rules": [{"name": "crash", "symbol": "SYM-0", "change_pct": -3, "min_replicas": 12}],
        }
    ],
}


async def host(bus: MemoryBus, make: Callable[[], Any], replicas: int, expected: int) -> list[Runner[Any]]:
    """Run ``replicas`` runners of a fresh processor each until together they handled ``expected`` events."""
    runners = [Runner(bus, make(), RunnerConfig(replicas=replicas, replica=r, batch_max=17)) for r in range(replicas)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        async with asyncio.timeout(30):
            while sum(r.health.handled for r in runners) < expected:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    return runners


@pytest.mark.parametrize(
    ("name", "config", "events"),
    [
        ("routing", {}, multi_tenant_calls),
        ("alerting", MARKET_RULES, multi_tenant_ticks),
        ("scaling", MARKET_WORKLOADS, multi_tenant_ticks),
    ],
)
@pytest.mark.parametrize("replicas", [1, 2])
async def test_the_runner_on_the_memory_bus_publishes_exactly_the_pure_decisions(
    name: str, config: dict[str, Any], events: Callable[[], list[Event]], replicas: int
) -> None:
    inputs = events()
    pure = run_pure(registry.build(name, config), inputs)
    _, parted = run_partitioned(registry.build(name, config), inputs)
    assert sorted(d.id for d in parted.decisions) == sorted(d.id for d in pure.decisions)
    assert len(pure.decisions) >= 3
    bus = MemoryBus(f"decisions-{uuid.uuid4().hex}")
    await bus.publish_many(inputs)
    runners = await host(bus, lambda: registry.build(name, config), replicas, len(inputs))
    live = [r.event async for r in bus.replay("DECISIONS")]
    assert {e.id: e for e in live} == {e.id: e for e in pure.decisions}
    assert len(live) == len(pure.decisions)
    if replicas == 2 and name != "scaling":
        assert all(r.health.handled > 0 for r in runners), "tenants spread over both replicas"
