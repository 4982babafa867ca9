"""The routing processor's state: per tenant, its deployments (health, breaker) and tables.

Health is a ``RollingCounts`` per deployment with these counters:
``n`` calls, ``ok``, ``e:<error class>``, ``lat:<bin>`` and ``ttft:<bin>``
(log-scale histograms, bins 10% wide, for p50/p95), ``cost`` and ``tok``
(USD and tokens of the calls that carried a cost). The breaker keeps its own
``RollingCounts`` (``n``, ``hard``, ``rl``) that restarts at every breaker
transition, so failures from before a recovery never re-trip it.

Times are epoch seconds of event time. ``snapshot_state``/``restore_state``
round-trip exactly (JSON-ready).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from processors.rolling import RollingCounts, percentile_from_histogram
from schemas.payloads.config import ProviderConfig

BreakerState = Literal["closed", "open", "half_open"]
Source = Literal["config", "event", "discovered"]
HIST_RATIO = 1.1  # latency histogram bins are 10% wide


@dataclass(slots=True)
class Breaker:
    """A deployment's circuit breaker (event time)."""

    state: BreakerState = "closed"
    since: float | None = None  # event time of the last transition
    open_until: float | None = None
    trips: int = 0  # opens since it was last closed (the cooldown doubles with each)
    successes: int = 0  # successful probes while half-open
    reason: str = ""

    def dump(self) -> list[Any]:
        return [self.state, self.since, self.open_until, self.trips, self.successes, self.reason]

    @classmethod
    def load(cls, doc: list[Any]) -> Breaker:
        return cls(doc[0], doc[1], doc[2], doc[3], doc[4], doc[5])


@dataclass(slots=True)
class Deployment:
    """One deployment: its reference data, health window, breaker and current 429 factor."""

    spec: ProviderConfig
    source: Source
    health: RollingCounts
    probe: RollingCounts  # the breaker's counts since its last transition
    breaker: Breaker = field(default_factory=Breaker)
    rl_factor: float = 1.0

    @property
    def name(self) -> str:
        return self.spec.deployment

    def stats(self, now: float | None) -> dict[str, Any]:
        """Health figures over the window at ``now`` (for tables, ``spine routes`` and ranking)."""
        if now is not None:
            self.health.expire(now)
        totals = self.health.totals
        n = int(totals.get("n", 0))
        errors = {k[2:]: int(v) for k, v in sorted(totals.items()) if k.startswith("e:") and v}
        lat = {int(k[4:]): v for k, v in totals.items() if k.startswith("lat:")}
        ttft = {int(k[5:]): v for k, v in totals.items() if k.startswith("ttft:")}
        tokens = totals.get("tok", 0)
        return {
            "requests": n,
            "errors": errors,
            "error_rate": round(sum(errors.values()) / n, 4) if n else 0.0,
            "p50_ms": _round(percentile_from_histogram(lat, 0.5, HIST_RATIO)),
            "p95_ms": _round(percentile_from_histogram(lat, 0.95, HIST_RATIO)),
            "ttft_p50_ms": _round(percentile_from_histogram(ttft, 0.5, HIST_RATIO)),
            "cost_per_1k": round(totals.get("cost", 0) / tokens * 1000, 6) if tokens > 0 else None,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass(slots=True)
class Table:
    """The last routing table emitted for a model group."""

    version: int
    strategy: str
    candidates: list[dict[str, Any]]  # RouteCandidate documents, JSON-ready
    order: list[str]  # the ranking (all members, before open ones move to the end)
    reason: str
    at: float  # event time it was emitted

    @property
    def key(self) -> list[Any]:
        """What routing depends on: a new version only when this changes."""
        return [self.strategy] + [
            [c["deployment"], c["weight"], c["breaker"], c.get("open_until")] for c in self.candidates
        ]

    def dump(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "strategy": self.strategy,
            "candidates": self.candidates,
            "order": self.order,
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def load(cls, doc: dict[str, Any]) -> Table:
        return cls(doc["version"], doc["strategy"], doc["candidates"], doc["order"], doc["reason"], doc["at"])


@dataclass(slots=True)
class TenantRouting:
    """One tenant's deployments and tables."""

    clock: float | None = None
    deployments: dict[str, Deployment] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    next_due: float | None = None  # earliest open_until of an open breaker
    next_rank: dict[str, float] = field(default_factory=dict)  # group -> next re-ranking time
    calls: int = 0
    late: int = 0
    unknown: int = 0  # calls for deployments neither configured nor discovered
    by_model: dict[tuple[str, str], str] = field(default_factory=dict)  # derived index, not dumped

    def reindex(self) -> None:
        self.by_model = {}
        for name in sorted(self.deployments):
            spec = self.deployments[name].spec
            self.by_model.setdefault((spec.provider, spec.model), name)

    def members(self, group: str) -> list[Deployment]:
        return [d for _, d in sorted(self.deployments.items()) if d.spec.model_group == group]


@dataclass(slots=True)
class RoutingState:
    """All tenants of a partition."""

    tenants: dict[str, TenantRouting] = field(default_factory=dict)


def snapshot_state(state: RoutingState) -> dict[str, Any]:
    tenants: dict[str, Any] = {}
    for tenant, t in sorted(state.tenants.items()):
        tenants[tenant] = {
            "clock": t.clock,
            "deployments": {
                name: {
                    "spec": d.spec.model_dump(mode="json"),
                    "source": d.source,
                    "health": _dump_window(d.health),
                    "probe": _dump_window(d.probe),
                    "breaker": d.breaker.dump(),
                    "rl_factor": d.rl_factor,
                }
                for name, d in sorted(t.deployments.items())
            },
            "tables": {group: table.dump() for group, table in sorted(t.tables.items())},
            "next_due": t.next_due,
            "next_rank": dict(sorted(t.next_rank.items())),
            "calls": t.calls,
            "late": t.late,
            "unknown": t.unknown,
        }
    return {"v": 1, "tenants": tenants}


def restore_state(doc: dict[str, Any]) -> RoutingState:
    state = RoutingState()
    for tenant, t in doc["tenants"].items():
        deployments = {
            name: Deployment(
                spec=ProviderConfig.model_validate(d["spec"]),
                source=d["source"],
                health=_load_window(d["health"]),
                probe=_load_window(d["probe"]),
                breaker=Breaker.load(d["breaker"]),
                rl_factor=d["rl_factor"],
            )
            for name, d in t["deployments"].items()
        }
        routing = TenantRouting(
            clock=t["clock"],
            deployments=deployments,
            tables={group: Table.load(table) for group, table in t["tables"].items()},
            next_due=t["next_due"],
            next_rank=dict(t["next_rank"]),
            calls=t["calls"],
            late=t["late"],
            unknown=t["unknown"],
        )
        routing.reindex()
        state.tenants[tenant] = routing
    return state


def _dump_window(window: RollingCounts) -> list[Any]:
    return [window.size_s, window.buckets, *window.dump()]


def _load_window(doc: list[Any]) -> RollingCounts:
    return RollingCounts.load(doc[0], doc[1], doc[2:])
