"""Alert rules (``[alerting]`` in the processors config file).

Each rule has a ``kind``, a unique ``name`` (the first part of every dedup
key it makes), a ``severity``, ``labels`` copied onto its alerts, and a
``cooldown_s``: the least event time between two notifications of one alert
(a re-fire after a resolve waits for it too; ``renotify`` repeats a still
firing alert every ``cooldown_s``). An example (TOML)::

    [[alerting.rules]]
    kind = "rate_of_change"          # BTC falls 5% within 1 h
    name = "btc-drop-5pct-1h"
    symbol = "BTC-USD"
    window_s = 3600
    change_pct = -5
    severity = "critical"
    labels = { team = "trading" }

    [[alerting.rules]]
    kind = "error_rate"              # a provider's error rate spikes
    name = "provider-errors"
    by = "provider"
    threshold = 0.2

Kinds: ``threshold`` (a numeric field of any event type), ``rate_of_change``
and ``volatility`` (market ticks), ``error_rate`` (LLM calls per provider,
model or deployment), ``session`` (idle too long, or in error), ``node_offline``
and ``budget`` (from the cost processor's ``decision.budget``).
"""

from __future__ import annotations

import types
from typing import Annotated, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas import EVENT_TYPES, payload_class
from schemas.payloads.llm import ErrorClass

Severity = Literal["info", "warning", "critical"]
_DAY_S = 86_400.0
_YEAR_S = 366 * _DAY_S
RULE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Rule(_Config):
    name: str = Field(pattern=RULE_NAME, description="Unique rule name; dedup keys are '<name>/<what>'.")
    severity: Severity = Field(default="warning", description="Severity of this rule's alerts.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels copied onto every alert.")
    cooldown_s: float = Field(
        default=3600.0,
        ge=0,
        le=_YEAR_S,
        description="Least event time between two notifications of one alert (fire, re-fire, repeat).",
    )
    renotify: bool = Field(default=False, description="Repeat a still-firing alert every cooldown_s.")


class ThresholdRule(_Rule):
    """A numeric payload field crosses a value, per event subject."""

    kind: Literal["threshold"]
    type: str = Field(description="Event type whose field is watched, e.g. 'market.tick'.")
    field: str = Field(description="Numeric payload field, e.g. 'price' or 'latency_ms'.")
    subject: str = Field(default="*", description="Subject glob (fnmatch), e.g. 'BTC-*'.")
    op: Literal[">", ">=", "<", "<="] = Field(description="Fires while `field op value` holds.")
    value: float
    resolve_at: float | None = Field(
        default=None,
        description="Resolves once the field is back past this (hysteresis); default: when `op value` stops holding.",
    )

    @model_validator(mode="after")
    def _numeric_field(self) -> Self:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; known: {', '.join(sorted(EVENT_TYPES))}")
        fields = payload_class(self.type).model_fields
        numeric = sorted(n for n, f in fields.items() if _is_number(f.annotation))
        if self.field not in numeric:
            raise ValueError(f"{self.type} has no numeric field {self.field!r}; numeric fields: {', '.join(numeric)}")
        if self.resolve_at is not None:
            rising = self.op in (">", ">=")
            if (rising and self.resolve_at > self.value) or (not rising and self.resolve_at < self.value):
                raise ValueError(f"resolve_at {self.resolve_at} is on the firing side of {self.op} {self.value}")
        return self


class RateOfChangeRule(_Rule):
    """A symbol's price moves by ``change_pct`` within ``window_s`` (e.g. BTC falls 5% within 1 h)."""

    kind: Literal["rate_of_change"]
    symbol: str = Field(default="*", description="Symbol glob, e.g. 'BTC-USD' or '*'.")
    window_s: float = Field(default=3600.0, gt=0, le=_YEAR_S, description="Look-back window (event time).")
    buckets: int = Field(default=60, ge=1, le=10_000, description="Window resolution (buckets per window).")
    change_pct: float = Field(description="Negative: a fall of at least this much; positive: a rise.")
    reference: Literal["extreme", "start"] = Field(
        default="extreme",
        description="Measure from the window's high (falls) or low (rises), or from its first price.",
    )
    resolve_pct: float | None = Field(
        default=None, description="Resolves once the move is back within this (default: change_pct)."
    )

    @model_validator(mode="after")
    def _direction(self) -> Self:
        if self.change_pct == 0:
            raise ValueError("change_pct must not be 0: negative for falls, positive for rises")
        if self.resolve_pct is not None and (self.resolve_pct * self.change_pct < 0):
            raise ValueError(f"resolve_pct {self.resolve_pct} must have the sign of change_pct {self.change_pct}")
        if self.resolve_pct is not None and abs(self.resolve_pct) > abs(self.change_pct):
            raise ValueError(f"resolve_pct {self.resolve_pct} is beyond change_pct {self.change_pct}")
        return self


class VolatilityRule(_Rule):
    """Rolling volatility of a symbol's returns: stdev above a level, or a z-score outlier."""

    kind: Literal["volatility"]
    symbol: str = Field(default="*", description="Symbol glob.")
    window_s: float = Field(default=3600.0, gt=0, le=_YEAR_S, description="Window of returns (event time).")
    interval_s: float = Field(default=60.0, gt=0, le=_DAY_S, description="Return interval (one close per interval).")
    stdev_pct: float | None = Field(default=None, gt=0, description="Fire when the stdev of returns (%) reaches it.")
    zscore: float | None = Field(default=None, gt=0, description="Fire when |z| of the last return reaches it.")
    min_returns: int = Field(default=10, ge=2, le=100_000, description="Returns needed before it judges.")

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        if (self.stdev_pct is None) == (self.zscore is None):
            raise ValueError("set exactly one of stdev_pct and zscore")
        if self.window_s / self.interval_s < self.min_returns + 1:
            raise ValueError(
                f"window_s / interval_s = {self.window_s / self.interval_s:g} intervals cannot hold "
                f"min_returns={self.min_returns} returns"
            )
        if self.window_s / self.interval_s > 10_000:
            raise ValueError(f"window_s / interval_s = {self.window_s / self.interval_s:g}: at most 10000 intervals")
        return self


class ErrorRateRule(_Rule):
    """The share of failed LLM calls per provider, model or deployment over a window."""

    kind: Literal["error_rate"]
    by: Literal["provider", "model", "deployment"] = Field(default="provider", description="What one alert covers.")
    match: str = Field(default="*", description="Glob on the provider / 'provider/model' / deployment.")
    window_s: float = Field(default=300.0, gt=0, le=_DAY_S, description="Window (event time).")
    buckets: int = Field(default=30, ge=1, le=3600, description="Window resolution.")
    min_requests: int = Field(
        default=20,
        ge=1,
        le=10_000_000,
        description="Calls needed in the window to fire (a firing alert is judged "
        "on the calls there are, and resolves when none is left).",
    )
    threshold: float = Field(gt=0, le=1, description="Fire when the error share reaches this.")
    resolve_below: float | None = Field(
        default=None, gt=0, le=1, description="Resolve when the share falls below this (default: threshold)."
    )
    error_types: tuple[ErrorClass, ...] = Field(
        default=("rate_limit", "timeout", "server_error", "auth", "other"),
        min_length=1,
        description="Error classes that count (bad_request is the caller's fault).",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.resolve_below is not None and self.resolve_below > self.threshold:
            raise ValueError(f"resolve_below {self.resolve_below} is above threshold {self.threshold}")
        return self


class SessionRule(_Rule):
    """A session idle too long, or in the error state."""

    kind: Literal["session"]
    on: Literal["idle", "error"] = Field(description="idle: idle for idle_s with no activity; error: in error.")
    idle_s: float = Field(default=600.0, gt=0, le=_YEAR_S, description="How long idle counts (on = idle).")


class NodeOfflineRule(_Rule):
    """A node missed its heartbeats."""

    kind: Literal["node_offline"]
    missed_heartbeats: int = Field(
        default=3, ge=1, le=1000, description="Intervals (each node's own interval_s) of silence before it fires."
    )


class BudgetRule(_Rule):
    """A budget crossed its soft or hard limit (``decision.budget``); resolves when its period ends."""

    kind: Literal["budget"]
    levels: tuple[Literal["soft", "hard"], ...] = Field(
        default=("soft", "hard"), min_length=1, description="Budget levels this rule alerts on."
    )
    budget: str = Field(default="*", description="Budget name glob.")


Rule = Annotated[
    ThresholdRule | RateOfChangeRule | VolatilityRule | ErrorRateRule | SessionRule | NodeOfflineRule | BudgetRule,
    Field(discriminator="kind"),
]


class AlertingConfig(_Config):
    """The alerting processor's rules and clocks."""

    rules: tuple[Rule, ...] = Field(default=(), description="Alert rules, evaluated in order.")
    allowed_lateness_s: float = Field(
        default=300.0, ge=0, le=_DAY_S, description="Events older than the tenant's clock by more are late."
    )
    sweep_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=_DAY_S,
        description="How often (event time) timers are checked: idle sessions, silent nodes, budget periods, "
        "and windows of firing alerts that no new event re-evaluates.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            seen.add(rule.name)
        return self


def _is_number(annotation: object) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_number(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return len(args) == 1 and _is_number(args[0])
    return annotation in (int, float) and annotation is not bool


__all__ = [
    "AlertingConfig",
    "BudgetRule",
    "ErrorRateRule",
    "NodeOfflineRule",
    "RateOfChangeRule",
    "Rule",
    "SessionRule",
    "Severity",
    "ThresholdRule",
    "VolatilityRule",
]
