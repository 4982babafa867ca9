"""The supervisor's state: per tenant, nodes, sessions, exhausted budgets; the session state machine.

Everything here is plain data (str, int, float, bool, dicts), so ``snapshot``
is ``dataclasses.asdict`` and ``restore`` rebuilds the same dataclasses:
``restore_state(orjson.loads(orjson.dumps(snapshot_state(s)))) == s``. Times
are integer microseconds since the Unix epoch (event time), exact through JSON.

Session state machine (``TRANSITIONS``)::

    (new) --session.started--> running
    running   -> idle | compacted | error | completed
    idle      -> running | compacted | error | completed
    compacted -> running | idle | error | completed
    error     -> running | completed       (an errored agent is restarted or ends)
    completed -> (terminal)

Repeating the current state is a no-op (heartbeats repeat it all the time). A
session first seen through ``session.state``/``session.heartbeat`` (the
supervisor started mid-stream) is adopted in whatever state it reports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from schemas import SpineError
from schemas.payloads.sessions import SessionStatus

SNAPSHOT_VERSION = 1

NodeStatus = Literal["online", "offline"]
BudgetScope = Literal["tenant", "project"]

TRANSITIONS: dict[SessionStatus, frozenset[SessionStatus]] = {
    "running": frozenset({"idle", "compacted", "error", "completed"}),
    "idle": frozenset({"running", "compacted", "error", "completed"}),
    "compacted": frozenset({"running", "idle", "error", "completed"}),
    "error": frozenset({"running", "completed"}),
    "completed": frozenset(),
}


def is_legal(old: SessionStatus | None, new: SessionStatus) -> bool:
    """Whether a session in ``old`` (``None``: not seen yet) may move to ``new``."""
    return old is None or old == new or new in TRANSITIONS[old]


class SupervisorSnapshotError(SpineError):
    """A snapshot handed to ``restore`` is not one this version of the supervisor wrote."""


@dataclass(slots=True)
class RetryRecord:
    """One policy's attempts on one session, in the current retry window."""

    count: int = 0
    window_start_us: int | None = None  # the first attempt of the current window
    last_attempt_us: int | None = None
    cap_alerted: bool = False  # a policy-retry-cap alert is firing


@dataclass(slots=True)
class NodeRecord:
    """A node, from its ``node.heartbeat`` events."""

    node_id: str
    status: NodeStatus
    interval_s: float
    last_heartbeat_us: int
    first_seen_us: int
    offline_since_us: int | None = None
    hostname: str | None = None
    version: str | None = None
    sessions_active: int = 0
    cpu_pct: float | None = None
    mem_pct: float | None = None
    heartbeats: int = 0
    stale_heartbeats: int = 0  # arrived older than the newest one seen


@dataclass(slots=True)
class SessionRecord:
    """A session. ``status`` is ``None`` while it is known only from a cost decision."""

    session_id: str
    first_seen_us: int
    last_seen_us: int
    status: SessionStatus | None = None
    status_since_us: int | None = None  # event time of the transition into ``status``
    state_at_us: int | None = None  # event time of the newest report of ``status``: older ones are late
    node_id: str | None = None
    agent: str | None = None
    project: str | None = None
    model: str | None = None
    workdir: str | None = None
    reason: str | None = None  # from the last applied session.state
    started_us: int | None = None
    last_activity_us: int | None = None  # started, messages, tool calls
    last_heartbeat_us: int | None = None
    tokens_used: int | None = None
    cost_by_day: dict[str, float] = field(default_factory=dict)  # day bucket -> running total
    killed_us: int | None = None
    kill_reason: str | None = None
    retries: dict[str, RetryRecord] = field(default_factory=dict)  # policy name -> attempts
    last_command: dict[str, Any] | None = None
    commands: int = 0
    transitions: int = 0
    illegal_transitions: int = 0
    last_illegal: dict[str, Any] | None = None
    late_events: int = 0  # state reports older than the current state: not applied


@dataclass(slots=True)
class ExhaustedBudget:
    """A hard budget that was crossed; it kills sessions in its scope until ``until_us``."""

    budget: str
    scope: BudgetScope
    key: str
    period: str
    bucket: str
    limit_usd: float
    spent_usd: float
    since_us: int
    until_us: int | None  # end of the period bucket; None if the bucket could not be read


@dataclass(slots=True)
class TenantState:
    """All nodes, sessions and exhausted budgets of one tenant, on the tenant's own clock."""

    tenant: str
    clock_us: int | None = None  # the newest event time seen for this tenant
    next_due_us: int | None = None  # the earliest timer (offline, idle, retry window, expiry)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    budgets: dict[str, ExhaustedBudget] = field(default_factory=dict)
    commands: int = 0
    alerts: int = 0


@dataclass(slots=True)
class SupervisorState:
    """One runner partition: the tenants hashed to it, each folded independently.

    Tenants never share a clock, so the decisions do not depend on how many
    partitions or replicas the runner uses.
    """

    tenants: dict[str, TenantState] = field(default_factory=dict)

    def tenant(self, name: str) -> TenantState:
        """The state of tenant ``name``, created empty on first use."""
        found = self.tenants.get(name)
        if found is None:
            found = self.tenants[name] = TenantState(tenant=name)
        return found


def session_cost(session: SessionRecord) -> float:
    """The session's cost so far: the sum of its daily running totals."""
    return sum(session.cost_by_day[bucket] for bucket in sorted(session.cost_by_day))


def snapshot_state(state: SupervisorState) -> dict[str, Any]:
    """A JSON-ready copy of ``state``."""
    return {"version": SNAPSHOT_VERSION, **dataclasses.asdict(state)}


def restore_state(snapshot: dict[str, Any]) -> SupervisorState:
    """The state ``snapshot_state`` captured; ``SupervisorSnapshotError`` if it is not one."""
    version = snapshot.get("version")
    if version != SNAPSHOT_VERSION:
        raise SupervisorSnapshotError(
            f"supervisor snapshot has version {version!r}, this build reads version {SNAPSHOT_VERSION}",
            hint="reset the supervisor's checkpoints and replay the SESSIONS and DECISIONS streams",
        )
    try:
        return SupervisorState(tenants={name: _tenant(doc) for name, doc in snapshot["tenants"].items()})
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise SupervisorSnapshotError(
            f"supervisor snapshot is malformed: {exc!r}",
            hint="reset the supervisor's checkpoints and replay the SESSIONS and DECISIONS streams",
        ) from exc


def _tenant(doc: dict[str, Any]) -> TenantState:
    return TenantState(
        tenant=doc["tenant"],
        clock_us=doc["clock_us"],
        next_due_us=doc["next_due_us"],
        nodes={k: NodeRecord(**_floats(v, "interval_s")) for k, v in doc["nodes"].items()},
        sessions={k: _session(v) for k, v in doc["sessions"].items()},
        budgets={k: ExhaustedBudget(**_floats(v, "limit_usd", "spent_usd")) for k, v in doc["budgets"].items()},
        commands=doc["commands"],
        alerts=doc["alerts"],
    )


def _session(doc: dict[str, Any]) -> SessionRecord:
    fields = dict(doc)
    fields["retries"] = {k: RetryRecord(**v) for k, v in doc["retries"].items()}
    # another JSON encoder may have written 12.0 as 12; the state must compare equal after restore
    fields["cost_by_day"] = {k: float(v) for k, v in doc["cost_by_day"].items()}
    return SessionRecord(**fields)


def _floats(doc: dict[str, Any], *names: str) -> dict[str, Any]:
    return {**doc, **{name: float(doc[name]) for name in names}}


# --- event time ---------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_us(moment: datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime."""
    return (moment - _EPOCH) // _US


def seconds_us(seconds: float) -> int:
    """A duration in seconds as integer microseconds."""
    return round(seconds * 1_000_000)


def iso(us: int | None) -> str | None:
    """An ISO 8601 UTC timestamp (``...Z``) for microseconds since the epoch."""
    if us is None:
        return None
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bucket_end_us(period: str, bucket: str) -> int | None:
    """When a cost period bucket (ISO start date) ends; ``None`` if ``bucket`` is not a date."""
    try:
        start = date.fromisoformat(bucket[:10])
    except ValueError:
        return None
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        end = start + timedelta(days=7)
    elif period == "month":
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    else:
        return None
    return to_us(datetime(end.year, end.month, end.day, tzinfo=UTC))
