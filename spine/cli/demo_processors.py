"""The demo's processors step: a simulated agent fleet through the cost processor and the supervisor.

Half an hour of event time for one tenant: two nodes heart-beating, three
coding-agent sessions making LLM calls, one going idle (the supervisor resumes
it), one compacted (restarted), a node going silent (offline alert), and
spending that crosses the tenant's hard budget (every live session killed).
Both processors run through the real runner on the broker, exactly as
``spine run cost`` and ``spine run supervisor`` would, with their checkpoints
under their own demo group.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import Event, make_event
from schemas.payloads.decisions import AlertDecision, BudgetDecision, CommandDecision
from schemas.payloads.dlq import DeadLetter
from spine.cli._common import emit, err, out, settings

_START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)


def fleet_events(tenant: str, start: datetime = _START) -> list[Event]:
    """The simulated fleet, in event-time order."""
    events: list[Event] = []

    def at(seconds: int, type_name: str, data: dict[str, Any]) -> None:
        events.append(
            make_event(type_name, data, tenant=tenant, time=start + timedelta(seconds=seconds), source="demo/fleet")
        )

    sessions = {"s-1": "node-a", "s-2": "node-b", "s-3": "node-a"}
    for second in range(0, 1800, 10):
        at(second, "node.heartbeat", {"node_id": "node-a", "interval_s": 10, "sessions_active": 2})
        if second < 1200:  # node-b goes silent after 20 minutes
            at(second, "node.heartbeat", {"node_id": "node-b", "interval_s": 10, "sessions_active": 1})
    for i, (session, node) in enumerate(sessions.items()):
        at(
            5 + i,
            "session.started",
            {
                "session_id": session,
                "node_id": node,
                "agent": "claude-code",
                "project": "checkout" if session != "s-3" else "search",
                "model": "openai/gpt-4o",
            },
        )
    at(300, "session.state", {"session_id": "s-2", "node_id": "node-b", "state": "idle", "reason": "waiting for input"})
    at(480, "session.state", {"session_id": "s-3", "node_id": "node-a", "state": "compacted", "reason": "context full"})
    at(500, "session.state", {"session_id": "s-3", "node_id": "node-a", "state": "running"})
    at(700, "session.state", {"session_id": "s-2", "node_id": "node-b", "state": "running"})
    at(760, "session.state", {"session_id": "s-1", "node_id": "node-a", "state": "completed"})
    at(
        770, "session.state", {"session_id": "s-1", "node_id": "node-a", "state": "running"}
    )  # illegal: completed is final
    for n in range(60):
        session = ("s-1", "s-2", "s-3")[n % 3] if n < 25 else ("s-2", "s-3")[n % 2]
        model = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5")[n % 3] if n != 41 else "in-house-llm-v2"
        provider = "anthropic" if model.startswith("claude") else "acme" if model.startswith("in-house") else "openai"
        at(
            20 + n * 29,
            "llm.call",
            {
                "provider": provider,
                "model": model,
                "session_id": session,
                "project": "checkout" if session != "s-3" else "search",
                "input_tokens": 12_000 + 500 * (n % 7),
                "output_tokens": 900,
                "cached_tokens": 4000 if n % 4 == 0 else 0,
                "latency_ms": 1800.0,
            },
        )
    events.sort(key=lambda e: e.time)
    return events


DEMO_CONFIG: dict[str, dict[str, Any]] = {
    "cost": {
        "update_step_usd": 0.5,
        "budgets": [{"name": "fleet-daily", "scope": "tenant", "soft_usd": 1.0, "hard_usd": 1.6}],
    },
    "supervisor": {"resume_on_idle": {"idle_threshold_s": 240, "max_retries": 2}},
}


async def demo_processors(bus: Any, run_tenant: str, *, quiet: bool) -> dict[str, Any]:
    """Publish the fleet as if live, with cost and supervisor running; show what they decided."""
    tenant = f"{run_tenant}-fleet"  # its own tenant: its own event-time clock
    from processors.cost import cost_rows
    from processors.supervisor import node_rows, session_rows
    from spine.processes import build_processor
    from streams.runner import Runner, RunnerConfig

    cfg = settings()
    events = fleet_events(tenant)
    if not quiet:
        out.print(
            f"\n[bold]7. Processors[/bold]: a simulated agent fleet (tenant {tenant}): {len(events)} events, "
            "half an hour of event time, published a minute of event time at a time while "
            "`cost` and `supervisor` run on the broker"
        )
        err.print("[dim]   pricing with litellm's price map (the first run extracts it once, ~10 s)[/dim]")
    runners = [
        Runner(
            bus,
            build_processor(name, cfg, DEMO_CONFIG[name]),
            RunnerConfig(tenant=tenant, group=f"{name}-{tenant}", batch_wait_s=0.02),
        )
        for name in ("cost", "supervisor")
    ]
    await _drive_live(bus, runners, events)
    summary: dict[str, Any] = {r.processor.name: r.health.as_dict() for r in runners}
    states = {r.processor.name: [part.state for part in r.parts.values()] for r in runners}
    day = events[0].time.date().isoformat()
    costs = cost_rows(states["cost"], "day", day, "model", tenant)
    sessions = session_rows(states["supervisor"], tenant=tenant)
    nodes = node_rows(states["supervisor"], tenant=tenant)
    decisions = [r.event async for r in bus.replay("DECISIONS", tenant=tenant)]
    actions = [
        {"time": e.time.strftime("%H:%M:%S"), "type": e.type.removeprefix("decision."), **_what(e)}
        for e in decisions
        if e.type in ("decision.command", "decision.alert", "decision.budget") and e.source.startswith("processors/")
    ]
    letters = [r.event async for r in bus.replay("DLQ", tenant=tenant)]
    illegal = [e for e in letters if e.type == "dlq.rejected" and "illegal" in getattr(e.data, "reason", "")]
    if not quiet:
        emit(
            f"   Cost by model on {day} (cost processor, {summary['cost']['handled']} calls)",
            costs,
            False,
            columns=["model", "cost_usd", "calls", "input_tokens", "output_tokens", "unpriced_calls"],
        )
        emit(
            "   Sessions (supervisor)",
            sessions,
            False,
            columns=["session", "status", "node", "node_status", "project", "cost_usd", "last_command"],
        )
        emit("   Nodes (supervisor)", nodes, False, columns=["node", "status", "last_heartbeat", "missed", "sessions"])
        emit("   What the policies decided (decision.command / alert / budget events on DECISIONS)", actions, False)
        for letter in illegal:
            if isinstance(letter.data, DeadLetter):
                out.print(f"   dead-lettered: {letter.data.reason}")
    summary |= {"day": day, "costs": costs, "sessions": sessions, "nodes": nodes, "actions": actions}
    return summary


async def _drive_live(bus: Any, runners: list[Any], events: list[Event]) -> None:
    """Publish a minute of event time at a time, letting the runners catch up in between."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]

    async def settle() -> None:
        """Wait until neither runner has handled anything new for a moment (live-like pacing)."""
        loop = asyncio.get_running_loop()
        last, quiet_since = -1, loop.time()
        while loop.time() - quiet_since < 0.15 and not any(t.done() for t in tasks):
            await asyncio.sleep(0.03)
            now = sum(r.health.handled + r.health.emitted for r in runners)
            if now != last:
                last, quiet_since = now, loop.time()

    try:
        minute: list[Event] = []
        for event in events:
            if minute and event.time.minute != minute[0].time.minute:
                await bus.publish_many(minute)
                await settle()
                minute = []
            minute.append(event)
        await bus.publish_many(minute)
        await settle()
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def _what(event: Event) -> dict[str, Any]:
    data = event.data
    if isinstance(data, CommandDecision):
        return {"subject": data.session_id, "what": f"{data.action} ({data.policy}): {data.reason}"}
    if isinstance(data, AlertDecision):
        return {"subject": data.dedup_key, "what": f"{data.status}: {data.summary}"}
    if isinstance(data, BudgetDecision):
        what = f"{data.level} budget {data.budget}: ${data.spent_usd:.2f} of ${data.limit_usd:.2f}"
        return {"subject": data.key, "what": what}
    return {"subject": event.subject, "what": event.type}
