"""Read-only views of supervisor states for ``spine sessions`` and ``spine nodes``.

Each helper takes one state or many (one per runner partition), as
``SupervisorState`` objects or as their snapshots (what the runner stores in
its checkpoints), and returns JSON-ready rows, by tenant then id; times are
ISO 8601 strings.
Liveness columns (``node_status``, ``silent_s``) are judged at the state's
own clock (the newest event time it has seen), never at the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from processors.supervisor.state import (
    NodeRecord,
    SessionRecord,
    SupervisorState,
    TenantState,
    iso,
    restore_state,
    seconds_us,
    session_cost,
)

StateLike = SupervisorState | TenantState | Mapping[str, Any]


def session_rows(
    states: StateLike | Iterable[StateLike],
    *,
    tenant: str | None = None,
    status: str | None = None,
    node: str | None = None,
    project: str | None = None,
) -> list[dict[str, Any]]:
    """One row per session, by tenant then session id; filters match exactly.

    ``status`` is the state machine's state, or ``unknown`` for a session known
    only from its costs so far.
    """
    rows: list[dict[str, Any]] = []
    for state in _states(states, tenant):
        for session_id in sorted(state.sessions):
            row = _session_row(state, state.sessions[session_id])
            if status is not None and row["status"] != status:
                continue
            if node is not None and row["node"] != node:
                continue
            if project is not None and row["project"] != project:
                continue
            rows.append(row)
    rows.sort(key=lambda r: (r["tenant"], r["session"]))
    return rows


def session_detail(
    states: StateLike | Iterable[StateLike], session_id: str, *, tenant: str | None = None
) -> dict[str, Any] | None:
    """Everything the supervisor knows about ``session_id`` (first tenant that has it), or ``None``."""
    for state in _states(states, tenant):
        session = state.sessions.get(session_id)
        if session is None:
            continue
        return _session_row(state, session) | {
            "workdir": session.workdir,
            "reason": session.reason,
            "started": iso(session.started_us),
            "first_seen": iso(session.first_seen_us),
            "last_seen": iso(session.last_seen_us),
            "last_heartbeat": iso(session.last_heartbeat_us),
            "cost_by_day": dict(sorted(session.cost_by_day.items())),
            "killed_at": iso(session.killed_us),
            "kill_reason": session.kill_reason,
            "last_command": _stamped(session.last_command),
            "retries": {
                policy: {
                    "count": record.count,
                    "window_start": iso(record.window_start_us),
                    "last_attempt": iso(record.last_attempt_us),
                    "cap_alert_firing": record.cap_alerted,
                }
                for policy, record in sorted(session.retries.items())
            },
            "transitions": session.transitions,
            "last_illegal": _stamped(session.last_illegal),
            "late_events": session.late_events,
        }
    return None


def node_rows(
    states: StateLike | Iterable[StateLike], *, tenant: str | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """One row per node, by tenant then node id; ``status`` filters (``online``/``offline``)."""
    rows: list[dict[str, Any]] = []
    for state in _states(states, tenant):
        for node_id in sorted(state.nodes):
            node = state.nodes[node_id]
            if status is not None and node.status != status:
                continue
            rows.append(_node_row(state, node))
    rows.sort(key=lambda r: (r["tenant"], r["node"]))
    return rows


def _session_row(state: TenantState, session: SessionRecord) -> dict[str, Any]:
    node = state.nodes.get(session.node_id) if session.node_id is not None else None
    command = session.last_command
    return {
        "tenant": state.tenant,
        "session": session.session_id,
        "status": session.status or "unknown",
        "since": iso(session.status_since_us),
        "node": session.node_id,
        "node_status": node.status if node is not None else "unknown",
        "project": session.project,
        "agent": session.agent,
        "model": session.model,
        "last_activity": iso(session.last_activity_us),
        "tokens": session.tokens_used,
        "cost_usd": round(session_cost(session), 6),
        "commands": session.commands,
        "last_command": f"{command['action']} ({command['policy']})" if command else None,
        "killed": session.killed_us is not None,
        "illegal_transitions": session.illegal_transitions,
    }


def _node_row(state: TenantState, node: NodeRecord) -> dict[str, Any]:
    clock = state.clock_us if state.clock_us is not None else node.last_heartbeat_us
    silent_us = max(0, clock - node.last_heartbeat_us)
    live = [s for s in state.sessions.values() if s.node_id == node.node_id and s.status not in (None, "completed")]
    return {
        "tenant": state.tenant,
        "node": node.node_id,
        "status": node.status,
        "hostname": node.hostname,
        "last_heartbeat": iso(node.last_heartbeat_us),
        "silent_s": round(silent_us / 1e6, 3),
        "interval_s": node.interval_s,
        "missed": silent_us // seconds_us(node.interval_s),
        "offline_since": iso(node.offline_since_us),
        "sessions": len(live),
        "sessions_active": node.sessions_active,
        "cpu_pct": node.cpu_pct,
        "mem_pct": node.mem_pct,
        "version": node.version,
    }


def _stamped(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """``doc`` with its ``at_us`` shown as an ISO ``at``."""
    if doc is None:
        return None
    shown = {k: v for k, v in doc.items() if k != "at_us"}
    shown["at"] = iso(doc.get("at_us"))
    return shown


def _states(states: StateLike | Iterable[StateLike], tenant: str | None) -> list[TenantState]:
    """Every tenant in ``states`` (or only ``tenant``), by tenant name."""
    if isinstance(states, SupervisorState | TenantState | Mapping):
        states = [states]
    tenants: list[TenantState] = []
    for state in states:
        if isinstance(state, TenantState):
            tenants.append(state)
            continue
        restored = state if isinstance(state, SupervisorState) else restore_state(dict(state))
        tenants.extend(restored.tenants.values())
    return sorted((t for t in tenants if tenant is None or t.tenant == tenant), key=lambda t: t.tenant)
