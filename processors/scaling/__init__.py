"""The scaling processor: desired replicas per workload, HPA-style, from market, session, LLM and backlog signals.

``Scaler(ScalingConfig(workloads=...))`` is a pure processor
(``processors.base``) that emits ``decision.scale`` (workload, current,
desired, the signals, the rule that drove it) when a workload's desired count
changes. ``scale_rows`` is the view of its state; ``build`` is the factory
``processors.registry`` knows as ``scaling``. The fold: ``processor``; state:
``state``; workloads, signals and floor rules: ``config``.
"""

from collections.abc import Sequence
from typing import Any

from processors.scaling.config import (
    BacklogSignal,
    EventRateSignal,
    FloorRule,
    ScalingConfig,
    SessionsSignal,
    Signal,
    VolatilitySignal,
    Workload,
)
from processors.scaling.processor import PARTITION, Scaler
from processors.scaling.state import ScalingState, WorkloadState


def build(config: dict[str, Any] | None) -> Scaler:
    """Registry factory (``processors.registry``): ``config`` is the ``[scaling]`` table."""
    return Scaler(ScalingConfig.model_validate(config or {}))


def scale_rows(states: Sequence[ScalingState]) -> list[dict[str, Any]]:
    """Each workload's current replica count as the processor last decided it."""
    return [
        {"workload": name, "replicas": w.current, "decisions": w.decisions, "last_change": w.last_change}
        for state in states
        for name, w in sorted(state.workloads.items())
    ]


__all__ = [
    "PARTITION",
    "BacklogSignal",
    "EventRateSignal",
    "FloorRule",
    "Scaler",
    "ScalingConfig",
    "ScalingState",
    "SessionsSignal",
    "Signal",
    "VolatilitySignal",
    "Workload",
    "WorkloadState",
    "build",
    "scale_rows",
]
