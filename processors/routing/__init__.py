"""The routing processor: deployment health, circuit breakers, routing tables per model group.

``Router(RoutingConfig())`` is a pure processor (``processors.base``) over
``llm.call`` and ``config.provider`` that emits ``decision.route``: a
versioned table per model group, only when it changes. ``streams.routes``
follows those tables for gateways; ``route_rows`` is the view ``spine routes``
prints; ``build`` is the factory ``processors.registry`` knows as ``routing``.
The fold: ``processor``; state and its snapshot: ``state``; knobs: ``config``.
"""

from typing import Any

from processors.routing.config import BreakerConfig, GroupConfig, RateLimitConfig, RoutingConfig, Strategy
from processors.routing.processor import Router
from processors.routing.queries import route_rows
from processors.routing.state import Breaker, Deployment, RoutingState, Table, TenantRouting


def build(config: dict[str, Any] | None) -> Router:
    """Registry factory (``processors.registry``): ``config`` is the ``[routing]`` table."""
    return Router(RoutingConfig.model_validate(config or {}))


__all__ = [
    "Breaker",
    "BreakerConfig",
    "Deployment",
    "GroupConfig",
    "RateLimitConfig",
    "Router",
    "RoutingConfig",
    "RoutingState",
    "Strategy",
    "Table",
    "TenantRouting",
    "build",
    "route_rows",
]
