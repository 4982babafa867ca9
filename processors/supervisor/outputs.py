"""What the supervisor emits: ``decision.command`` and ``decision.alert``, and the names on them.

``Step`` carries one ``handle`` call's clock and collected outputs, so the
policies append decisions in a fixed order (which fixes their derived ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from processors.base import Emit, Output
from processors.supervisor.state import NodeRecord, SessionRecord, TenantState
from schemas.payloads.decisions import AlertDecision, CommandDecision

RESUME_ON_IDLE = "resume-on-idle"
RESTART_ON_COMPACTION = "restart-on-compaction"
KILL_ON_COST = "kill-on-cost-exceeded"
NODE_OFFLINE_RULE = "node-offline"
RETRY_CAP_RULE = "policy-retry-cap"

Action = Literal["resume", "restart", "kill"]
Severity = Literal["info", "warning", "critical"]


@dataclass(slots=True)
class Step:
    """One ``handle`` call: the partition clock, the sessions the event touched, the outputs."""

    state: TenantState
    now: int
    outputs: list[Output] = field(default_factory=list)
    touched: dict[str, None] = field(default_factory=dict)  # session ids, in touch order

    def touch(self, session_ids: Iterable[str]) -> None:
        for session_id in session_ids:
            self.touched[session_id] = None


def command(step: Step, session: SessionRecord, action: Action, policy: str, attempt: int, reason: str) -> None:
    """Emit a ``decision.command`` for ``session`` and remember it on the session."""
    data = CommandDecision(
        action=action,
        session_id=session.session_id,
        node_id=session.node_id,
        reason=reason,
        policy=policy,
        attempt=attempt,
    )
    step.outputs.append(Emit("decision.command", data, subject=session.session_id))
    session.commands += 1
    session.last_command = {"action": action, "policy": policy, "attempt": attempt, "reason": reason, "at_us": step.now}
    step.state.commands += 1


def alert(
    step: Step,
    rule: str,
    dedup_key: str,
    status: Literal["firing", "resolved"],
    severity: Severity,
    summary: str,
    value: float,
    labels: dict[str, str],
) -> None:
    """Emit a ``decision.alert`` (subject = ``dedup_key``, which pairs firing and resolved)."""
    data = AlertDecision(
        rule=rule,
        dedup_key=dedup_key,
        status=status,
        severity=severity,
        summary=summary,
        value=value,
        labels=labels,
    )
    step.outputs.append(Emit("decision.alert", data, subject=dedup_key))
    step.state.alerts += 1


def retry_cap_key(policy: str, session_id: str) -> str:
    return f"{RETRY_CAP_RULE}/{policy}/{session_id}"


def resolve_retry_cap(step: Step, session: SessionRecord, policy: str, why: str) -> None:
    """Resolve ``policy``'s retry-cap alert on ``session`` if one is firing."""
    record = session.retries.get(policy)
    if record is None or not record.cap_alerted:
        return
    record.cap_alerted = False
    alert(
        step,
        RETRY_CAP_RULE,
        retry_cap_key(policy, session.session_id),
        "resolved",
        "warning",
        f"{policy} on session {session.session_id}: {why}",
        float(record.count),
        session_labels(session, policy),
    )


def node_labels(state: TenantState, node: NodeRecord) -> dict[str, str]:
    live = sum(1 for s in state.sessions.values() if s.node_id == node.node_id and s.status != "completed")
    labels = {"node": node.node_id, "sessions": str(live)}
    if node.hostname:
        labels["hostname"] = node.hostname
    return labels


def session_labels(session: SessionRecord, policy: str) -> dict[str, str]:
    labels = {"session": session.session_id, "policy": policy}
    if session.node_id:
        labels["node"] = session.node_id
    if session.project:
        labels["project"] = session.project
    return labels
