"""Helpers for the archive tests: event generators, a deterministic drop-rule processor, sink runners."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.archive import Archive, SinkStats, run_sink
from processors.base import Emit, Output
from schemas import Event, make_event
from schemas.payloads.decisions import AlertDecision
from streams import Bus

T0 = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)


def ticks(
    n: int, tenant: str, *, symbols: Sequence[str] = ("BTC-USD", "ETH-USD"), seed: int = 7, start: datetime = T0
) -> list[Event]:
    """A random walk per symbol with an occasional sharp drop, one tick a minute, in time order."""
    rng = random.Random(seed)
    prices = dict.fromkeys(symbols, 100.0)
    out = []
    for i in range(n):
        symbol = symbols[i % len(symbols)]
        move = -0.05 if rng.random() < 0.08 else rng.uniform(-0.01, 0.012)
        prices[symbol] = round(prices[symbol] * (1 + move), 4)
        out.append(
            make_event(
                "market.tick",
                {"venue": "test", "symbol": symbol, "price": prices[symbol], "volume": rng.uniform(0, 3)},
                tenant=tenant,
                time=start + timedelta(minutes=i),
                source="tests",
            )
        )
    return out


def llm_calls(
    rows: Sequence[tuple[str, str, float | None, float, str]], tenant: str, start: datetime = T0
) -> list[Event]:
    """``(provider, model, cost_usd, latency_ms, status)`` rows as llm.call events, one a minute."""
    return [
        make_event(
            "llm.call",
            {
                "provider": provider,
                "model": model,
                "input_tokens": 100,
                "output_tokens": 10,
                "cost_usd": cost,
                "latency_ms": latency,
                "status": status,
                "error_type": "timeout" if status == "error" else None,
            },
            tenant=tenant,
            time=start + timedelta(minutes=i),
            source="tests",
        )
        for i, (provider, model, cost, latency, status) in enumerate(rows)
    ]


@dataclass
class DropRule:
    """Fires an alert when a symbol's price falls ``threshold_pct`` or more from its previous tick."""

    threshold_pct: float = 3.0
    name: str = "drop-rule"
    inputs: tuple[str, ...] = ("market.tick",)

    def initial_state(self) -> dict[str, float]:
        return {}

    def partition_key(self, event: Event) -> str:
        return f"{event.tenant}/{event.subject}"

    def handle(self, state: dict[str, float], event: Event) -> list[Output]:
        price = float(event.data.price)  # type: ignore[union-attr]
        key = self.partition_key(event)  # state per key: partitions hold several keys
        previous = state.get(key)
        state[key] = price
        if previous is None or price > previous * (1 - self.threshold_pct / 100):
            return []
        change = round((price / previous - 1) * 100, 3)
        alert = AlertDecision(
            rule=f"drop-{self.threshold_pct:g}pct",
            dedup_key=f"drop:{event.subject}",
            status="firing",
            summary=f"{event.subject} fell {-change}%",
            value=change,
            labels={"symbol": event.subject},
        )
        return [Emit("decision.alert", alert, f"drop:{event.subject}")]

    def snapshot(self, state: dict[str, float]) -> dict[str, Any]:
        return dict(state)

    def restore(self, snapshot: dict[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in snapshot.items()}


def build_drop_rule(config: dict[str, Any] | None) -> DropRule:
    """``module:factory`` form for ``spine replay run tests.archive_support:build_drop_rule``."""
    return DropRule(**(config or {}))


async def sink_until(
    bus: Bus,
    archive: Archive,
    done: Callable[[SinkStats], bool],
    *,
    timeout: float = 20.0,
    **kwargs: Any,
) -> SinkStats:
    """Run the sink until ``done(stats)`` after a batch (or ``timeout``), then stop it gracefully."""
    stop = asyncio.Event()

    def check(stats: SinkStats) -> None:
        if done(stats):
            stop.set()

    kwargs.setdefault("max_wait_s", 0.05)
    task = asyncio.create_task(run_sink(bus, archive, stop=stop, on_batch=check, **kwargs))
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        stop.set()
    return await asyncio.wait_for(task, 10)


def count(archive: Archive, sql: str, params: Sequence[Any] | None = None) -> int:
    return int(archive.sql(sql, params).column(0)[0].as_py())


def archive_path(tmp: Path) -> Path:
    return tmp / "data" / "archive.duckdb"
