"""Built-in named queries over the archive (``spine replay report NAME``).

Each report is plain SQL over the views, so ``spine replay report NAME --sql``
prints it for copying into ``spine replay sql`` and changing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from connectors.archive.errors import QueryError
from connectors.archive.store import Archive


@dataclass(frozen=True, slots=True)
class Report:
    """A named query; ``{where}`` is replaced by the time/tenant filter."""

    name: str
    title: str
    description: str
    template: str

    def sql(self, start: datetime | None = None, end: datetime | None = None, tenant: str | None = None) -> str:
        """The report's SQL with the filters inlined (it is shown to users, so no parameters)."""
        where = ["true"]
        if start is not None:
            where.append(f"time >= TIMESTAMPTZ '{start.isoformat()}'")
        if end is not None:
            where.append(f"time < TIMESTAMPTZ '{end.isoformat()}'")
        if tenant is not None:
            where.append("tenant = '" + tenant.replace("'", "''") + "'")
        return self.template.format(where=" AND ".join(where)).strip()


REPORTS: dict[str, Report] = {
    r.name: r
    for r in (
        Report(
            "cost",
            "Cost by model by day",
            "LLM spend, calls and tokens per provider/model per UTC day (unpriced: calls without cost_usd).",
            """
SELECT utc_day(time) AS day, provider, model,
       count(*) AS calls,
       CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
       CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
       round(sum(cost_usd), 6) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced
FROM llm_calls WHERE {where}
GROUP BY ALL ORDER BY day, cost_usd DESC NULLS LAST, provider, model
""",
        ),
        Report(
            "latency",
            "Latency by provider",
            "p50/p95/p99 request latency, p95 time to first token and error rate per provider.",
            """
SELECT provider,
       count(*) AS calls,
       round(avg(CASE WHEN status = 'error' THEN 1 ELSE 0 END) * 100, 2) AS error_pct,
       round(quantile_cont(latency_ms, 0.5), 1) AS p50_ms,
       round(quantile_cont(latency_ms, 0.95), 1) AS p95_ms,
       round(quantile_cont(latency_ms, 0.99), 1) AS p99_ms,
       round(quantile_cont(ttft_ms, 0.95), 1) AS ttft_p95_ms
FROM llm_calls WHERE {where}
GROUP BY provider ORDER BY p95_ms DESC NULLS LAST, provider
""",
        ),
        Report(
            "alerts",
            "Alert history",
            "Every alert that fired or resolved, newest first.",
            """
SELECT time, tenant, rule, status, severity, dedup_key, value, summary
FROM alerts WHERE {where}
ORDER BY time DESC, rule
""",
        ),
        Report(
            "sessions",
            "Session timelines",
            "One row per agent session: when it ran, on which node, its states in order, messages and tool calls.",
            """
SELECT session_id,
       min(time) AS first_seen,
       max(time) AS last_seen,
       round(epoch(max(time) - min(time)), 1) AS seconds,
       any_value(node_id) FILTER (WHERE node_id IS NOT NULL) AS node_id,
       any_value(agent) FILTER (WHERE agent IS NOT NULL) AS agent,
       string_agg(CASE WHEN type = 'session.started' THEN 'started' WHEN type = 'session.state' THEN state END,
                  ' > ' ORDER BY time) AS timeline,
       count(*) FILTER (WHERE type = 'session.message') AS messages,
       count(*) FILTER (WHERE type = 'session.tool_call') AS tool_calls,
       count(*) FILTER (WHERE type = 'session.tool_call' AND status = 'error') AS tool_errors
FROM session_events WHERE {where}
GROUP BY session_id ORDER BY first_seen, session_id
""",
        ),
        Report(
            "dead-letters",
            "Dead letters",
            "Events that could not be decoded or handled, by kind, source stream and reason.",
            """
SELECT type AS kind, source_stream, "group", count(*) AS letters, min(time) AS first, max(time) AS last,
       any_value(reason) AS example_reason
FROM dead_letters WHERE {where}
GROUP BY ALL ORDER BY letters DESC, kind
""",
        ),
        Report(
            "volume",
            "Events by day and type",
            "How many events of each type were archived per UTC day.",
            """
SELECT utc_day(time) AS day, type, count(*) AS events, count(DISTINCT tenant) AS tenants
FROM events WHERE {where}
GROUP BY ALL ORDER BY day, events DESC, type
""",
        ),
    )
}


def report(name: str) -> Report:
    try:
        return REPORTS[name]
    except KeyError:
        raise QueryError(f"unknown report {name!r}", hint="reports: " + ", ".join(REPORTS)) from None


def run_report(
    archive: Archive,
    name: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    tenant: str | None = None,
) -> pa.Table:
    """The rows of report ``name`` as an Arrow table."""
    return archive.sql(report(name).sql(start, end, tenant))
