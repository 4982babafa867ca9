"""``Alerter``: rules over any stream, folded into ``decision.alert`` fire/resolve pairs.

Inputs: what the configured rules read (``inputs`` is computed from them).
State partitioned by tenant: a node's heartbeats, a session's events and the
tenant's other events must meet in one place, because any of them moves the
clock that finds a silent node or an idle session. Per event:

1. the tenant's clock moves to the event time; an observation older than the
   clock by more than ``allowed_lateness_s`` is rejected as ``late``
   (``decision.budget`` is never late: it is a fact about a whole period);
2. the event updates what it is about (a price series, call counts, a
   session, a node, a crossed budget) and every rule watching that thing is
   judged at the clock;
3. when the clock passes the next sweep (every ``sweep_interval_s``), timers
   are judged: idle sessions, silent nodes, ended budget periods, and every
   firing or held-back alert, whose window may have moved on without it.

Judging one dedup key (``<rule>/<what>``): active and not firing -> fire,
unless the rule's cooldown since its last notification has not passed (then
it is held back as ``pending`` and fires at a later judgement if still
active); firing and no longer active -> resolve (every fire gets its resolve);
firing, still active and ``renotify`` -> repeat every ``cooldown_s``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime
from fnmatch import fnmatchcase
from typing import Any, Literal, NamedTuple

from processors.alerting.config import (
    AlertingConfig,
    BudgetRule,
    ErrorRateRule,
    NodeOfflineRule,
    RateOfChangeRule,
    Rule,
    SessionRule,
    ThresholdRule,
    VolatilityRule,
)
from processors.alerting.state import (
    AlertingState,
    AlertRecord,
    BudgetInfo,
    NodeInfo,
    SessionInfo,
    TenantAlerts,
    restore_state,
    snapshot_state,
)
from processors.base import Emit, Output, Reject
from processors.rolling import RollingCounts, RollingSeries, log_returns, stdev, zscore
from processors.windows import bucket_end, day_start_ts
from schemas import Event
from schemas.envelope import (
    BudgetDecisionEvent,
    LlmCallEvent,
    MarketTickEvent,
    NodeHeartbeatEvent,
    SessionHeartbeatEvent,
    SessionMessageEvent,
    SessionStartedEvent,
    SessionStateEvent,
    SessionToolCallEvent,
)
from schemas.payloads.decisions import AlertDecision


class Check(NamedTuple):
    """A rule's verdict on one thing at the clock; ``explain`` gives (summary, labels), only when emitting."""

    active: bool
    value: float | None
    explain: Callable[[], tuple[str, dict[str, str]]]


def _said(summary: str, labels: dict[str, str]) -> Callable[[], tuple[str, dict[str, str]]]:
    return lambda: (summary, labels)


_INPUTS: dict[type[Any], tuple[str, ...]] = {
    RateOfChangeRule: ("market.tick",),
    VolatilityRule: ("market.tick",),
    ErrorRateRule: ("llm.call",),
    SessionRule: ("session.>",),
    NodeOfflineRule: ("node.heartbeat",),
    BudgetRule: ("decision.budget",),
}


_SESSION_EVENTS = (
    SessionStartedEvent,
    SessionStateEvent,
    SessionMessageEvent,
    SessionToolCallEvent,
    SessionHeartbeatEvent,
)


class Alerter:
    """See the module docstring."""

    name = "alerting"

    def __init__(self, config: AlertingConfig | None = None) -> None:
        self.config = config or AlertingConfig()
        rules = self.config.rules
        self.rules: dict[str, Rule] = {r.name: r for r in rules}
        wanted: dict[str, None] = {}
        for rule in rules:
            for pattern in (rule.type,) if isinstance(rule, ThresholdRule) else _INPUTS[type(rule)]:
                wanted[pattern] = None
        self.inputs: tuple[str, ...] = tuple(wanted)
        self._threshold: dict[str, list[ThresholdRule]] = {}
        for rule in rules:
            if isinstance(rule, ThresholdRule):
                self._threshold.setdefault(rule.type, []).append(rule)
        self._market = [r for r in rules if isinstance(r, RateOfChangeRule | VolatilityRule)]
        self._by_symbol: dict[str, list[tuple[RateOfChangeRule | VolatilityRule, str]]] = {}
        self._errors = [r for r in rules if isinstance(r, ErrorRateRule)]
        self._sessions = [r for r in rules if isinstance(r, SessionRule)]
        self._nodes = [r for r in rules if isinstance(r, NodeOfflineRule)]
        self._budgets = [r for r in rules if isinstance(r, BudgetRule)]

    def partition_key(self, event: Event) -> str:
        """Per tenant: any event of the tenant moves the clock that finds silent nodes and idle sessions."""
        return event.tenant

    def initial_state(self) -> AlertingState:
        return AlertingState()

    def snapshot(self, state: AlertingState) -> dict[str, Any]:
        return snapshot_state(state)

    def restore(self, snapshot: dict[str, Any]) -> AlertingState:
        return restore_state(snapshot)

    # -- the fold ------------------------------------------------------------------------
    def handle(self, state: AlertingState, event: Event) -> list[Output]:
        t = state.tenants.get(event.tenant)
        if t is None:
            t = state.tenants[event.tenant] = TenantAlerts()
        ts = event.time.timestamp()
        late = t.clock is not None and ts < t.clock - self.config.allowed_lateness_s
        if late and t.clock is not None and not isinstance(event, BudgetDecisionEvent):
            t.late += 1
            return [
                Reject(
                    "late",
                    f"{event.type} at {event.time.isoformat()} is {t.clock - ts:.0f}s behind the tenant's "
                    f"clock (allowed lateness {self.config.allowed_lateness_s:.0f}s)",
                )
            ]
        if t.clock is None or ts > t.clock:
            t.clock = ts
        out: list[Output] = []
        for rule in self._threshold.get(event.type, ()):
            self._on_threshold(t, rule, event, ts, out)
        if isinstance(event, MarketTickEvent):
            self._on_tick(t, event, ts, out)
        elif isinstance(event, LlmCallEvent):
            self._on_call(t, event, ts, out)
        elif isinstance(event, NodeHeartbeatEvent):
            self._on_node(t, event, ts, out)
        elif isinstance(event, BudgetDecisionEvent):
            self._on_budget(t, event, out)
        elif isinstance(
            event,
            SessionStartedEvent
            | SessionStateEvent
            | SessionMessageEvent
            | SessionToolCallEvent
            | SessionHeartbeatEvent,
        ):
            self._on_session(t, event, ts, out)
        self._sweep(t, out)
        return out

    def _now(self, t: TenantAlerts) -> float:
        assert t.clock is not None
        return t.clock

    # -- events ----------------------------------------------------------------------------
    def _on_threshold(self, t: TenantAlerts, rule: ThresholdRule, event: Event, ts: float, out: list[Output]) -> None:
        if not _matches(event.subject, rule.subject):
            return
        value = getattr(event.data, rule.field, None)
        if value is None:
            return
        key = f"{rule.name}/{event.subject}"
        held = t.values.get(key)
        if held is None or ts >= held[0]:  # an older value never replaces a newer one
            t.values[key] = [ts, float(value), event.subject]
        self._judge(t, rule, key, out, event.subject)

    def _on_tick(self, t: TenantAlerts, event: MarketTickEvent, ts: float, out: list[Output]) -> None:
        symbol, now = event.data.symbol, self._now(t)
        for rule, key in self._market_keys(symbol):
            series = t.series.get(key)
            if series is None:
                series = t.series[key] = self._series(rule)
            series.add(ts, event.data.price, now)
            if isinstance(rule, VolatilityRule):
                # Returns come from closed intervals: judge when one closes or a late tick changes one.
                current = series.index(now)
                if t.checked.get(key) == current and series.index(ts) == current:
                    continue
                t.checked[key] = current
            self._judge(t, rule, key, out, symbol)

    def _market_keys(self, symbol: str) -> list[tuple[RateOfChangeRule | VolatilityRule, str]]:
        """The market rules watching ``symbol`` with their dedup keys (memoized: a pure function)."""
        found = self._by_symbol.get(symbol)
        if found is None:
            if len(self._by_symbol) > 100_000:
                self._by_symbol.clear()
            found = self._by_symbol[symbol] = [
                (rule, f"{rule.name}/{symbol}") for rule in self._market if _matches(symbol, rule.symbol)
            ]
        return found

    def _series(self, rule: RateOfChangeRule | VolatilityRule) -> RollingSeries:
        if isinstance(rule, RateOfChangeRule):
            return RollingSeries(rule.window_s, rule.buckets)
        return RollingSeries(rule.window_s, max(2, round(rule.window_s / rule.interval_s)))

    def _on_call(self, t: TenantAlerts, event: LlmCallEvent, ts: float, out: list[Output]) -> None:
        call, now = event.data, self._now(t)
        for rule in self._errors:
            if rule.by == "provider":
                what = call.provider
            elif rule.by == "model":
                what = f"{call.provider}/{call.model}"
            else:
                what = call.deployment or f"{call.provider}/{call.model}"
            if not _matches(what, rule.match):
                continue
            key = f"{rule.name}/{what}"
            counts = t.counts.get(key)
            if counts is None:
                counts = t.counts[key] = RollingCounts(rule.window_s, rule.buckets)
            failed = call.status == "error" and (call.error_type or "other") in rule.error_types
            counts.add(ts, {"n": 1, "err": 1 if failed else 0}, now)
            self._judge(t, rule, key, out, what)

    def _on_node(self, t: TenantAlerts, event: NodeHeartbeatEvent, ts: float, out: list[Output]) -> None:
        beat = event.data
        node = t.nodes.get(beat.node_id)
        if node is None:
            t.nodes[beat.node_id] = NodeInfo(ts, beat.interval_s, beat.hostname)
        elif ts >= node.last_ts:
            node.last_ts, node.interval_s = ts, beat.interval_s
            node.hostname = beat.hostname or node.hostname
        for rule in self._nodes:
            self._judge(t, rule, f"{rule.name}/{beat.node_id}", out, beat.node_id)

    def _on_budget(self, t: TenantAlerts, event: BudgetDecisionEvent, out: list[Output]) -> None:
        b = event.data
        end = bucket_end(date.fromisoformat(b.bucket), b.period)
        for rule in self._budgets:
            if b.level not in rule.levels or not _matches(b.budget, rule.budget):
                continue
            key = f"{rule.name}/{b.budget}/{b.key}/{b.level}"
            held = t.budgets.get(key)
            until = day_start_ts(end)
            if held is None or until >= held.until:
                t.budgets[key] = BudgetInfo(
                    b.budget, b.key, b.level, b.period, b.bucket, until, b.spent_usd, b.limit_usd
                )
            self._judge(t, rule, key, out)

    def _on_session(self, t: TenantAlerts, event: Event, ts: float, out: list[Output]) -> None:
        data: Any = event.data
        sid: str = data.session_id
        info = t.sessions.get(sid)
        if info is None:
            info = t.sessions[sid] = SessionInfo("running", ts, ts)
        if isinstance(event, SessionStartedEvent):
            info.node, info.project = event.data.node_id, event.data.project
            if ts >= info.state_ts:
                info.state, info.state_ts = "running", ts
        elif isinstance(event, SessionStateEvent | SessionHeartbeatEvent):
            info.node = event.data.node_id or info.node
            state = event.data.state
            # A repeated report of the same state is no news: idle time counts from going idle.
            if state is not None and state != info.state and ts >= info.state_ts:
                info.state, info.state_ts = state, ts
                info.activity_ts = max(info.activity_ts, ts)
        else:  # a message or a tool call: the session is doing something
            info.activity_ts = max(info.activity_ts, ts)
        for rule in self._sessions:
            self._judge(t, rule, f"{rule.name}/{sid}", out, sid)
        if info.state == "completed":
            del t.sessions[sid]

    # -- judging ---------------------------------------------------------------------------
    def _judge(self, t: TenantAlerts, rule: Rule, key: str, out: list[Output], what: str | None = None) -> None:
        record = t.alerts.get(key)
        firing = record is not None and record.status == "firing"
        check = self._check(t, rule, key, firing, key.split("/", 1)[1] if what is None else what)
        now = self._now(t)
        if check.active:
            if record is None or record.status != "firing":
                if record is not None and record.notified is not None and now - record.notified < rule.cooldown_s:
                    record.status, record.value = "pending", check.value
                    return
                if record is None:
                    record = t.alerts[key] = AlertRecord(rule.name, "firing")
                record.status, record.since, record.notified, record.value = "firing", now, now, check.value
                record.count += 1
                out.append(self._alert(rule, key, "firing", check))
            else:
                record.value = check.value
                if rule.renotify and record.notified is not None and now - record.notified >= rule.cooldown_s:
                    record.notified = now
                    record.count += 1
                    since = _iso(record.since) if record.since is not None else "?"
                    out.append(self._alert(rule, key, "firing", check, f" (firing since {since})"))
        elif record is not None and record.status != "resolved":
            was_firing = record.status == "firing"
            record.status, record.value = "resolved", check.value
            if was_firing:
                out.append(self._alert(rule, key, "resolved", check))

    def _alert(
        self, rule: Rule, key: str, status: Literal["firing", "resolved"], check: Check, suffix: str = ""
    ) -> Emit:
        summary, told = check.explain()
        summary += suffix
        labels = {**rule.labels, **told}
        value = None if check.value is None else round(check.value, 6)
        data = AlertDecision(
            rule=rule.name,
            dedup_key=key,
            status=status,
            severity=rule.severity,
            summary=summary,
            value=value,
            labels=labels,
        )
        return Emit("decision.alert", data, key)

    def _check(self, t: TenantAlerts, rule: Rule, key: str, firing: bool, what: str) -> Check:
        now = self._now(t)
        if isinstance(rule, ThresholdRule):
            return self._check_threshold(t, rule, key, firing)
        if isinstance(rule, RateOfChangeRule):
            return self._check_change(rule, t.series.get(key), what, now, firing)
        if isinstance(rule, VolatilityRule):
            return self._check_volatility(rule, t.series.get(key), what, now)
        if isinstance(rule, ErrorRateRule):
            return self._check_errors(rule, t.counts.get(key), what, now, firing)
        if isinstance(rule, SessionRule):
            return self._check_session(rule, t.sessions.get(what), what, now)
        if isinstance(rule, NodeOfflineRule):
            return self._check_node(rule, t.nodes.get(what), what, now)
        return self._check_budget(t.budgets.get(key), what, now)

    def _check_threshold(self, t: TenantAlerts, rule: ThresholdRule, key: str, firing: bool) -> Check:
        held = t.values.get(key)
        if held is None:
            return Check(False, None, _said(f"no {rule.field} seen", {}))
        _, value, subject = held
        bound = rule.resolve_at if firing and rule.resolve_at is not None else rule.value
        active = _compare(value, rule.op, bound)

        def explain() -> tuple[str, dict[str, str]]:
            labels = {"subject": subject, "field": rule.field}
            if active:
                return f"{rule.type} {subject}: {rule.field} = {value:g} ({rule.op} {rule.value:g})", labels
            return f"{rule.type} {subject}: {rule.field} = {value:g}, back past {bound:g}", labels

        return Check(active, value, explain)

    def _check_change(
        self, rule: RateOfChangeRule, series: RollingSeries | None, symbol: str, now: float, firing: bool
    ) -> Check:
        labels = {"symbol": symbol}
        last = series.last(now) if series is not None else None
        if series is None or last is None:
            return Check(False, None, _said(f"{symbol}: no prices in the last {_span(rule.window_s)}", labels))
        falling = rule.change_pct < 0
        if rule.reference == "extreme":
            ref = series.high(now) if falling else series.low(now)
        else:
            ref = series.first(now)
        assert ref is not None
        change = (last - ref) / ref * 100 if ref else 0.0
        bound = rule.resolve_pct if firing and rule.resolve_pct is not None else rule.change_pct
        active = change <= bound if falling else change >= bound

        def explain() -> tuple[str, dict[str, str]]:
            verb = "fell" if change < 0 else "rose"
            return f"{symbol} {verb} {abs(change):.2f}% within {_span(rule.window_s)} ({ref:g} -> {last:g})", labels

        return Check(active, change, explain)

    def _check_volatility(self, rule: VolatilityRule, series: RollingSeries | None, symbol: str, now: float) -> Check:
        labels = {"symbol": symbol}
        returns = log_returns(series.closes(now)) if series is not None else []
        if len(returns) < rule.min_returns:
            return Check(False, None, _said(f"{symbol}: {len(returns)} returns, fewer than {rule.min_returns}", labels))
        every = _span(rule.interval_s)
        if rule.stdev_pct is not None:
            sd = (stdev(returns) or 0.0) * 100
            summary = (
                f"{symbol} volatility {sd:.3f}% per {every} over {_span(rule.window_s)} (level {rule.stdev_pct:g}%)"
            )
            return Check(sd >= rule.stdev_pct, sd, _said(summary, labels))
        assert rule.zscore is not None
        z = zscore(returns)
        summary = f"{symbol} last {every} return at z = {z if z is not None else 0:.2f} (level {rule.zscore:g})"
        return Check(z is not None and abs(z) >= rule.zscore, z, _said(summary, labels))

    def _check_errors(
        self, rule: ErrorRateRule, counts: RollingCounts | None, what: str, now: float, firing: bool
    ) -> Check:
        labels: dict[str, str] = {str(rule.by): what}
        if counts is not None:
            counts.expire(now)
        n = counts.total("n") if counts is not None else 0
        errors = counts.total("err") if counts is not None else 0
        span = _span(rule.window_s)
        # min_requests guards the fire; a firing alert is judged on the calls there are (it resolves
        # on evidence, or once no call is left in the window, not because traffic thinned out).
        if n == 0 or (n < rule.min_requests and not firing):
            return Check(False, None, _said(f"{what}: {n:.0f} calls in {span}, too few to judge", labels))
        share = errors / n
        bound = rule.resolve_below if firing and rule.resolve_below is not None else rule.threshold
        summary = f"{what}: {share:.0%} of {n:.0f} calls failed in {span} (threshold {rule.threshold:.0%})"
        return Check(share >= bound, share, _said(summary, labels))

    def _check_session(self, rule: SessionRule, info: SessionInfo | None, sid: str, now: float) -> Check:
        labels = {"session": sid}
        if info is None:
            return Check(False, None, _said(f"session {sid} completed", labels))
        if info.node:
            labels["node"] = info.node
        if info.project:
            labels["project"] = info.project
        if rule.on == "error":
            active = info.state == "error"
            return Check(active, None, _said(f"session {sid} is {info.state}", labels))
        quiet = now - max(info.state_ts, info.activity_ts)
        active = info.state == "idle" and quiet >= rule.idle_s
        if active:
            return Check(
                True, quiet, _said(f"session {sid} idle for {_span(quiet)} (limit {_span(rule.idle_s)})", labels)
            )
        return Check(False, quiet, _said(f"session {sid} is {info.state}", labels))

    def _check_node(self, rule: NodeOfflineRule, node: NodeInfo | None, node_id: str, now: float) -> Check:
        labels = {"node": node_id}
        if node is None:
            return Check(False, None, _said(f"node {node_id} unknown", labels))
        if node.hostname:
            labels["hostname"] = node.hostname
        silent = now - node.last_ts
        limit = rule.missed_heartbeats * node.interval_s
        if silent > limit:
            return Check(
                True, silent, _said(f"node {node_id} silent for {_span(silent)} (limit {_span(limit)})", labels)
            )
        return Check(False, silent, _said(f"node {node_id} is back (last heartbeat {_span(silent)} ago)", labels))

    def _check_budget(self, info: BudgetInfo | None, what: str, now: float) -> Check:
        if info is None:
            return Check(False, None, _said(f"budget {what}: no crossing on record", {}))
        labels = {"budget": info.budget, "key": info.key, "level": info.level, "period": info.period}
        if now < info.until:
            summary = (
                f"budget {info.budget} ({info.key}) crossed its {info.level} limit ${info.limit:g}: "
                f"${info.spent:.2f} spent this {info.period} from {info.bucket}"
            )
            return Check(True, info.spent, _said(summary, labels))
        return Check(False, info.spent, _said(f"budget {info.budget} ({info.key}): the {info.period} ended", labels))

    # -- timers ----------------------------------------------------------------------------
    def _sweep(self, t: TenantAlerts, out: list[Output]) -> None:
        now = self._now(t)
        if t.next_sweep is not None and now < t.next_sweep:
            return
        interval = self.config.sweep_interval_s
        t.next_sweep = (math.floor(now / interval) + 1) * interval
        judged: set[str] = set()

        def judge(rule: Rule, key: str) -> None:
            if key not in judged:
                judged.add(key)
                self._judge(t, rule, key, out)

        for session_rule in self._sessions:
            for sid in sorted(t.sessions):
                judge(session_rule, f"{session_rule.name}/{sid}")
        for node_rule in self._nodes:
            for node_id in sorted(t.nodes):
                judge(node_rule, f"{node_rule.name}/{node_id}")
        for key in sorted(t.budgets):
            rule = self.rules.get(key.split("/", 1)[0])
            if rule is not None:
                judge(rule, key)
        for key, record in sorted(t.alerts.items()):
            rule = self.rules.get(record.rule)
            if rule is not None and record.status != "resolved":
                judge(rule, key)
        self._prune(t, now)

    def _prune(self, t: TenantAlerts, now: float) -> None:
        """Forget what can no longer matter, so state stays bounded."""
        for key, record in list(t.alerts.items()):
            rule = self.rules.get(record.rule)
            if rule is None or (
                record.status == "resolved" and (record.notified is None or now - record.notified >= rule.cooldown_s)
            ):
                del t.alerts[key]
        for key in [k for k, s in t.series.items() if s.empty(now) and k not in t.alerts]:
            del t.series[key]
            t.checked.pop(key, None)
        for key, counts in list(t.counts.items()):
            counts.expire(now)
            if not counts.totals and key not in t.alerts:
                del t.counts[key]
        for key in [k for k, b in t.budgets.items() if now >= b.until and k not in t.alerts]:
            del t.budgets[key]


def _matches(name: str, pattern: str) -> bool:
    """``fnmatch`` globs, with the common cases (everything, a plain name) skipping it."""
    if pattern == "*":
        return True
    if not any(c in pattern for c in "*?["):
        return name == pattern
    return fnmatchcase(name, pattern)


def _compare(value: float, op: str, bound: float) -> bool:
    if op == ">":
        return value > bound
    if op == ">=":
        return value >= bound
    if op == "<":
        return value < bound
    return value <= bound


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f}m"
    return f"{seconds:.0f}s"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
