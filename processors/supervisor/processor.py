"""``SessionSupervisor``: node liveness, the session state machine, auto-intervention policies.

State is kept per tenant (``SupervisorState.tenants``), each on its own clock:
the newest event time of that tenant, whatever the event. Per event:

1. the tenant's clock advances to the event's time (never backwards);
2. the event updates its own node or session first, so a heartbeat that
   arrives after a long gap revives its node instead of being beaten to it by
   the timer, and a session that reports ``running`` is not resumed;
3. if a timer is due (``next_due_us``), a sweep checks every node and session
   of the tenant in id order: nodes go offline, idle sessions are resumed,
   retry windows reopen, completed sessions, long-offline nodes and ended
   budgets expire; otherwise only the sessions the event touched are evaluated.

Out-of-order input: a ``session.state`` older than the newest state report of
its session is rejected as ``late`` (dead-lettered, not applied); an older
heartbeat is counted and ignored (it is periodic and already superseded); an
illegal transition is rejected as ``rejected`` and counted on the session.

Policies (each emits ``decision.command`` with subject = session id):

- ``resume-on-idle``: idle for ``idle_threshold_s`` since it went idle, was
  last active, or was last resumed by us -> ``resume``;
- ``restart-on-compaction``: entering ``compacted`` -> one ``restart`` per
  compaction (a capped one is sent when the window reopens, if still compacted);
- ``kill-on-cost-exceeded``: cost above ``session_limit_usd``, or a hard
  budget of its project/tenant -> ``kill``, once per session.

Resume and restart count attempts per session in a window that starts at the
first attempt and lasts ``reset_window_s``; at ``max_retries`` the policy
waits for the window to end and fires a ``policy-retry-cap`` alert. Resume and
restart wait while the session's node is offline (the node agent could not
act); kill does not (the command waits in the stream).
"""

from __future__ import annotations

from typing import Any

from processors.base import Output, Reject
from processors.supervisor.config import SupervisorConfig
from processors.supervisor.outputs import (
    KILL_ON_COST,
    NODE_OFFLINE_RULE,
    RESTART_ON_COMPACTION,
    RESUME_ON_IDLE,
    RETRY_CAP_RULE,
    Action,
    Step,
    alert,
    command,
    node_labels,
    resolve_retry_cap,
    retry_cap_key,
    session_labels,
)
from processors.supervisor.state import (
    TRANSITIONS,
    ExhaustedBudget,
    NodeRecord,
    RetryRecord,
    SessionRecord,
    SupervisorState,
    bucket_end_us,
    is_legal,
    iso,
    restore_state,
    seconds_us,
    session_cost,
    snapshot_state,
    to_us,
)
from schemas import Event
from schemas.envelope import (
    BudgetDecisionEvent,
    CostDecisionEvent,
    NodeHeartbeatEvent,
    SessionHeartbeatEvent,
    SessionMessageEvent,
    SessionStartedEvent,
    SessionStateEvent,
    SessionToolCallEvent,
)
from schemas.payloads.sessions import SessionStatus

# the status a policy acts on: leaving it resolves that policy's retry-cap alert
_TRIGGER: dict[str, SessionStatus] = {RESUME_ON_IDLE: "idle", RESTART_ON_COMPACTION: "compacted"}


class SessionSupervisor:
    """The session supervisor processor. See the module docstring."""

    name: str = "supervisor"
    inputs: tuple[str, ...] = ("session.>", "node.heartbeat", "decision.cost", "decision.budget")

    def __init__(self, config: SupervisorConfig | None = None) -> None:
        self.config = config if config is not None else SupervisorConfig()

    def initial_state(self) -> SupervisorState:
        return SupervisorState()

    def snapshot(self, state: SupervisorState) -> dict[str, Any]:
        return snapshot_state(state)

    def restore(self, snapshot: dict[str, Any]) -> SupervisorState:
        return restore_state(snapshot)

    def partition_key(self, event: Event) -> str:
        """State is kept per tenant: every node and session of a tenant in one place."""
        return event.tenant

    def handle(self, state: SupervisorState, event: Event) -> list[Output]:
        tenant = state.tenant(event.tenant)
        at = to_us(event.time)
        if isinstance(event, CostDecisionEvent | BudgetDecisionEvent) and tenant.clock_us is not None:
            # Decisions come from another stream and may run ahead of the fleet's own
            # signals; only session and node events move the liveness clock.
            now = tenant.clock_us
        else:
            now = at if tenant.clock_us is None else max(tenant.clock_us, at)
        tenant.clock_us = now
        step = Step(tenant, now)

        if isinstance(event, SessionStartedEvent):
            self._on_started(step, event, at)
        elif isinstance(event, SessionStateEvent):
            data = event.data
            self._on_report(step, event, at, data.session_id, data.state, data.node_id, data.reason)
        elif isinstance(event, SessionHeartbeatEvent):
            self._on_session_heartbeat(step, event, at)
        elif isinstance(event, SessionMessageEvent | SessionToolCallEvent):
            session = self._session(step, event.data.session_id, at)
            session.last_activity_us = _max(session.last_activity_us, at)
        elif isinstance(event, NodeHeartbeatEvent):
            self._on_node_heartbeat(step, event, at)
        elif isinstance(event, CostDecisionEvent):
            self._on_cost(step, event, at)
        elif isinstance(event, BudgetDecisionEvent):
            self._on_budget(step, event, at)
        # any other session.* type is future schema: it only advanced the clock

        if tenant.next_due_us is not None and now >= tenant.next_due_us:
            self._sweep(step)
        else:
            for session_id in step.touched:
                touched = tenant.sessions.get(session_id)
                if touched is not None:
                    tenant.next_due_us = _min(tenant.next_due_us, self._visit(step, touched))
        return step.outputs

    # --- inputs -----------------------------------------------------------------------------

    def _session(self, step: Step, session_id: str, at: int) -> SessionRecord:
        session = step.state.sessions.get(session_id)
        if session is None:
            session = SessionRecord(session_id=session_id, first_seen_us=at, last_seen_us=at)
            step.state.sessions[session_id] = session
        else:
            session.last_seen_us = max(session.last_seen_us, at)
        return session

    def _on_started(self, step: Step, event: SessionStartedEvent, at: int) -> None:
        data = event.data
        session = self._session(step, data.session_id, at)
        # arriving after newer reports (another producer, a replay): fill in what it knows, keep their state
        late = session.state_at_us is not None and at < session.state_at_us
        if not late and not self._transition(step, event, session, "running", at):
            return
        session.node_id = (session.node_id or data.node_id) if late else data.node_id
        session.started_us = at if session.started_us is None else min(session.started_us, at)
        session.last_activity_us = _max(session.last_activity_us, at)
        session.agent = data.agent
        session.project = data.project or session.project
        session.model = data.model or session.model
        session.workdir = data.workdir or session.workdir
        step.touch([session.session_id])  # a project may put it under an exhausted budget

    def _on_report(
        self,
        step: Step,
        event: SessionStateEvent | SessionHeartbeatEvent,
        at: int,
        session_id: str,
        status: SessionStatus,
        node_id: str | None,
        reason: str | None,
    ) -> None:
        session = self._session(step, session_id, at)
        if self._transition(step, event, session, status, at):
            session.node_id = node_id or session.node_id
            if isinstance(event, SessionStateEvent):
                session.reason = reason

    def _on_session_heartbeat(self, step: Step, event: SessionHeartbeatEvent, at: int) -> None:
        data = event.data
        session = self._session(step, data.session_id, at)
        if session.last_heartbeat_us is None or at >= session.last_heartbeat_us:
            session.last_heartbeat_us = at
            session.tokens_used = data.tokens_used if data.tokens_used is not None else session.tokens_used
            session.node_id = data.node_id
        if data.state is None:
            return
        if session.state_at_us is not None and at < session.state_at_us:
            session.late_events += 1  # periodic and superseded by what came later: no dead letter
            return
        self._on_report(step, event, at, data.session_id, data.state, data.node_id, None)

    def _transition(
        self,
        step: Step,
        event: SessionStartedEvent | SessionStateEvent | SessionHeartbeatEvent,
        session: SessionRecord,
        new: SessionStatus,
        at: int,
    ) -> bool:
        """Apply ``new`` to ``session``; ``False`` (and a Reject output) if it may not."""
        old = session.status
        if session.state_at_us is not None and at < session.state_at_us:
            session.late_events += 1
            step.outputs.append(
                Reject(
                    "late",
                    f"{event.type} {event.id} says session {session.session_id} is {new} at {iso(at)}, "
                    f"but it was reported {old} at {iso(session.state_at_us)}; the older report is superseded",
                )
            )
            return False
        if not is_legal(old, new):
            assert old is not None
            session.illegal_transitions += 1
            session.last_illegal = {"from": old, "to": new, "event_id": event.id, "event_type": event.type, "at_us": at}
            allowed = ", ".join(sorted(TRANSITIONS[old])) or "nothing: completed is terminal"
            step.outputs.append(
                Reject(
                    "rejected",
                    f"illegal session transition {old}->{new} for session {session.session_id} "
                    f"({event.type} {event.id}); from {old} it may go to {allowed}",
                )
            )
            return False
        session.state_at_us = at
        if old != new:
            session.status = new
            session.status_since_us = at
            session.transitions += 1
            for policy, trigger in _TRIGGER.items():
                if new != trigger:
                    resolve_retry_cap(step, session, policy, f"session is now {new}")
            step.touch([session.session_id])
        return True

    def _on_node_heartbeat(self, step: Step, event: NodeHeartbeatEvent, at: int) -> None:
        data = event.data
        state, now = step.state, step.now
        node = state.nodes.get(data.node_id)
        if node is None:
            node = NodeRecord(
                node_id=data.node_id,
                status="online",
                interval_s=data.interval_s,
                last_heartbeat_us=at,
                first_seen_us=at,
            )
            state.nodes[data.node_id] = node  # if already silent too long, the sweep below marks it offline
        elif at < node.last_heartbeat_us:
            node.heartbeats += 1
            node.stale_heartbeats += 1
            return
        node.heartbeats += 1
        node.last_heartbeat_us = at
        node.interval_s = data.interval_s
        node.hostname = data.hostname or node.hostname
        node.version = data.version or node.version
        node.sessions_active = data.sessions_active
        node.cpu_pct = data.cpu_pct
        node.mem_pct = data.mem_pct
        silence = self._silence_us(node)
        if node.status == "offline" and now <= at + silence and node.offline_since_us is not None:
            offline_s = (at - node.offline_since_us) / 1e6
            node.status = "online"
            node.offline_since_us = None
            alert(
                step,
                NODE_OFFLINE_RULE,
                f"{NODE_OFFLINE_RULE}/{node.node_id}",
                "resolved",
                self.config.nodes.offline_severity,
                f"node {node.node_id} is back online after {offline_s:.0f}s offline",
                offline_s,
                node_labels(state, node),
            )
            step.touch(sorted(s.session_id for s in state.sessions.values() if s.node_id == node.node_id))
        if node.status == "online":
            state.next_due_us = _min(state.next_due_us, at + silence + 1)

    def _on_cost(self, step: Step, event: CostDecisionEvent, at: int) -> None:
        data = event.data
        # the day buckets add up to the session's total; week/month roll-ups would count it twice
        if data.dimension != "session" or data.period != "day":
            return
        session = step.state.sessions.get(data.key)
        if session is None:  # costs (LLM stream) can overtake session.started (SESSIONS stream)
            session = SessionRecord(session_id=data.key, first_seen_us=at, last_seen_us=at)
            step.state.sessions[data.key] = session
        # running totals only grow: max() makes duplicates and reordering harmless
        session.cost_by_day[data.bucket] = max(session.cost_by_day.get(data.bucket, 0.0), data.cost_usd)
        step.touch([data.key])

    def _on_budget(self, step: Step, event: BudgetDecisionEvent, at: int) -> None:
        data = event.data
        policy = self.config.kill_on_cost
        if data.level != "hard" or data.scope not in ("tenant", "project"):
            return
        if not (policy.enabled and policy.on_hard_budget and data.scope in policy.budget_scopes):
            return
        state = step.state
        key = f"{data.budget}/{data.scope}:{data.key}"
        until = bucket_end_us(data.period, data.bucket)
        known = state.budgets.get(key)
        if known is not None and known.bucket == data.bucket:
            known.since_us = min(known.since_us, at)  # a redelivery, or a later crossing report
        elif known is None or until is None or known.until_us is None or until > known.until_us:
            state.budgets[key] = ExhaustedBudget(
                budget=data.budget,
                scope=data.scope,
                key=data.key,
                period=data.period,
                bucket=data.bucket,
                limit_usd=data.limit_usd,
                spent_usd=data.spent_usd,
                since_us=at,
                until_us=until,
            )
            state.next_due_us = _min(state.next_due_us, until)  # to forget it when its bucket ends
        step.touch(sorted(state.sessions))

    # --- timers and policies ----------------------------------------------------------------

    def _sweep(self, step: Step) -> None:
        state, now = step.state, step.now
        due: int | None = None
        for node_id in sorted(state.nodes):
            due = _min(due, self._check_node(step, state.nodes[node_id]))
        for session_id in sorted(state.sessions):
            due = _min(due, self._visit(step, state.sessions[session_id]))
        for key in sorted(state.budgets):
            until = state.budgets[key].until_us
            if until is not None and now >= until:
                del state.budgets[key]
            else:
                due = _min(due, until)
        state.next_due_us = due

    def _check_node(self, step: Step, node: NodeRecord) -> int | None:
        """Mark ``node`` offline if it has been silent too long; its next deadline."""
        state, now = step.state, step.now
        if node.status == "online":
            silence = self._silence_us(node)
            deadline = node.last_heartbeat_us + silence + 1
            if now < deadline:
                return deadline
            node.status = "offline"
            node.offline_since_us = node.last_heartbeat_us + silence
            silent_s = (now - node.last_heartbeat_us) / 1e6
            alert(
                step,
                NODE_OFFLINE_RULE,
                f"{NODE_OFFLINE_RULE}/{node.node_id}",
                "firing",
                self.config.nodes.offline_severity,
                f"node {node.node_id} missed {self.config.nodes.missed_heartbeats} heartbeats "
                f"(every {node.interval_s:g}s): silent for {silent_s:.0f}s since {iso(node.last_heartbeat_us)}",
                silent_s,
                node_labels(state, node),
            )
        forget_after = self.config.nodes.forget_after_s
        if forget_after is None or node.offline_since_us is None:
            return None
        forget_at = node.offline_since_us + seconds_us(forget_after)
        if now >= forget_at:
            # close its alert: a notifier should not page about a node the registry has let go
            alert(
                step,
                NODE_OFFLINE_RULE,
                f"{NODE_OFFLINE_RULE}/{node.node_id}",
                "resolved",
                self.config.nodes.offline_severity,
                f"node {node.node_id} forgotten after {forget_after:g}s offline",
                (now - node.offline_since_us) / 1e6,
                node_labels(state, node),
            )
            del state.nodes[node.node_id]
            return None
        return forget_at

    def _visit(self, step: Step, session: SessionRecord) -> int | None:
        """Expire or act on ``session``; when it next needs a look (``None``: only on new input)."""
        retention = self.config.completed_session_retention_s
        if session.status is None or session.status == "completed":
            since = session.last_seen_us if session.status is None else session.status_since_us
            if retention is None or since is None:
                return None
            expires = since + seconds_us(retention)
            if step.now >= expires:
                del step.state.sessions[session.session_id]
                return None
            return expires
        if session.killed_us is None and self.config.kill_on_cost.enabled:
            reason = self._kill_reason(step, session)
            if reason is not None:
                session.killed_us = step.now
                session.kill_reason = reason
                command(step, session, "kill", KILL_ON_COST, 1, reason)
                for policy in _TRIGGER:
                    resolve_retry_cap(step, session, policy, "session was killed")
        if session.killed_us is not None:
            return None
        node = step.state.nodes.get(session.node_id) if session.node_id is not None else None
        if node is not None and node.status == "offline":
            return None  # its node's return touches it again
        if session.status == "idle" and self.config.resume_on_idle.enabled:
            return self._resume(step, session)
        if session.status == "compacted" and self.config.restart_on_compaction.enabled:
            return self._restart(step, session)
        return None

    def _kill_reason(self, step: Step, session: SessionRecord) -> str | None:
        policy = self.config.kill_on_cost
        limit = policy.session_limit_usd
        if limit is not None:
            cost = session_cost(session)
            if cost > limit:
                return f"session cost ${cost:.2f} exceeds the session limit ${limit:.2f}"
        if not policy.on_hard_budget:
            return None
        state = step.state
        for key in sorted(state.budgets):
            budget = state.budgets[key]
            if budget.until_us is not None and step.now >= budget.until_us:
                continue
            if budget.scope not in policy.budget_scopes:
                continue
            if budget.scope == "project" and session.project != budget.key:
                continue
            if budget.scope == "tenant" and budget.key != state.tenant:
                continue
            if not policy.kill_new_sessions and session.first_seen_us > budget.since_us:
                continue
            return (
                f"hard budget {budget.budget!r} ({budget.scope} {budget.key}, {budget.period} {budget.bucket}) "
                f"exhausted: ${budget.spent_usd:.2f} spent of ${budget.limit_usd:.2f}"
            )
        return None

    def _resume(self, step: Step, session: SessionRecord) -> int | None:
        policy = self.config.resume_on_idle
        record = session.retries.get(RESUME_ON_IDLE)
        active = _max(session.status_since_us, session.last_activity_us)
        assert active is not None  # an idle session has a status_since
        idle_from = _max(active, record.last_attempt_us if record is not None else None)
        assert idle_from is not None
        due = idle_from + seconds_us(policy.idle_threshold_s)
        if step.now < due:
            return due
        idle_s = (step.now - active) / 1e6
        reason = f"idle for {idle_s:.0f}s (threshold {policy.idle_threshold_s:g}s)"
        attempted, retry_at = self._attempt(
            step, session, RESUME_ON_IDLE, "resume", policy.max_retries, policy.reset_window_s, reason
        )
        return step.now + seconds_us(policy.idle_threshold_s) if attempted else retry_at

    def _restart(self, step: Step, session: SessionRecord) -> int | None:
        policy = self.config.restart_on_compaction
        record = session.retries.get(RESTART_ON_COMPACTION)
        since = session.status_since_us
        assert since is not None
        if record is not None and record.last_attempt_us is not None and record.last_attempt_us >= since:
            return None  # once per compaction
        reason = f"context compacted at {iso(since)}"
        _, retry_at = self._attempt(
            step, session, RESTART_ON_COMPACTION, "restart", policy.max_retries, policy.reset_window_s, reason
        )
        return retry_at

    def _attempt(
        self,
        step: Step,
        session: SessionRecord,
        policy: str,
        action: Action,
        max_retries: int,
        reset_window_s: float,
        reason: str,
    ) -> tuple[bool, int | None]:
        """Act if the retry window allows: (acted, when the window reopens if it did not)."""
        record = session.retries.setdefault(policy, RetryRecord())
        window = seconds_us(reset_window_s)
        if record.window_start_us is not None and step.now >= record.window_start_us + window:
            record.count = 0
            record.window_start_us = None
            resolve_retry_cap(step, session, policy, "retry window reset")
        if record.count >= max_retries:
            assert record.window_start_us is not None
            reopens = record.window_start_us + window
            if self.config.retry_cap_alerts and not record.cap_alerted:
                record.cap_alerted = True
                alert(
                    step,
                    RETRY_CAP_RULE,
                    retry_cap_key(policy, session.session_id),
                    "firing",
                    "warning",
                    f"{policy} used {record.count} of {max_retries} {action} attempts on session "
                    f"{session.session_id} this window, next allowed at {iso(reopens)}; {reason}",
                    float(record.count),
                    session_labels(session, policy),
                )
            return False, reopens
        if record.window_start_us is None:
            record.window_start_us = step.now
        record.count += 1
        record.last_attempt_us = step.now
        command(step, session, action, policy, record.count, reason)
        return True, None

    def _silence_us(self, node: NodeRecord) -> int:
        """How long ``node`` may stay silent before it counts as offline."""
        return seconds_us(node.interval_s) * self.config.nodes.missed_heartbeats


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else max(a, b)
