"""``Scaler``: desired replicas per workload from market, session, LLM and backlog signals.

Inputs: what the workloads' signals and rules read (``inputs`` is computed).
State is global, under one constant partition key: a workload's desired
replicas combine signals from several streams and tenants (BTC's volatility
from MARKET, active sessions from SESSIONS, a queue's backlog), so they must
all meet in one state; the fold per event is a few dictionary updates, so one
replica keeps up (see ``benchmarks/decisions.py``).

Per event: the clock moves to its time (an input older than the clock by more
than ``allowed_lateness_s`` is rejected as ``late``); the event updates the
signals that read it; a floor rule whose condition just turned on gets its
workload judged at once; every ``evaluation_interval_s`` every workload is
judged, like the HPA's sync loop:

1. each signal with data proposes ``ceil(metric / target_per_replica)``, or
   the current count while ``|ratio - 1| <= tolerance``; the highest wins.
   No signal with fresh data: hold the current count (the HPA does the same
   on missing metrics); a workload with floor rules only starts from
   ``min_replicas``;
2. active floor rules raise it to their ``min_replicas``; then it is clamped
   to ``min_replicas..max_replicas``;
3. above the current count: scale up at once (after ``scale_up_cooldown_s``);
   below: scale down to the highest recommendation of the trailing
   ``scale_down_stabilization_s``, and only ``scale_down_cooldown_s`` after
   the last change.

A change emits ``decision.scale`` (subject: the workload) with the current and
desired counts, every signal's metric, and the signal or rule that drove it.
``current`` is the count the processor last decided (``initial_replicas`` at
first): appliers carry decisions out, they do not report back.
"""

from __future__ import annotations

import math
from typing import Any

from processors.base import Emit, Output, Reject
from processors.rolling import RollingCounts, RollingSeries, log_returns, stdev
from processors.scaling.config import (
    BacklogSignal,
    EventRateSignal,
    FloorRule,
    ScalingConfig,
    SessionsSignal,
    VolatilitySignal,
    Workload,
)
from processors.scaling.state import ScalingState, WorkloadState, restore_state, snapshot_state
from schemas import Event
from schemas.envelope import (
    MarketTickEvent,
    NodeBacklogEvent,
    SessionHeartbeatEvent,
    SessionStartedEvent,
    SessionStateEvent,
)
from schemas.payloads.decisions import ScaleDecision

PARTITION = "scaling"


class Scaler:
    """See the module docstring."""

    name = "scaling"

    def __init__(self, config: ScalingConfig | None = None) -> None:
        self.config = config or ScalingConfig()
        wanted: dict[str, None] = {}
        for w in self.config.workloads:
            if w.rules:
                wanted["market.tick"] = None
            for s in w.signals:
                if isinstance(s, VolatilitySignal):
                    wanted["market.tick"] = None
                elif isinstance(s, EventRateSignal):
                    wanted[s.types] = None
                elif isinstance(s, BacklogSignal):
                    wanted["node.backlog"] = None
                else:
                    wanted["session.>"] = None
        self.inputs: tuple[str, ...] = tuple(wanted)
        self._sessions_needed = "session.>" in wanted

    def partition_key(self, event: Event) -> str:
        """One global state: a workload's signals come from several streams and tenants."""
        return PARTITION

    def initial_state(self) -> ScalingState:
        state = ScalingState()
        for w in self.config.workloads:
            state.workloads[w.name] = WorkloadState(current=w.start)
        return state

    def snapshot(self, state: ScalingState) -> dict[str, Any]:
        return snapshot_state(state)

    def restore(self, snapshot: dict[str, Any]) -> ScalingState:
        state = restore_state(snapshot)
        for w in self.config.workloads:  # a workload added to the config since the checkpoint
            state.workloads.setdefault(w.name, WorkloadState(current=w.start))
        return state

    # -- the fold ------------------------------------------------------------------------
    def handle(self, state: ScalingState, event: Event) -> list[Output]:
        ts = event.time.timestamp()
        if state.clock is not None and ts < state.clock - self.config.allowed_lateness_s:
            state.late += 1
            return [
                Reject(
                    "late",
                    f"{event.type} at {event.time.isoformat()} is {state.clock - ts:.0f}s behind the scaling clock "
                    f"(allowed lateness {self.config.allowed_lateness_s:.0f}s)",
                )
            ]
        if state.clock is None or ts > state.clock:
            state.clock = ts
        now = state.clock
        urgent: list[Workload] = []
        if self._sessions_needed:
            self._track_session(state, event, ts)
        for w in self.config.workloads:
            if w.tenant not in ("*", event.tenant):
                continue
            ws = state.workloads[w.name]
            if self._observe(w, ws, event, ts, now):
                urgent.append(w)
        interval = self.config.evaluation_interval_s
        if interval == 0 or state.next_eval is None or now >= state.next_eval:
            state.next_eval = now if interval == 0 else (math.floor(now / interval) + 1) * interval
            urgent = list(self.config.workloads)
        out: list[Output] = []
        for w in urgent:
            decision = self._judge(w, state.workloads[w.name], state, now)
            if decision is not None:
                out.append(Emit("decision.scale", decision, w.name))
        return out

    def _track_session(self, state: ScalingState, event: Event, ts: float) -> None:
        if isinstance(event, SessionStartedEvent):
            key = f"{event.tenant}/{event.data.session_id}"
            held = state.sessions.get(key)
            if held is None:
                state.sessions[key] = ["running", ts, event.data.agent, event.data.project, event.tenant]
            else:
                held[2], held[3] = event.data.agent, event.data.project
        elif isinstance(event, SessionStateEvent | SessionHeartbeatEvent) and event.data.state is not None:
            key = f"{event.tenant}/{event.data.session_id}"
            held = state.sessions.get(key)
            if held is None:
                held = state.sessions[key] = ["running", ts, None, None, event.tenant]
            if ts >= held[1]:
                held[0], held[1] = event.data.state, ts
            if held[0] == "completed":
                del state.sessions[key]

    def _observe(self, w: Workload, ws: WorkloadState, event: Event, ts: float, now: float) -> bool:
        """Feed ``event`` to ``w``'s signals and rules; True if a floor rule just turned on."""
        turned_on = False
        if isinstance(event, MarketTickEvent):
            symbol, price = event.data.symbol, event.data.price
            for s in w.signals:
                if isinstance(s, VolatilitySignal) and s.symbol == symbol:
                    self._series(ws, s.label(), s.window_s, _intervals(s)).add(ts, price, now)
            for rule in w.rules:
                if rule.symbol == symbol:
                    self._series(ws, rule.name, rule.window_s, rule.buckets).add(ts, price, now)
                    was = ws.floors.get(rule.name, [None, False])[1]
                    if self._floor(ws, rule, now) and not was:
                        turned_on = True
        elif isinstance(event, NodeBacklogEvent):
            for s in w.signals:
                if isinstance(s, BacklogSignal) and s.queue == event.data.queue:
                    held = ws.backlog.get(s.label())
                    if held is None or ts >= held[0]:
                        ws.backlog[s.label()] = [ts, event.data.pending, event.data.in_flight]
        for s in w.signals:
            if isinstance(s, EventRateSignal) and _type_matches(s.types, event.type):
                counts = ws.rates.get(s.label())
                if counts is None:
                    counts = ws.rates[s.label()] = RollingCounts(s.window_s, 60)
                counts.add(ts, {"n": 1}, now)
        return turned_on

    def _series(self, ws: WorkloadState, label: str, window_s: float, buckets: int) -> RollingSeries:
        series = ws.series.get(label)
        if series is None or series.size_s != window_s or series.buckets != buckets:
            series = ws.series[label] = RollingSeries(window_s, buckets)
        return series

    def _floor(self, ws: WorkloadState, rule: FloorRule, now: float) -> bool:
        """Is ``rule``'s floor in force at ``now``? Records when its condition last held."""
        series = ws.series.get(rule.name)
        held = ws.floors.setdefault(rule.name, [None, False])
        change = _change(series, rule, now) if series is not None else None
        if change is not None and (change <= rule.change_pct if rule.change_pct < 0 else change >= rule.change_pct):
            held[0] = now
        on = held[0] is not None and now - held[0] <= rule.hold_s
        held[1] = on
        return on

    # -- judging ---------------------------------------------------------------------------
    def _metric(self, signal: Any, ws: WorkloadState, state: ScalingState, w: Workload, now: float) -> float | None:
        label = signal.label()
        if isinstance(signal, VolatilitySignal):
            series = ws.series.get(label)
            returns = log_returns(series.closes(now)) if series is not None else []
            if len(returns) < signal.min_returns:
                return None
            return (stdev(returns) or 0.0) * 100
        if isinstance(signal, EventRateSignal):
            counts = ws.rates.get(label)
            if counts is None:
                return None
            counts.expire(now)
            return counts.total("n") / signal.window_s
        if isinstance(signal, BacklogSignal):
            held = ws.backlog.get(label)
            if held is None or now - held[0] > signal.stale_s:
                return None
            return float(held[1] + (held[2] if signal.include_in_flight else 0))
        assert isinstance(signal, SessionsSignal)
        return float(
            sum(
                1
                for state_, _, agent, project, tenant in state.sessions.values()
                if state_ in signal.states
                and (signal.agent is None or agent == signal.agent)
                and (signal.project is None or project == signal.project)
                and w.tenant in ("*", tenant)
            )
        )

    def _judge(self, w: Workload, ws: WorkloadState, state: ScalingState, now: float) -> ScaleDecision | None:
        current = ws.current
        signals: dict[str, float] = {}
        # With signals but no data, hold (as the HPA does on missing metrics); a workload scaled by
        # floor rules alone rests at min_replicas when no floor is in force.
        if w.signals:
            rec, driver, why = current, "hold", "no signal has fresh data: holding"
        else:
            rec, driver, why = w.min_replicas, "min_replicas", f"no floor in force: min_replicas {w.min_replicas}"
        best: tuple[int, str, str] | None = None
        for s in w.signals:
            metric = self._metric(s, ws, state, w, now)
            if metric is None:
                continue
            label = s.label()
            signals[label] = round(metric, 6)
            ratio = (metric / current) / s.target_per_replica if current > 0 else math.inf
            if current > 0 and abs(ratio - 1) <= w.tolerance:
                proposal = current
            else:
                proposal = max(0, math.ceil(metric / s.target_per_replica - 1e-9))
            text = f"{label} = {metric:.4g} at {s.target_per_replica:g} per replica -> {proposal}"
            if best is None or proposal > best[0]:
                best = (proposal, label, text)
        if best is not None:
            rec, driver, why = best
        for rule in w.rules:
            if self._floor(ws, rule, now) and rule.min_replicas > rec:
                change = _change(ws.series.get(rule.name), rule, now)
                moved = f"{change:+.2f}%" if change is not None else "moved"
                rec, driver = rule.min_replicas, rule.name
                why = f"{rule.symbol} {moved} within {rule.window_s:.0f}s: at least {rule.min_replicas}"
        if rec < w.min_replicas:
            rec, why = w.min_replicas, f"{why}; raised to min_replicas {w.min_replicas}"
        if rec > w.max_replicas:
            rec, why = w.max_replicas, f"{why}; capped at max_replicas {w.max_replicas}"
        ws.remember(now, rec, w.scale_down_stabilization_s)
        if rec > current:
            if ws.last_up is not None and now - ws.last_up < w.scale_up_cooldown_s:
                return None
            desired = rec
        elif rec < current:
            stable = ws.stabilized()
            if stable >= current or (ws.last_change is not None and now - ws.last_change < w.scale_down_cooldown_s):
                return None
            desired = stable
            if stable != rec:
                why = f"{why}; held at {stable} (highest in the last {w.scale_down_stabilization_s:.0f}s)"
        else:
            return None
        ws.current, ws.last_change = desired, now
        if desired > current:
            ws.last_up = now
        ws.decisions += 1
        return ScaleDecision(
            workload=w.name, current=current, desired=desired, rule=driver, signals=signals, reason=why
        )


def _change(series: RollingSeries | None, rule: FloorRule, now: float) -> float | None:
    """Percent move of the latest price from the window's high (falls) or low (rises)."""
    if series is None:
        return None
    last = series.last(now)
    ref = series.high(now) if rule.change_pct < 0 else series.low(now)
    if last is None or not ref:
        return None
    return (last - ref) / ref * 100


def _intervals(signal: VolatilitySignal) -> int:
    return max(2, round(signal.window_s / signal.interval_s))


def _type_matches(pattern: str, type_name: str) -> bool:
    """Type-space match: ``*`` one token, ``>`` the rest (``session.>``, ``*.tick``)."""
    want, have = pattern.split("."), type_name.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)
