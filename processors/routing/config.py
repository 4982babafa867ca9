"""The routing processor's knobs (``[routing]`` in the processors config file).

Every field has a default, so ``RoutingConfig()`` is a working router that
discovers deployments from the calls it sees. An example (TOML)::

    [routing]
    window_s = 60                     # health window (sliding, event time)
    default_strategy = "weighted"

    [routing.breaker]
    failures = 5                      # trip after 5 hard failures in the window ...
    error_rate = 0.5                  # ... or more than 50% errors (with at least min_requests)
    cooldown_s = 30                   # open -> half-open after 30 s, doubling per failed probe
    half_open_successes = 3           # half-open -> closed after 3 successes

    [routing.groups.gpt-4o]
    strategy = "cheapest"

    [[routing.deployments]]           # same fields as a config.provider event
    deployment = "openai/gpt-4o@eastus"
    model_group = "gpt-4o"
    provider = "openai"
    model = "gpt-4o"
    input_cost_per_1k = 0.0025
    output_cost_per_1k = 0.01
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.payloads.config import ProviderConfig
from schemas.payloads.llm import ErrorClass

Strategy = Literal["cheapest", "lowest_latency", "weighted", "fallback"]
_DAY_S = 86_400.0


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BreakerConfig(_Config):
    """When a deployment's circuit breaker opens, and how it recovers."""

    failures: int = Field(
        default=5, ge=1, le=100_000, description="Open after this many hard failures (trip_on classes) in the window."
    )
    error_rate: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Open when the share of failed calls (hard failures and 429s) in the window exceeds this, "
        "once the window holds at least min_requests calls.",
    )
    min_requests: int = Field(default=10, ge=1, le=1_000_000, description="Calls needed before error_rate applies.")
    trip_on: tuple[ErrorClass, ...] = Field(
        default=("timeout", "server_error", "auth", "other"),
        description="Error classes that count as hard failures. 429s (rate_limit) lower the weight first and "
        "count only toward error_rate; bad_request is the caller's fault and never counts.",
    )
    cooldown_s: float = Field(
        default=30.0, gt=0, le=_DAY_S, description="Event time an open breaker waits before a half-open probe."
    )
    max_cooldown_s: float = Field(
        default=600.0, gt=0, le=_DAY_S, description="Cap of the cooldown, which doubles on every failed probe."
    )
    half_open_successes: int = Field(
        default=3, ge=1, le=10_000, description="Successful probe calls that close a half-open breaker."
    )
    half_open_weight: float = Field(
        default=0.1, gt=0, le=1, description="Share of its usual traffic a half-open deployment is offered."
    )

    @model_validator(mode="after")
    def _cooldowns(self) -> Self:
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError(f"max_cooldown_s ({self.max_cooldown_s}) is below cooldown_s ({self.cooldown_s})")
        return self


class RateLimitConfig(_Config):
    """How 429 pressure lowers a deployment's weight before its breaker trips."""

    penalty: float = Field(
        default=1.0, ge=0, le=10, description="Weight factor is 1 - penalty * (share of 429s in the window)."
    )
    min_weight: float = Field(default=0.1, gt=0, le=1, description="The factor never goes below this.")
    min_requests: int = Field(default=5, ge=1, le=1_000_000, description="Calls needed before 429s lower the weight.")
    step: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="The factor is rounded down to a multiple of this, so the table changes in steps, "
        "not on every call.",
    )


class GroupConfig(_Config):
    """Routing of one model group."""

    strategy: Strategy = Field(description="cheapest, lowest_latency, weighted or fallback.")


class RoutingConfig(_Config):
    """Everything the routing processor can be told; every field has a default."""

    window_s: float = Field(default=60.0, gt=0, le=_DAY_S, description="Health window length (event time).")
    buckets: int = Field(default=12, ge=1, le=3600, description="Buckets per window (its time resolution).")
    allowed_lateness_s: float = Field(
        default=30.0, ge=0, le=_DAY_S, description="Calls older than the tenant's newest event by more are late."
    )
    default_strategy: Strategy = Field(default="weighted", description="Strategy of groups not in `groups`.")
    groups: dict[str, GroupConfig] = Field(default_factory=dict, description="Per model group settings.")
    deployments: tuple[ProviderConfig, ...] = Field(
        default=(),
        description="Deployments every tenant starts with; config.provider events add to and override them.",
    )
    discover: bool = Field(
        default=True,
        description="Add a deployment (named by the call's deployment, else provider/model) the first time a "
        "call names one that is not configured; its group is the call's model_group, else its model.",
    )
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="The circuit breaker.")
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig, description="429 pressure.")
    reorder_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=_DAY_S,
        description="cheapest and lowest_latency groups re-rank by their health figures at most this often.",
    )
    switch_margin: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="A deployment overtakes another in a cheapest/lowest_latency ranking only when it is better "
        "by more than this fraction (hysteresis: no flapping between two similar deployments).",
    )
    min_samples: int = Field(
        default=5, ge=1, le=1_000_000, description="Calls in the window before latency and cost figures rank."
    )

    @model_validator(mode="after")
    def _unique_deployments(self) -> Self:
        seen: set[str] = set()
        for d in self.deployments:
            if d.deployment in seen:
                raise ValueError(f"deployment {d.deployment!r} is configured twice")
            seen.add(d.deployment)
        return self

    def strategy(self, group: str) -> Strategy:
        cfg = self.groups.get(group)
        return cfg.strategy if cfg is not None else self.default_strategy
