"""The demo's routing, alerting and scaling step: a market shock, a provider outage and recovery.

Two hours of event time for one tenant: BTC ticks every 30 s, flat for an
hour, then a 8% crash and a partial recovery; an LLM gateway sending
``gpt-4o`` calls to two deployments (the cheaper one fails for a few minutes
and recovers after a failed probe; the other sees 429s while it carries
everything); spending that crosses a daily budget; coding-agent sessions and
two nodes, one of which goes silent; a queue's backlog reports. ``cost``,
``routing``, ``alerting`` and ``scaling`` run through the real runner on the
broker (alerting reads cost's budget decisions from DECISIONS), with a route
client following the tables as a gateway would. ``scenario_events`` and
``SCENARIO_CONFIG`` are the same script the tests replay for exact decisions.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import Event, make_event

EAST, WEST = "openai/gpt-4o@eastus", "azure/gpt-4o@westeurope"
MINUTES = 120
# The demo publishes this much event time at a time (the runner folds each stream on its own, so
# within a slice one stream may run ahead of another: keep it under the processors' allowed
# lateness, 300 s, and under a node's heartbeat limit, 3 x 60 s).
SLICE_S = 120

SCENARIO_CONFIG: dict[str, dict[str, Any]] = {
    "cost": {
        "prices": {"version": "demo"},  # the gateway reports cost_usd on every call
        "update_step_usd": 1.0,
        "budgets": [{"name": "ops-daily", "scope": "tenant", "soft_usd": 2.0, "hard_usd": 3.0}],
    },
    "routing": {
        "groups": {"gpt-4o": {"strategy": "cheapest"}},
        "window_s": 120,  # the demo gateway sends four calls a minute
        "breaker": {"failures": 3, "cooldown_s": 120, "half_open_successes": 3},
        "deployments": [
            {
                "deployment": EAST,
                "model_group": "gpt-4o",
                "provider": "openai",
                "model": "gpt-4o",
                "input_cost_per_1k": 0.0025,
                "output_cost_per_1k": 0.01,
            },
            {
                "deployment": WEST,
                "model_group": "gpt-4o",
                "provider": "azure",
                "model": "gpt-4o",
                "input_cost_per_1k": 0.003,
                "output_cost_per_1k": 0.012,
            },
        ],
    },
    "alerting": {
        "rules": [
            {
                "kind": "rate_of_change",
                "name": "btc-drop-5pct-1h",
                "symbol": "BTC-USD",
                "change_pct": -5,
                "resolve_pct": -3,
                "window_s": 3600,
                "severity": "critical",
                "labels": {"team": "trading"},
            },
            {
                "kind": "volatility",
                "name": "btc-volatility",
                "symbol": "BTC-USD",
                "window_s": 1800,
                "interval_s": 60,
                "stdev_pct": 0.5,
            },
            {
                "kind": "error_rate",
                "name": "provider-errors",
                "by": "provider",
                "threshold": 0.25,
                "resolve_below": 0.15,
                "min_requests": 8,
            },
            {"kind": "budget", "name": "budget-soft", "levels": ["soft"], "severity": "warning"},
            {"kind": "budget", "name": "budget-hard", "levels": ["hard"], "severity": "critical"},
            {"kind": "node_offline", "name": "node-offline", "missed_heartbeats": 3},
            {"kind": "session", "name": "session-error", "on": "error"},
        ]
    },
    "scaling": {
        "evaluation_interval_s": 30,
        "workloads": [
            {
                "name": "market-agents",
                "min_replicas": 2,
                "max_replicas": 30,
                "scale_down_stabilization_s": 600,
                "scale_down_cooldown_s": 120,
                "signals": [
                    {"kind": "volatility", "symbol": "BTC-USD", "window_s": 1800, "target_per_replica": 0.15},
                    {"kind": "backlog", "queue": "market-agents", "target_per_replica": 200},
                ],
                "rules": [
                    {"name": "btc-crash", "symbol": "BTC-USD", "change_pct": -5, "window_s": 3600, "min_replicas": 10}
                ],
            },
            {
                "name": "coding-agents",
                "min_replicas": 1,
                "max_replicas": 10,
                "scale_down_stabilization_s": 300,
                "signals": [{"kind": "sessions", "target_per_replica": 2}],
            },
        ],
    },
}


def scenario_start(now: datetime | None = None) -> datetime:
    """Two hours ago, moved earlier if needed so the scenario stays inside one UTC day (one budget day)."""
    now = now or datetime.now(UTC)
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=MINUTES + 5)
    if (start + timedelta(minutes=MINUTES)).date() != start.date():
        start = start.replace(hour=21, minute=0)
    return start


def btc_price(second: int) -> float:
    """Flat for an hour, an 8% fall over 15 minutes, then back to -3% (with a deterministic wiggle)."""
    minute = second / 60
    wiggle = 1 + 0.0004 * math.sin(second / 97) + 0.0002 * ((second // 30) % 3 - 1)
    if minute < 60:
        level = 1.0
    elif minute < 75:
        level = 1 - 0.08 * (minute - 60) / 15
    else:
        level = 0.92 + 0.05 * min(1.0, (minute - 75) / 30)
    if 60 <= minute < 90:
        wiggle *= 1 + 0.004 * ((second // 60) % 2 * 2 - 1)  # the crash is choppy, minute by minute
    return round(97_000 * level * wiggle, 2)


def scenario_events(tenant: str, start: datetime) -> list[Event]:
    """The scripted two hours, in event-time order."""
    events: list[Event] = []

    def at(second: float, type_name: str, data: dict[str, Any]) -> None:
        when = start + timedelta(seconds=second)
        events.append(make_event(type_name, data, tenant=tenant, time=when, source="demo/ops"))

    for second in range(0, MINUTES * 60, 30):
        at(second, "market.tick", {"venue": "demo", "symbol": "BTC-USD", "price": btc_price(second)})
    for second in range(0, MINUTES * 60, 60):
        at(second + 1, "node.heartbeat", {"node_id": "node-a", "interval_s": 60})
        if not 90 * 60 <= second < 110 * 60:  # node-b is silent from minute 90 to 110
            at(second + 1, "node.heartbeat", {"node_id": "node-b", "interval_s": 60})
        minute = second // 60
        pending = 2400 if 72 <= minute < 80 else 60
        at(second + 2, "node.backlog", {"queue": "market-agents", "pending": pending, "node_id": "lag-reporter"})
    _calls(at)
    _sessions(at)
    events.sort(key=lambda e: e.time)
    return events


def _calls(at: Any) -> None:
    """The gateway's calls: east (cheapest) until its outage, west meanwhile, east again after the probes."""

    def call(second: float, deployment: str, status: str = "ok", error: str | None = None) -> None:
        provider = deployment.split("/", maxsplit=1)[0]
        data: dict[str, Any] = {
            "provider": provider,
            "model": "gpt-4o",
            "deployment": deployment,
            "model_group": "gpt-4o",
            "input_tokens": 1500,
            "output_tokens": 300,
            "cost_usd": 0.0105 if deployment == EAST else 0.0126,
            "latency_ms": 900.0 if status == "ok" else 30_000.0,
            "ttft_ms": 250.0 if status == "ok" else None,
            "status": status,
            "error_type": error,
            "http_status": {"server_error": 503, "rate_limit": 429}.get(error or "", 200),
        }
        at(second, "llm.call", data)

    for second in range(5, MINUTES * 60, 15):
        minute = second / 60
        if 70 <= minute < 70.75:  # east fails: the breaker opens on the 3rd failure (70:35)
            call(second, EAST, "error", "server_error")
        elif 70.75 <= minute < 77.75:  # east is open: everything goes to west, which sees 429s
            call(second, WEST, "error", "rate_limit") if (second // 15) % 4 == 0 else call(second, WEST)
        else:
            call(second, EAST)
    call(73 * 60 + 10, EAST, "error", "timeout")  # the first probe (half-open at 72:35) fails: open 240 s
    for probe in (77 * 60 + 30, 77 * 60 + 35, 77 * 60 + 40):  # half-open at 77:10: three good probes close it
        call(probe, EAST)


def _sessions(at: Any) -> None:
    """Coding-agent sessions come and go; one errors for a while."""
    for i in range(9):
        sid = f"s-{i + 1}"
        at(300 + i * 420, "session.started", {"session_id": sid, "node_id": "node-a", "agent": "claude-code"})
        if i < 4:
            at(3000 + i * 600, "session.state", {"session_id": sid, "state": "completed"})
    at(2400, "session.state", {"session_id": "s-6", "state": "error", "reason": "tool crashed"})
    at(2700, "session.state", {"session_id": "s-6", "state": "running"})


# -- the demo step ----------------------------------------------------------------------------


def ops_tenant(run_tenant: str) -> str:
    """This step's own tenant (its own event-time clocks), outside the run tenant's prefix on purpose:
    the archive step backtests the busiest ``<run tenant>*`` tenant with the fleet's cost config."""
    return f"ops-{run_tenant}"


async def demo_decisions(bus: Any, run_tenant: str, *, quiet: bool) -> dict[str, Any]:
    """Publish the scenario in slices of event time while the four processors run; show their decisions."""
    from schemas.payloads.decisions import RouteDecision
    from spine.cli._common import emit, out, settings
    from spine.processes import build_processor
    from streams.routes import RouteClient, RouteTable
    from streams.runner import Runner, RunnerConfig

    tenant = ops_tenant(run_tenant)
    events = scenario_events(tenant, scenario_start())
    if not quiet:
        out.print(
            f"\n[bold]7b. Routing, alerting, scaling[/bold] (tenant {tenant}): {len(events)} events, two hours of "
            "event time (a BTC crash, a provider outage and recovery, a budget overrun), with `cost`, `routing`, "
            "`alerting` and `scaling` running on the broker and a route client following the tables"
        )
    cfg = settings()
    names = ("cost", "routing", "alerting", "scaling")
    runners = [
        Runner(
            bus,
            build_processor(name, cfg, SCENARIO_CONFIG[name]),
            RunnerConfig(tenant=tenant, group=f"{name}-{tenant}", batch_wait_s=0.01),
        )
        for name in names
    ]
    async with RouteClient(bus, tenant=tenant) as client:
        seen: list[str] = []  # what a gateway following the tables would do with one user's requests

        async def watch() -> None:
            version = 0

            def newer(table: RouteTable) -> bool:
                return table.version > version

            while True:
                version = (await client.wait_for("gpt-4o", newer, tenant=tenant)).version
                pick = client.choose("gpt-4o", "user-1", tenant=tenant)
                seen.append(f"v{version}: {pick.deployment.split('@')[1] if pick else 'none'}")

        watcher = asyncio.create_task(watch())
        await _drive(bus, runners, events)
        async with asyncio.timeout(10):
            await client.ready()
        decisions = [r.event async for r in bus.replay("DECISIONS", tenant=tenant)]
        versions = [e.data.version for e in decisions if isinstance(e.data, RouteDecision)]
        if versions:
            async with asyncio.timeout(10):
                await client.wait_for("gpt-4o", lambda t: t.version >= versions[-1], tenant=tenant)
        picks = {key: client.choose("gpt-4o", key, tenant=tenant) for key in ("user-1", "user-2", "user-3")}
        watcher.cancel()
    rows = decision_rows(decisions)
    if not quiet:
        emit("   Routing table changes (decision.route, only when the table changed)", rows["routes"], False)
        emit("   Alerts fired and resolved (decision.alert)", rows["alerts"], False)
        emit("   Scaling decisions (decision.scale)", rows["scales"], False)
        table = client.table("gpt-4o", tenant=tenant)
        version = table.version if table is not None else "none"
        chosen = ", ".join(f"{k} -> {c.deployment if c else 'none'}" for k, c in picks.items())
        out.print(f"   Route client (a gateway following DECISIONS): gpt-4o table v{version}; {chosen}")
        out.print(f"   ... where user-1's requests went as new tables arrived: {', '.join(seen)}")
    return {
        "tenant": tenant,
        "events": len(events),
        "health": {r.processor.name: r.health.as_dict() for r in runners},
        "picks": {k: c.deployment if c else None for k, c in picks.items()},
        "user_1_by_version": seen,
        **rows,
    }


async def _drive(bus: Any, runners: list[Any], events: list[Event]) -> None:
    """Publish ``SLICE_S`` of event time at a time; wait until each runner has folded what it reads.

    The runner merges its input streams into event-time order while each has
    something buffered or has said it is caught up (``streams.ordering``); a
    slice published while a runner is folding the previous one may still reach
    it stream by stream (hence ``allowed_lateness_s`` above a slice in the
    config). A live feed interleaves far more finely.
    """
    from streams.catalog import subject_matches

    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]

    async def caught_up(want: dict[int, dict[str, int]]) -> None:
        # Only the inputs we published: what runners emit in turn (cost's budget decisions, which
        # alerting reads) is folded whenever it arrives; a budget decision is never late.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while loop.time() < deadline and not any(t.done() for t in tasks):
            if all(r.health.positions.get(k, 0) >= seq for i, r in enumerate(runners) for k, seq in want[i].items()):
                return
            await asyncio.sleep(0.002)

    try:
        start = events[0].time
        slices: dict[int, list[Event]] = {}
        for event in events:
            slices.setdefault(int((event.time - start).total_seconds() // SLICE_S), []).append(event)
        for _, batch in sorted(slices.items()):
            acks = await bus.publish_many(batch)
            want: dict[int, dict[str, int]] = {i: {} for i in range(len(runners))}
            for event, ack in zip(batch, acks, strict=True):
                for i, r in enumerate(runners):
                    if any(subject_matches(p, event.type) for p in r.processor.inputs):
                        want[i][f"{ack.stream}/0"] = max(want[i].get(f"{ack.stream}/0", 0), ack.seq)
            await caught_up(want)
        for task in tasks:
            if task.done():
                task.result()  # a runner failed: say why
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def decision_rows(decisions: list[Event]) -> dict[str, list[dict[str, Any]]]:
    """The decisions as rows for the demo's tables."""
    from schemas.payloads.decisions import AlertDecision, RouteDecision, ScaleDecision

    routes, alerts, scales = [], [], []
    for e in decisions:
        when = e.time.strftime("%H:%M:%S")
        data = e.data
        if isinstance(data, RouteDecision):
            table = ", ".join(f"{c.deployment} {c.weight:g} {c.breaker.replace('_', '-')}" for c in data.candidates)
            routes.append({"time": when, "version": data.version, "table": table, "why": data.reason})
        elif isinstance(data, AlertDecision) and e.source in ("processors/alerting", "processors/cost"):
            alerts.append(
                {
                    "time": when,
                    "status": data.status,
                    "severity": data.severity,
                    "alert": data.dedup_key,
                    "summary": data.summary,
                }
            )
        elif isinstance(data, ScaleDecision):
            scales.append(
                {
                    "time": when,
                    "workload": data.workload,
                    "replicas": f"{data.current} -> {data.desired}",
                    "rule": data.rule,
                    "why": data.reason,
                }
            )
    return {"routes": routes, "alerts": alerts, "scales": scales}
