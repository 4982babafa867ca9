"""Decisions that processors derive (``decision.*``); consumers act on them."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field

from schemas.payloads.base import Count, Id, NonEmpty, NonNegative, Payload

Period = Literal["day", "week", "month"]


class RouteCandidate(Payload):
    """One deployment in a routing table, in preference order."""

    deployment: NonEmpty
    provider: NonEmpty
    model: NonEmpty
    weight: float = Field(ge=0)
    breaker: Literal["closed", "open", "half_open"] = "closed"
    open_until: AwareDatetime | None = Field(
        default=None, description="While open: when it may take a probe request (event time)."
    )
    why: str = ""


class RouteDecision(Payload):
    """The routing table of a model group; a new ``version`` only when it changes."""

    model_group: NonEmpty
    version: int = Field(ge=1)
    strategy: Literal["cheapest", "lowest_latency", "weighted", "fallback"]
    candidates: tuple[RouteCandidate, ...]
    reason: str = ""


class CostDecision(Payload):
    """Running cost of one aggregation key in one period bucket (event time)."""

    period: Period
    bucket: str = Field(description="Bucket start date, ISO 8601 (day, Monday, or 1st).")
    dimension: Literal["tenant", "provider", "model", "project", "session"]
    key: NonEmpty
    cost_usd: NonNegative
    calls: Count
    input_tokens: Count = 0
    output_tokens: Count = 0
    unpriced_calls: Count = Field(default=0, description="Calls whose model had no price.")
    price_version: str | None = None
    final: bool = Field(default=False, description="True once the bucket closed (watermark passed its end).")


class BudgetDecision(Payload):
    """A budget crossed its soft or hard limit in a period; once per period."""

    budget: NonEmpty = Field(description="Budget name from the config.")
    scope: Literal["tenant", "project", "provider"]
    key: NonEmpty
    period: Period
    bucket: str
    level: Literal["soft", "hard"]
    limit_usd: NonNegative
    spent_usd: NonNegative


class AlertDecision(Payload):
    """An alert firing or resolving; ``dedup_key`` pairs the two."""

    rule: NonEmpty
    dedup_key: NonEmpty
    status: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"] = "warning"
    summary: str = ""
    value: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class ScaleDecision(Payload):
    """Desired replicas for a workload, with the signals and rule behind it."""

    workload: NonEmpty
    current: Count
    desired: Count
    rule: NonEmpty
    signals: dict[str, float] = Field(default_factory=dict)
    reason: str = ""


class CommandDecision(Payload):
    """An action for a session's node agent to carry out."""

    action: Literal["resume", "restart", "kill", "notify"]
    session_id: Id
    node_id: Id | None = None
    reason: str
    policy: NonEmpty
    attempt: Count = 1
