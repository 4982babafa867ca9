"""The supervisor's knobs: node liveness, the three auto-intervention policies, retention.

Every field has a default, so ``SupervisorConfig()`` is a working supervisor.
An example ``[supervisor]`` table of the processors config file
(``spine run supervisor --config processors.toml``; YAML nests the same way)::

    [supervisor]
    retry_cap_alerts = true
    completed_session_retention_s = 86400

    [supervisor.nodes]
    missed_heartbeats = 3           # offline after 3 silent intervals (each node sends its interval_s)
    offline_severity = "critical"

    [supervisor.resume_on_idle]
    enabled = true
    idle_threshold_s = 300          # idle for 5 minutes -> resume
    max_retries = 3                 # at most 3 resumes per session ...
    reset_window_s = 3600           # ... per hour

    [supervisor.restart_on_compaction]
    enabled = true
    max_retries = 2
    reset_window_s = 3600

    [supervisor.kill_on_cost]
    enabled = true
    session_limit_usd = 25.0        # kill a session once it has cost more than $25
    on_hard_budget = true           # and the live sessions of a project/tenant over a hard budget
    budget_scopes = ["project", "tenant"]

``processors.supervisor.build(table)`` validates it into a ``SupervisorConfig``.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

_DAY_S = 86_400.0
_MAX_WINDOW_S = 366 * _DAY_S


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NodeLivenessConfig(_Config):
    """When a node counts as offline, and what its alert looks like."""

    missed_heartbeats: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Heartbeat intervals a node may stay silent (each node announces its own interval_s) "
        "before it is marked offline and a node-offline alert fires. Judged by event time.",
    )
    offline_severity: Literal["info", "warning", "critical"] = Field(
        default="warning", description="Severity of the node-offline alert."
    )
    forget_after_s: float | None = Field(
        default=7 * _DAY_S,
        gt=0,
        le=_MAX_WINDOW_S,
        description="Drop a node from the registry after it has been offline this long; null keeps it forever.",
    )


class ResumeOnIdleConfig(_Config):
    """Resume a session that has been idle too long."""

    enabled: bool = Field(default=True, description="Send `resume` to sessions idle longer than the threshold.")
    idle_threshold_s: float = Field(
        default=300.0,
        gt=0,
        le=_MAX_WINDOW_S,
        description="Seconds a session must be idle (no state change, message or tool call, and no resume of "
        "ours) before it is resumed. After a resume, the session must be idle this long again.",
    )
    max_retries: int = Field(default=3, ge=1, le=1000, description="Resumes allowed per session per reset window.")
    reset_window_s: float = Field(
        default=3600.0,
        gt=0,
        le=_MAX_WINDOW_S,
        description="Length of the retry window; it starts at the first resume and the count resets when it ends.",
    )


class RestartOnCompactionConfig(_Config):
    """Restart a session whose context window filled up and got compacted."""

    enabled: bool = Field(default=True, description="Send `restart` once each time a session enters `compacted`.")
    max_retries: int = Field(default=2, ge=1, le=1000, description="Restarts allowed per session per reset window.")
    reset_window_s: float = Field(
        default=3600.0,
        gt=0,
        le=_MAX_WINDOW_S,
        description="Length of the retry window; it starts at the first restart and the count resets when it ends.",
    )


class KillOnCostConfig(_Config):
    """Kill sessions that cost too much, from the cost processor's decisions."""

    enabled: bool = Field(default=True, description="Send `kill` (once per session) when a cost limit is exceeded.")
    session_limit_usd: float | None = Field(
        default=None,
        gt=0,
        description="Kill a session whose cost (sum of its daily `decision.cost` buckets) exceeds this; "
        "null: no per-session limit.",
    )
    on_hard_budget: bool = Field(
        default=True,
        description="Kill the live sessions of a project/tenant when a `decision.budget` at level `hard` "
        "arrives for it (the budget itself is configured on the cost processor).",
    )
    budget_scopes: tuple[Literal["tenant", "project"], ...] = Field(
        default=("tenant", "project"),
        min_length=1,
        description="Which hard budget scopes kill sessions: a tenant budget kills every session of the "
        "tenant, a project budget those whose session.started named that project.",
    )
    kill_new_sessions: bool = Field(
        default=True,
        description="Also kill sessions that start in a project/tenant whose hard budget is exhausted, until "
        "the budget's period bucket ends.",
    )

    @model_validator(mode="after")
    def _has_a_trigger(self) -> Self:
        if self.enabled and self.session_limit_usd is None and not self.on_hard_budget:
            raise ValueError(
                "kill_on_cost is enabled but has no trigger: set session_limit_usd, "
                "turn on on_hard_budget, or set enabled: false"
            )
        return self


class SupervisorConfig(_Config):
    """Everything the session supervisor can be told; every field has a default."""

    nodes: NodeLivenessConfig = Field(default_factory=NodeLivenessConfig, description="Node liveness.")
    resume_on_idle: ResumeOnIdleConfig = Field(
        default_factory=ResumeOnIdleConfig, description="The resume-on-idle policy."
    )
    restart_on_compaction: RestartOnCompactionConfig = Field(
        default_factory=RestartOnCompactionConfig, description="The restart-on-compaction policy."
    )
    kill_on_cost: KillOnCostConfig = Field(
        default_factory=KillOnCostConfig, description="The kill-on-cost-exceeded policy."
    )
    retry_cap_alerts: bool = Field(
        default=True,
        description="Fire a `policy-retry-cap` alert when a policy wants to act on a session but has used up "
        "its retries in the current window (resolved when the session leaves that state or the window resets).",
    )
    completed_session_retention_s: float | None = Field(
        default=_DAY_S,
        gt=0,
        le=_MAX_WINDOW_S,
        description="Keep completed sessions in state this long (for `spine sessions`); the archive keeps "
        "history. null keeps them forever (state then grows without bound).",
    )
