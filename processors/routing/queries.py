"""What ``spine routes`` shows: each group's current table and its deployments' health."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from processors.routing.state import RoutingState


def route_rows(
    states: Sequence[RoutingState], tenant: str | None = None, group: str | None = None
) -> list[dict[str, Any]]:
    """One row per candidate of every table (in table order), with breaker and health figures."""
    rows: list[dict[str, Any]] = []
    for state in states:
        for t_name, t in sorted(state.tenants.items()):
            if tenant is not None and t_name != tenant:
                continue
            for g_name, table in sorted(t.tables.items()):
                if group is not None and g_name != group:
                    continue
                for rank, candidate in enumerate(table.candidates, start=1):
                    d = t.deployments.get(candidate["deployment"])
                    stats = d.stats(t.clock) if d is not None else {}
                    rows.append(
                        {
                            "tenant": t_name,
                            "model_group": g_name,
                            "version": table.version,
                            "strategy": table.strategy,
                            "rank": rank,
                            "deployment": candidate["deployment"],
                            "weight": candidate["weight"],
                            "breaker": candidate["breaker"],
                            "open_until": candidate.get("open_until"),
                            "requests": stats.get("requests"),
                            "error_rate": stats.get("error_rate"),
                            "errors": stats.get("errors"),
                            "p50_ms": stats.get("p50_ms"),
                            "p95_ms": stats.get("p95_ms"),
                            "ttft_p50_ms": stats.get("ttft_p50_ms"),
                            "cost_per_1k": stats.get("cost_per_1k"),
                            "why": candidate.get("why", ""),
                            "changed": table.reason,
                        }
                    )
    return rows
