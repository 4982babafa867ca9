"""``spine routes`` and ``spine alerts``: what the routing and alerting processors decided.

``routes`` reads the routing processor's checkpointed state (its current
tables, breaker states and health windows: not recomputed); ``alerts`` folds
the ``decision.alert`` events on the DECISIONS stream (from every processor
that raises alerts: alerting, cost, supervisor) into one row per dedup key.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from spine.cli._common import broker_url, emit, run, settings
from spine.errors import UsageError

_ROUTES_EPILOG = """Examples:

  spine routes                               (every model group's table, all tenants)

  spine routes --model-group gpt-4o --tenant acme --json
"""

_ALERTS_EPILOG = """Examples:

  spine alerts --open                        (what is firing now)

  spine alerts --tenant acme --rule btc-drop-5pct-1h --json
"""


def register(app: typer.Typer) -> None:
    app.command("routes", epilog=_ROUTES_EPILOG)(routes_cmd)
    app.command("alerts", epilog=_ALERTS_EPILOG)(alerts_cmd)


def routes_cmd(
    model_group: Annotated[str | None, typer.Option("--model-group", "-m", help="Only this model group.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    group: Annotated[str | None, typer.Option(help="The routing processor's checkpoint group.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Routing tables per model group, with breaker states and each deployment's health window.

    Health figures (calls, errors, latency, cost) are the window as of the processor's last
    checkpoint; `why` is what the table said when its version was made.
    """
    from processors.routing import route_rows
    from spine.cli.cost import load_states

    states = run(load_states("routing", group))
    if not states and not as_json:
        raise UsageError("the routing processor has no state yet", hint="start it with `spine run routing`")
    rows = route_rows(states, tenant, model_group)
    if as_json:
        emit("", rows, True)
        return
    table = [
        {
            "tenant": r["tenant"],
            "group": f"{r['model_group']} v{r['version']} ({r['strategy']})",
            "#": r["rank"],
            "deployment": r["deployment"],
            "weight": f"{r['weight']:g}",
            "breaker": r["breaker"],
            "calls": r["requests"],
            "errors": f"{r['error_rate']:.0%}" if r["error_rate"] is not None else None,
            "p50/p95 ms": f"{r['p50_ms']:.0f}/{r['p95_ms']:.0f}" if r["p50_ms"] is not None else None,
            "$/1k tok": r["cost_per_1k"],
            "why (when this version was made)": r["why"],
        }
        for r in rows
    ]
    groups = len({(r["tenant"], r["model_group"]) for r in rows})
    emit(f"Routing tables: {groups} model group(s)", table, False)


def alerts_cmd(
    open_only: Annotated[bool, typer.Option("--open", help="Only alerts firing now.")] = False,
    tenant: Annotated[str, typer.Option(help="Only this tenant ('*' for all).")] = "*",
    rule: Annotated[str | None, typer.Option(help="Only this rule.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows (newest first).", min=1)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Alerts by dedup key: latest status, severity, when it fired and resolved, notifications sent."""
    rows = run(_alert_rows(tenant))
    if rule is not None:
        rows = [r for r in rows if r["rule"] == rule]
    if open_only:
        rows = [r for r in rows if r["status"] == "firing"]
    rows = rows[:limit]
    firing = sum(1 for r in rows if r["status"] == "firing")
    emit(
        f"Alerts: {firing} firing, {len(rows) - firing} resolved",
        rows,
        as_json,
        columns=["tenant", "status", "severity", "dedup_key", "since", "resolved", "notifications", "value", "summary"],
    )


async def _alert_rows(tenant: str) -> list[dict[str, Any]]:
    import streams
    from schemas.envelope import AlertDecisionEvent

    cfg = settings()
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    async with streams.connect(broker_url(cfg), cfg.bus) as bus:
        async for record in bus.replay("DECISIONS", pattern="decision.alert", tenant=tenant):
            event = record.event
            if not isinstance(event, AlertDecisionEvent):
                continue
            alert = event.data
            at = event.time.isoformat().replace("+00:00", "Z")
            row = latest.get((event.tenant, alert.dedup_key))
            if row is None or (alert.status == "firing" and row["status"] == "resolved"):
                row = latest[(event.tenant, alert.dedup_key)] = {
                    "tenant": event.tenant,
                    "dedup_key": alert.dedup_key,
                    "rule": alert.rule,
                    "since": at,
                    "resolved": None,
                    "notifications": 0,
                }
            row.update(
                status=alert.status,
                severity=alert.severity,
                value=alert.value,
                summary=alert.summary,
                labels=alert.labels,
                last=at,
            )
            if alert.status == "firing":
                row["notifications"] += 1
            else:
                row["resolved"] = at
    return sorted(latest.values(), key=lambda r: (r["status"] != "firing", _desc(r["last"]), r["dedup_key"]))


def _desc(iso: str) -> list[int]:
    return [-ord(c) for c in iso]
