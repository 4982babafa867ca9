"""The alerting processor: threshold, rate-of-change, volatility, error-rate, session, node and budget rules.

``Alerter(AlertingConfig(rules=...))`` is a pure processor (``processors.base``)
over whatever its rules read; it emits ``decision.alert`` fire/resolve pairs
with stable dedup keys (``<rule>/<what>``), a cooldown between notifications
and severity and labels from the rule. ``build`` is the factory
``processors.registry`` knows as ``alerting``. The fold: ``processor``; state:
``state``; rule kinds and their knobs: ``config``.
"""

from typing import Any

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
from processors.alerting.processor import Alerter, Check
from processors.alerting.state import AlertingState, AlertRecord, TenantAlerts


def build(config: dict[str, Any] | None) -> Alerter:
    """Registry factory (``processors.registry``): ``config`` is the ``[alerting]`` table."""
    return Alerter(AlertingConfig.model_validate(config or {}))


__all__ = [
    "AlertRecord",
    "Alerter",
    "AlertingConfig",
    "AlertingState",
    "BudgetRule",
    "Check",
    "ErrorRateRule",
    "NodeOfflineRule",
    "RateOfChangeRule",
    "Rule",
    "SessionRule",
    "TenantAlerts",
    "ThresholdRule",
    "VolatilityRule",
    "build",
]
