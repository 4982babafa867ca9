"""Event builders shared by the routing, alerting and scaling tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import Event, make_event

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def call(
    t: float,
    deployment: str,
    *,
    status: str = "ok",
    error: str | None = None,
    latency_ms: float | None = 800.0,
    ttft_ms: float | None = None,
    group: str = "gpt-4o",
    tenant: str = "acme",
    cost_usd: float | None = None,
    tokens: int = 1000,
) -> Event:
    provider, _, _ = deployment.partition("/")
    data: dict[str, Any] = {
        "provider": provider,
        "model": "gpt-4o",
        "deployment": deployment,
        "model_group": group,
        "status": status,
        "error_type": error,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "input_tokens": tokens * 3 // 4,
        "output_tokens": tokens // 4,
        "cost_usd": cost_usd,
    }
    return make_event("llm.call", data, tenant=tenant, time=at(t), source="tests")


def provider(t: float, deployment: str, *, group: str = "gpt-4o", tenant: str = "acme", **fields: Any) -> Event:
    prov, _, _ = deployment.partition("/")
    data = {"deployment": deployment, "model_group": group, "provider": prov, "model": "gpt-4o", **fields}
    return make_event("config.provider", data, tenant=tenant, time=at(t), source="tests")


def tick(t: float, price: float, symbol: str = "BTC-USD", tenant: str = "default") -> Event:
    data = {"venue": "test", "symbol": symbol, "price": price}
    return make_event("market.tick", data, tenant=tenant, time=at(t), source="tests")


def session(t: float, kind: str, sid: str, tenant: str = "acme", **fields: Any) -> Event:
    if kind == "session.started":
        data: dict[str, Any] = {"session_id": sid, "node_id": "node-a", "agent": "claude-code", **fields}
    else:
        data = {"session_id": sid, **fields}
    return make_event(kind, data, tenant=tenant, time=at(t), source="tests")


def heartbeat(t: float, node: str, interval_s: float = 10.0, tenant: str = "acme") -> Event:
    data = {"node_id": node, "interval_s": interval_s}
    return make_event("node.heartbeat", data, tenant=tenant, time=at(t), source="tests")


def backlog(t: float, queue: str, pending: int, in_flight: int = 0, tenant: str = "default") -> Event:
    data = {"queue": queue, "pending": pending, "in_flight": in_flight}
    return make_event("node.backlog", data, tenant=tenant, time=at(t), source="tests")


def budget(t: float, level: str, spent: float, limit: float, tenant: str = "acme") -> Event:
    data = {
        "budget": "daily",
        "scope": "tenant",
        "key": tenant,
        "period": "day",
        "bucket": at(t).date().isoformat(),
        "level": level,
        "limit_usd": limit,
        "spent_usd": spent,
    }
    return make_event("decision.budget", data, tenant=tenant, time=at(t), source="tests")


def table(decision: Event) -> list[tuple[str, float, str]]:
    """A route decision's candidates as (deployment, weight, breaker)."""
    return [(c.deployment, c.weight, c.breaker) for c in decision.data.candidates]  # type: ignore[union-attr]
