"""The alerting processor's state: per tenant, a clock, the alerts and what rules watch.

``alerts`` maps each dedup key to its lifecycle (``AlertRecord``); the other
maps hold what the rules judge: the last value per threshold key, a price
series per rate-of-change/volatility key, call counts per error-rate key, and
the tenant's sessions, nodes and crossed budgets (shared by every rule of
their kind). Times are epoch seconds of event time; the snapshot is JSON-ready
and restores exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from processors.rolling import RollingCounts, RollingSeries

Status = Literal["firing", "pending", "resolved"]


@dataclass(slots=True)
class AlertRecord:
    """One dedup key: ``pending`` means active but held back by the cooldown."""

    rule: str
    status: Status
    since: float | None = None  # when the current (or last) episode fired
    notified: float | None = None  # last notification (fire or repeat)
    value: float | None = None
    count: int = 0  # notifications sent

    def dump(self) -> list[Any]:
        return [self.rule, self.status, self.since, self.notified, self.value, self.count]

    @classmethod
    def load(cls, doc: list[Any]) -> AlertRecord:
        return cls(*doc)


@dataclass(slots=True)
class SessionInfo:
    state: str
    state_ts: float  # event time of the state
    activity_ts: float  # last message, tool call or state change
    node: str | None = None
    project: str | None = None

    def dump(self) -> list[Any]:
        return [self.state, self.state_ts, self.activity_ts, self.node, self.project]


@dataclass(slots=True)
class NodeInfo:
    last_ts: float
    interval_s: float
    hostname: str | None = None

    def dump(self) -> list[Any]:
        return [self.last_ts, self.interval_s, self.hostname]


@dataclass(slots=True)
class BudgetInfo:
    budget: str
    key: str
    level: str
    period: str
    bucket: str
    until: float  # end of the period bucket
    spent: float
    limit: float

    def dump(self) -> list[Any]:
        return [self.budget, self.key, self.level, self.period, self.bucket, self.until, self.spent, self.limit]


@dataclass(slots=True)
class TenantAlerts:
    clock: float | None = None
    next_sweep: float | None = None
    alerts: dict[str, AlertRecord] = field(default_factory=dict)
    values: dict[str, list[Any]] = field(default_factory=dict)  # threshold key -> [ts, value, subject]
    series: dict[str, RollingSeries] = field(default_factory=dict)  # roc/volatility key
    checked: dict[str, int] = field(default_factory=dict)  # volatility key -> bucket index last judged
    counts: dict[str, RollingCounts] = field(default_factory=dict)  # error-rate key
    sessions: dict[str, SessionInfo] = field(default_factory=dict)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    budgets: dict[str, BudgetInfo] = field(default_factory=dict)  # budget alert key
    late: int = 0


@dataclass(slots=True)
class AlertingState:
    tenants: dict[str, TenantAlerts] = field(default_factory=dict)


def snapshot_state(state: AlertingState) -> dict[str, Any]:
    tenants: dict[str, Any] = {}
    for name, t in sorted(state.tenants.items()):
        tenants[name] = {
            "clock": t.clock,
            "next_sweep": t.next_sweep,
            "alerts": {k: a.dump() for k, a in sorted(t.alerts.items())},
            "values": dict(sorted(t.values.items())),
            "series": {k: [s.size_s, s.buckets, *s.dump()] for k, s in sorted(t.series.items())},
            "checked": dict(sorted(t.checked.items())),
            "counts": {k: [c.size_s, c.buckets, *c.dump()] for k, c in sorted(t.counts.items())},
            "sessions": {k: s.dump() for k, s in sorted(t.sessions.items())},
            "nodes": {k: n.dump() for k, n in sorted(t.nodes.items())},
            "budgets": {k: b.dump() for k, b in sorted(t.budgets.items())},
            "late": t.late,
        }
    return {"v": 1, "tenants": tenants}


def restore_state(doc: dict[str, Any]) -> AlertingState:
    state = AlertingState()
    for name, t in doc["tenants"].items():
        state.tenants[name] = TenantAlerts(
            clock=t["clock"],
            next_sweep=t["next_sweep"],
            alerts={k: AlertRecord.load(a) for k, a in t["alerts"].items()},
            values={k: list(v) for k, v in t["values"].items()},
            series={k: RollingSeries.load(s[0], s[1], s[2:]) for k, s in t["series"].items()},
            checked=dict(t["checked"]),
            counts={k: RollingCounts.load(c[0], c[1], c[2:]) for k, c in t["counts"].items()},
            sessions={k: SessionInfo(*s) for k, s in t["sessions"].items()},
            nodes={k: NodeInfo(*n) for k, n in t["nodes"].items()},
            budgets={k: BudgetInfo(*b) for k, b in t["budgets"].items()},
            late=t["late"],
        )
    return state
