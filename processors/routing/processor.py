"""``Router``: deployment health, circuit breakers and routing tables from ``llm.call``.

Inputs ``llm.call`` and ``config.provider``; state partitioned by tenant, so
every deployment of a model group (and the clock that cools breakers down)
lives in one place. Per event, in this order:

1. the tenant's clock moves to the event time (never back); an ``llm.call``
   older than the clock by more than ``allowed_lateness_s`` is rejected as
   ``late`` (dead-lettered, never folded silently);
2. open breakers whose cooldown ended by the clock turn half-open;
3. a ``config.provider`` adds, changes or (``enabled=false``) removes a
   deployment; an ``llm.call`` is counted in its deployment's health window
   (discovering the deployment if ``discover`` is on) and drives its breaker:

   - closed -> open after ``failures`` hard failures in the window, or an
     error rate above ``error_rate`` over at least ``min_requests`` calls;
   - open -> half-open once the clock passes ``open_until`` (cooldown,
     doubled on every failed probe up to ``max_cooldown_s``);
   - half-open -> closed after ``half_open_successes`` successes, -> open
     again on a failure (429s count as failures here);

   a group with a single deployment is cooled down like any other (the table
   then offers nothing until the probe time; ``streams.routes`` sends one
   probe at ``open_until``). 429s lower a deployment's weight first
   (``rate_limit``), in steps;
4. every group whose table may have changed is rebuilt; ``decision.route``
   is emitted with the next version only if the candidates, their order,
   weights or breaker states changed (``why`` texts alone never re-emit).

Calls that started before the breaker's last transition (out of order, or in
flight while it opened) count in health but not for the breaker.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from processors.base import Emit, Output, Reject
from processors.rolling import RollingCounts, log_bin
from processors.routing.config import RoutingConfig
from processors.routing.state import (
    HIST_RATIO,
    BreakerState,
    Deployment,
    RoutingState,
    Source,
    Table,
    TenantRouting,
    restore_state,
    snapshot_state,
)
from schemas import Event
from schemas.envelope import LlmCallEvent, ProviderConfigEvent
from schemas.payloads.config import ProviderConfig
from schemas.payloads.decisions import RouteCandidate, RouteDecision
from schemas.payloads.llm import LlmCall

_RANKED = ("cheapest", "lowest_latency")


class Router:
    """See the module docstring."""

    name = "routing"
    inputs: tuple[str, ...] = ("llm.call", "config.provider")

    def __init__(self, config: RoutingConfig | None = None) -> None:
        self.config = config or RoutingConfig()
        self._trip_on = frozenset(self.config.breaker.trip_on)

    def partition_key(self, event: Event) -> str:
        """Per tenant: a model group's deployments, and the clock that cools them down, share one state."""
        return event.tenant

    def initial_state(self) -> RoutingState:
        return RoutingState()

    def snapshot(self, state: RoutingState) -> dict[str, Any]:
        return snapshot_state(state)

    def restore(self, snapshot: dict[str, Any]) -> RoutingState:
        return restore_state(snapshot)

    # -- the fold ------------------------------------------------------------------------
    def handle(self, state: RoutingState, event: Event) -> list[Output]:
        if not isinstance(event, LlmCallEvent | ProviderConfigEvent):
            return []
        changed: dict[str, list[str]] = {}
        t = state.tenants.get(event.tenant)
        if t is None:
            t = state.tenants[event.tenant] = self._new_tenant(changed)
        ts = event.time.timestamp()
        if isinstance(event, LlmCallEvent) and t.clock is not None and ts < t.clock - self.config.allowed_lateness_s:
            t.late += 1
            return [
                Reject(
                    "late",
                    f"llm.call at {event.time.isoformat()} is {t.clock - ts:.0f}s behind the tenant's newest event "
                    f"(allowed lateness {self.config.allowed_lateness_s:.0f}s)",
                )
            ]
        if t.clock is None or ts > t.clock:
            t.clock = ts
        self._wake(t, changed)
        if isinstance(event, ProviderConfigEvent):
            self._configure(t, event.data, "event", changed)
        else:
            self._call(t, event.data, ts, changed)
        return self._rebuild(t, changed)

    def _new_tenant(self, changed: dict[str, list[str]]) -> TenantRouting:
        """A tenant seen for the first time starts with the configured deployments (and their tables)."""
        t = TenantRouting()
        for spec in self.config.deployments:
            if spec.enabled:
                t.deployments[spec.deployment] = self._deployment(spec, "config")
                changed.setdefault(spec.model_group, []).append(f"{spec.deployment} configured")
        t.reindex()
        return t

    def _deployment(self, spec: ProviderConfig, source: Source) -> Deployment:
        cfg = self.config
        return Deployment(
            spec=spec,
            source=source,
            health=RollingCounts(cfg.window_s, cfg.buckets),
            probe=RollingCounts(cfg.window_s, cfg.buckets),
        )

    def _wake(self, t: TenantRouting, changed: dict[str, list[str]]) -> None:
        """Open breakers whose cooldown is over turn half-open (at their open_until)."""
        if t.next_due is None or t.clock is None or t.clock < t.next_due:
            return
        for name, d in sorted(t.deployments.items()):
            b = d.breaker
            if b.state == "open" and b.open_until is not None and b.open_until <= t.clock:
                cooled = b.open_until - (b.since or b.open_until)
                self._transition(d, "half_open", b.open_until, f"cooldown of {cooled:.0f}s over: probing")
                changed.setdefault(d.spec.model_group, []).append(f"{name} half-open after {cooled:.0f}s")
        self._schedule(t)

    def _schedule(self, t: TenantRouting) -> None:
        due = [d.breaker.open_until for d in t.deployments.values() if d.breaker.state == "open"]
        t.next_due = min((u for u in due if u is not None), default=None)

    def _configure(self, t: TenantRouting, spec: ProviderConfig, source: Source, changed: dict[str, list[str]]) -> None:
        name = spec.deployment
        old = t.deployments.get(name)
        if not spec.enabled:
            if old is not None:
                del t.deployments[name]
                changed.setdefault(old.spec.model_group, []).append(f"{name} removed (disabled)")
                t.reindex()
                self._schedule(t)
            return
        if old is None:
            t.deployments[name] = self._deployment(spec, source)
            changed.setdefault(spec.model_group, []).append(f"{name} added")
        elif old.spec != spec:
            if old.spec.model_group != spec.model_group:
                changed.setdefault(old.spec.model_group, []).append(f"{name} moved to {spec.model_group}")
            old.spec, old.source = spec, source
            changed.setdefault(spec.model_group, []).append(f"{name} reconfigured")
        else:
            return
        t.reindex()

    def _find(self, t: TenantRouting, call: LlmCall, changed: dict[str, list[str]]) -> Deployment | None:
        if call.deployment is not None:
            found = t.deployments.get(call.deployment)
        else:
            key = t.by_model.get((call.provider, call.model))
            found = t.deployments.get(key) if key is not None else None
        if found is not None or not self.config.discover:
            return found
        name = call.deployment or f"{call.provider}/{call.model}"
        group = call.model_group or call.model
        spec = ProviderConfig(deployment=name, model_group=group, provider=call.provider, model=call.model)
        self._configure(t, spec, "discovered", changed)
        changed[group][-1] = f"{name} discovered"
        return t.deployments[name]

    def _call(self, t: TenantRouting, call: LlmCall, ts: float, changed: dict[str, list[str]]) -> None:
        t.calls += 1
        d = self._find(t, call, changed)
        if d is None:
            t.unknown += 1
            return
        assert t.clock is not None
        now = t.clock
        cfg = self.config
        if d.health.size_s != cfg.window_s or d.health.buckets != cfg.buckets:  # window changed since the checkpoint
            d.health = RollingCounts(cfg.window_s, cfg.buckets)
            d.probe = RollingCounts(cfg.window_s, cfg.buckets)
        failed = call.status == "error"
        error = (call.error_type or "other") if failed else None
        counts: dict[str, float] = {"n": 1}
        if error:
            counts[f"e:{error}"] = 1
        if call.latency_ms is not None:
            counts[f"lat:{log_bin(call.latency_ms, HIST_RATIO)}"] = 1
        if call.ttft_ms is not None:
            counts[f"ttft:{log_bin(call.ttft_ms, HIST_RATIO)}"] = 1
        tokens = call.input_tokens + call.output_tokens
        if call.cost_usd is not None and tokens > 0:
            counts["cost"] = call.cost_usd
            counts["tok"] = tokens
        d.health.add(ts, counts, now)
        group = d.spec.model_group
        if d.breaker.since is None or ts >= d.breaker.since:
            why = self._breaker_step(d, error, ts, now)
            if why:
                changed.setdefault(group, []).append(why)
        factor = self._rl_factor(d, now)
        if factor != d.rl_factor:
            d.rl_factor = factor
            changed.setdefault(group, []).append(self._weight_note(d))
        if cfg.strategy(group) in _RANKED and now >= t.next_rank.get(group, -math.inf):
            changed.setdefault(group, [])

    def _breaker_step(self, d: Deployment, error: str | None, ts: float, now: float) -> str | None:
        """Feed one call to ``d``'s breaker; a description if it changed state."""
        cfg = self.config.breaker
        b = d.breaker
        hard = error is not None and error in self._trip_on
        limited = error == "rate_limit"
        if b.state == "open":
            return None  # in flight when it opened, or a client ignoring the table
        if b.state == "half_open":
            if hard or limited:
                return self._open(d, ts, f"probe failed ({error})")
            if error is None:
                b.successes += 1
                if b.successes >= cfg.half_open_successes:
                    self._transition(d, "closed", ts, f"{b.successes} successful probes")
                    b.trips = 0
                    return f"{d.name} closed after {cfg.half_open_successes} successful probes"
            return None
        d.probe.add(ts, {"n": 1, "hard": 1 if hard else 0, "rl": 1 if limited else 0}, now)
        n, failures, limits = (d.probe.total(k) for k in ("n", "hard", "rl"))
        if failures >= cfg.failures:
            return self._open(d, ts, f"{failures:.0f} failures in {self.config.window_s:.0f}s ({self._classes(d)})")
        if n >= cfg.min_requests and (failures + limits) / n > cfg.error_rate:
            rate = (failures + limits) / n
            return self._open(d, ts, f"error rate {rate:.0%} over {n:.0f} calls ({self._classes(d)})")
        return None

    def _classes(self, d: Deployment) -> str:
        errors = {k[2:]: v for k, v in sorted(d.health.totals.items()) if k.startswith("e:") and v}
        return ", ".join(f"{k} {v:.0f}" for k, v in errors.items()) or "no errors"

    def _open(self, d: Deployment, ts: float, why: str) -> str:
        cfg = self.config.breaker
        d.breaker.trips += 1
        cooldown = min(cfg.cooldown_s * 2 ** (d.breaker.trips - 1), cfg.max_cooldown_s)
        self._transition(d, "open", ts, why)
        d.breaker.open_until = ts + cooldown
        return f"{d.name} opened: {why}; probe after {cooldown:.0f}s"

    def _transition(self, d: Deployment, state: BreakerState, at: float, reason: str) -> None:
        cfg = self.config
        b = d.breaker
        b.state, b.since, b.reason, b.successes = state, at, reason, 0
        b.open_until = None
        d.probe = RollingCounts(cfg.window_s, cfg.buckets)

    def _share(self, d: Deployment, key: str) -> float:
        n = d.health.total("n")
        return d.health.total(key) / n if n else 0.0

    def _rl_factor(self, d: Deployment, now: float) -> float:
        cfg = self.config.rate_limit
        d.health.expire(now)
        if not d.health.totals.get("e:rate_limit"):  # the common case: no 429 in the window
            return 1.0
        if d.health.total("n") < cfg.min_requests:
            return 1.0
        raw = max(cfg.min_weight, 1.0 - cfg.penalty * self._share(d, "e:rate_limit"))
        stepped = math.floor(raw / cfg.step + 1e-9) * cfg.step
        return round(max(cfg.min_weight, stepped), 6)

    # -- tables ----------------------------------------------------------------------------
    def _rebuild(self, t: TenantRouting, changed: dict[str, list[str]]) -> list[Output]:
        assert t.clock is not None
        if changed:
            self._schedule(t)
        out: list[Output] = []
        for group in sorted(changed):
            table = self._table(t, group, "; ".join(changed[group]))
            if table is None:
                continue
            old = t.tables.get(group)
            if old is not None and old.key == table.key:
                old.order = table.order  # a re-rank that changed nothing visible
                continue
            table.version = (old.version if old is not None else 0) + 1
            t.tables[group] = table
            decision = RouteDecision(
                model_group=group,
                version=table.version,
                strategy=self.config.strategy(group),
                candidates=tuple(RouteCandidate.model_validate(c) for c in table.candidates),
                reason=table.reason,
            )
            out.append(Emit("decision.route", decision, group))
        return out

    def _table(self, t: TenantRouting, group: str, reason: str) -> Table | None:
        now = t.clock
        assert now is not None
        members = t.members(group)
        old = t.tables.get(group)
        if not members and old is None:
            return None
        strategy = self.config.strategy(group)
        stats = {d.name: d.stats(now) for d in members}
        notes = [reason] if reason else []
        for d in members:  # the window moved on: 429s may have left it (or entered it) since the last call
            factor = self._rl_factor(d, now)
            if factor != d.rl_factor:
                d.rl_factor = factor
                notes.append(self._weight_note(d))
        reason = "; ".join(notes)
        order = self._rank(t, group, strategy, members, stats, old)
        by_name = {d.name: d for d in members}
        ranked = [by_name[n] for n in order]
        live = [d for d in ranked if d.breaker.state != "open"]
        dead = [d for d in ranked if d.breaker.state == "open"]
        factors = {d.name: self._factor(d) for d in ranked}
        if strategy == "weighted":
            # Deployments at full strength absorb what throttled ones (429s, half-open) give up; when
            # none is, the shares sum to less than 1 and the route client sheds the rest.
            raw = {d.name: d.spec.weight * factors[d.name] for d in ranked}
            spare = any(factors[d.name] >= 1 and d.spec.weight > 0 for d in live)
            total = sum(raw.values()) if spare else sum(d.spec.weight for d in live)
            weights = {n: round(w / total, 4) if total > 0 else 0.0 for n, w in raw.items()}
        else:
            weights = {n: round(f, 4) for n, f in factors.items()}
        candidates = []
        for d in live + dead:
            b = d.breaker
            candidate: dict[str, Any] = {
                "deployment": d.name,
                "provider": d.spec.provider,
                "model": d.spec.model,
                "weight": weights[d.name],
                "breaker": b.state,
                "open_until": _iso(b.open_until) if b.state == "open" and b.open_until is not None else None,
                "why": self._why(d, strategy, stats[d.name]),
            }
            candidates.append(candidate)
        return Table(0, strategy, candidates, order, reason or "re-ranked", now)

    def _weight_note(self, d: Deployment) -> str:
        if d.rl_factor >= 1:
            return f"{d.name} weight back to x1 (429 pressure over)"
        return f"{d.name} weight x{d.rl_factor:g} (429s {self._share(d, 'e:rate_limit'):.0%})"

    def _factor(self, d: Deployment) -> float:
        state = d.breaker.state
        if state == "open":
            return 0.0
        half = self.config.breaker.half_open_weight if state == "half_open" else 1.0
        return d.rl_factor * half

    def _rank(
        self,
        t: TenantRouting,
        group: str,
        strategy: str,
        members: list[Deployment],
        stats: dict[str, dict[str, Any]],
        old: Table | None,
    ) -> list[str]:
        """Member names in preference order (open ones are moved to the end by the caller)."""
        static = sorted(members, key=lambda d: (d.spec.priority, d.name))
        if strategy not in _RANKED:
            return [d.name for d in static]
        now = t.clock
        assert now is not None
        interval = self.config.reorder_interval_s
        previous = old.order if old is not None else []
        if old is not None and now < t.next_rank.get(group, -math.inf):
            kept = [n for n in previous if any(d.name == n for d in members)]
            return kept + [d.name for d in static if d.name not in kept]
        t.next_rank[group] = (math.floor(now / interval) + 1) * interval
        figures = {d.name: self._figure(d, strategy, stats[d.name]) for d in members}
        known = [n for n in previous if n in figures]
        fresh = sorted(
            (d for d in members if d.name not in known),
            key=lambda d: (figures[d.name] is None, figures[d.name] or 0.0, d.spec.priority, d.name),
        )
        order = known + [d.name for d in fresh]
        # Adjacent swaps only when the one behind is better by more than the margin: a deployment
        # overtakes another on a clear difference, never on noise. Each swap removes one such
        # inversion and creates none, so this ends.
        margin = 1 + self.config.switch_margin
        swapped = True
        while swapped:
            swapped = False
            for i in range(len(order) - 1):
                ahead, behind = figures[order[i]], figures[order[i + 1]]
                if behind is not None and (ahead is None or behind * margin < ahead):
                    order[i], order[i + 1] = order[i + 1], order[i]
                    swapped = True
        return order

    def _figure(self, d: Deployment, strategy: str, stats: dict[str, Any]) -> float | None:
        """What a ranked strategy compares: USD per 1k tokens, or p50 latency in ms."""
        enough = stats["requests"] >= self.config.min_samples
        if strategy == "lowest_latency":
            return stats["p50_ms"] if enough else None
        spec = d.spec
        if spec.input_cost_per_1k is not None or spec.output_cost_per_1k is not None:
            return ((spec.input_cost_per_1k or 0.0) + (spec.output_cost_per_1k or 0.0)) / 2
        return stats["cost_per_1k"] if enough else None

    def _why(self, d: Deployment, strategy: str, stats: dict[str, Any]) -> str:
        b = d.breaker
        parts = [b.state.replace("_", "-")]
        if b.state != "closed" and b.reason:
            parts[0] += f" ({b.reason})"
        n = stats["requests"]
        if n:
            parts.append(f"{n} calls, {stats['error_rate']:.0%} errors")
            if stats["p50_ms"] is not None:
                parts.append(f"p50 {stats['p50_ms']:.0f}ms")
        if strategy == "cheapest":
            figure = self._figure(d, strategy, stats)
            if figure is not None:
                parts.append(f"${figure:.4g}/1k tokens")
        if d.rl_factor < 1:
            parts.append(f"429s: weight x{d.rl_factor:g}")
        return "; ".join(parts)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
