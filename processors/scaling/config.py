"""Workloads and how they scale (``[scaling]`` in the processors config file).

Each workload has replica bounds, target-tracking ``signals`` (the most
replicas any signal asks for wins, as in the Kubernetes HPA) and ``rules``
that set a floor while a market condition holds. An example (TOML)::

    [[scaling.workloads]]
    name = "market-agents"
    min_replicas = 2
    max_replicas = 40

    [[scaling.workloads.signals]]
    kind = "volatility"              # one replica per 0.1% of BTC's per-minute volatility
    symbol = "BTC-USD"
    target_per_replica = 0.1

    [[scaling.workloads.signals]]
    kind = "backlog"                 # and one per 100 pending items (node.backlog)
    queue = "market-agents"
    target_per_replica = 100

    [[scaling.workloads.rules]]      # if BTC drops 5% in an hour, at least 10
    name = "btc-crash"
    symbol = "BTC-USD"
    change_pct = -5
    window_s = 3600
    min_replicas = 10

Every signal is an AverageValue target: ``desired = ceil(current * ratio)``
with ``ratio = (metric / current) / target_per_replica``, which is
``ceil(metric / target_per_replica)``, left unchanged while ``ratio`` is
within ``tolerance`` of 1.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.payloads.sessions import SessionStatus

_DAY_S = 86_400.0
NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Signal(_Config):
    name: str | None = Field(default=None, pattern=NAME, description="Label in decisions (default: derived).")
    target_per_replica: float = Field(gt=0, description="How much of the metric one replica handles.")


class VolatilitySignal(_Signal):
    """Standard deviation (%) of a symbol's log returns per interval, over a window."""

    kind: Literal["volatility"]
    symbol: str = Field(min_length=1, description="Symbol, e.g. 'BTC-USD'.")
    window_s: float = Field(default=3600.0, gt=0, le=_DAY_S, description="Window of returns (event time).")
    interval_s: float = Field(default=60.0, gt=0, le=_DAY_S, description="Return interval.")
    min_returns: int = Field(default=10, ge=2, le=10_000, description="Returns needed before it counts.")

    @model_validator(mode="after")
    def _fits(self) -> Self:
        intervals = self.window_s / self.interval_s
        if intervals < self.min_returns + 1 or intervals > 10_000:
            raise ValueError(
                f"window_s / interval_s = {intervals:g} intervals: need between min_returns + 1 "
                f"({self.min_returns + 1}) and 10000"
            )
        return self

    def label(self) -> str:
        return self.name or f"volatility:{self.symbol}"


class EventRateSignal(_Signal):
    """Events per second of some types (a type-space pattern such as 'session.>')."""

    kind: Literal["event_rate"]
    types: str = Field(min_length=1, description="Type pattern: 'llm.call', 'market.>', 'session.*'.")
    window_s: float = Field(default=60.0, gt=0, le=_DAY_S, description="Rate window (event time).")

    def label(self) -> str:
        return self.name or f"rate:{self.types}"


class BacklogSignal(_Signal):
    """Pending work of a queue or consumer group, from ``node.backlog`` events."""

    kind: Literal["backlog"]
    queue: str = Field(min_length=1, description="The node.backlog queue (consumer group or work queue).")
    include_in_flight: bool = Field(default=True, description="Count delivered-but-unacked items as pending.")
    stale_s: float = Field(
        default=300.0, gt=0, le=_DAY_S, description="Ignore a backlog report older than this (event time)."
    )

    def label(self) -> str:
        return self.name or f"backlog:{self.queue}"


class SessionsSignal(_Signal):
    """Agent sessions in some states (from ``session.*``), optionally of one agent kind or project."""

    kind: Literal["sessions"]
    states: tuple[SessionStatus, ...] = Field(
        default=("running", "idle", "compacted"), min_length=1, description="States that count as active."
    )
    agent: str | None = Field(default=None, description="Only sessions of this agent kind.")
    project: str | None = Field(default=None, description="Only sessions of this project.")

    def label(self) -> str:
        return self.name or "sessions"


Signal = Annotated[
    VolatilitySignal | EventRateSignal | BacklogSignal | SessionsSignal,
    Field(discriminator="kind"),
]


class FloorRule(_Config):
    """At least ``min_replicas`` while a symbol has moved ``change_pct`` within ``window_s``."""

    name: str = Field(pattern=NAME, description="Named in the decisions it drives.")
    symbol: str = Field(min_length=1, description="Symbol, e.g. 'BTC-USD'.")
    change_pct: float = Field(description="Negative: a fall from the window's high; positive: a rise from its low.")
    window_s: float = Field(default=3600.0, gt=0, le=_DAY_S, description="Look-back window (event time).")
    buckets: int = Field(default=60, ge=1, le=10_000, description="Window resolution.")
    min_replicas: int = Field(ge=1, le=100_000, description="The floor while the condition holds.")
    hold_s: float = Field(
        default=0.0, ge=0, le=_DAY_S, description="Keep the floor this long after the condition stops holding."
    )

    @model_validator(mode="after")
    def _nonzero(self) -> Self:
        if self.change_pct == 0:
            raise ValueError("change_pct must not be 0: negative for falls, positive for rises")
        return self


class Workload(_Config):
    """One scalable workload."""

    name: str = Field(pattern=NAME, description="Workload name, e.g. 'market-agents' (the decision subject).")
    min_replicas: int = Field(default=1, ge=0, le=100_000)
    max_replicas: int = Field(default=10, ge=1, le=100_000)
    initial_replicas: int | None = Field(default=None, ge=0, description="Replicas assumed at start (default: min).")
    tenant: str = Field(default="*", description="Only signals from this tenant ('*': all).")
    tolerance: float = Field(default=0.1, ge=0, lt=1, description="No change while |ratio - 1| <= tolerance.")
    scale_down_stabilization_s: float = Field(
        default=300.0,
        ge=0,
        le=_DAY_S,
        description="Scale down only to the highest recommendation of this trailing window (scale-up is immediate).",
    )
    scale_up_cooldown_s: float = Field(default=0.0, ge=0, le=_DAY_S, description="Least time between two scale-ups.")
    scale_down_cooldown_s: float = Field(
        default=60.0, ge=0, le=_DAY_S, description="Least time after any change before a scale-down."
    )
    signals: tuple[Signal, ...] = Field(default=(), description="Target-tracking signals.")
    rules: tuple[FloorRule, ...] = Field(default=(), description="Floors while a market condition holds.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}")
        start = self.initial_replicas
        if start is not None and not self.min_replicas <= start <= self.max_replicas:
            raise ValueError(f"initial_replicas {start} is outside {self.min_replicas}..{self.max_replicas}")
        if not self.signals and not self.rules:
            raise ValueError(f"workload {self.name!r} has neither signals nor rules")
        for rule in self.rules:
            if rule.min_replicas > self.max_replicas:
                raise ValueError(
                    f"rule {rule.name!r} asks for {rule.min_replicas} replicas, above max_replicas {self.max_replicas}"
                )
        labels = [s.label() for s in self.signals] + [r.name for r in self.rules]
        doubled = sorted({label for label in labels if labels.count(label) > 1})
        if doubled:
            raise ValueError(f"signal/rule names must be unique in a workload: {', '.join(doubled)} (set `name`)")
        return self

    @property
    def start(self) -> int:
        return self.initial_replicas if self.initial_replicas is not None else self.min_replicas


class ScalingConfig(_Config):
    """The workloads and how often they are judged."""

    workloads: tuple[Workload, ...] = Field(default=(), description="Workloads to scale.")
    evaluation_interval_s: float = Field(
        default=15.0,
        ge=0,
        le=_DAY_S,
        description="Judge every workload at most this often (event time), like the HPA's sync period; "
        "a floor rule turning on is acted on at once. 0: on every event.",
    )
    allowed_lateness_s: float = Field(
        default=300.0, ge=0, le=_DAY_S, description="Events older than the clock by more are late."
    )

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [w.name for w in self.workloads]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"workload names must be unique: {', '.join(doubled)}")
        return self
