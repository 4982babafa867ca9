"""The session supervisor: node registry, session state machine, auto-intervention policies.

``SessionSupervisor(SupervisorConfig())`` is a pure processor (``processors.base``)
over ``session.*``, ``node.heartbeat``, ``decision.cost`` and ``decision.budget``
that emits ``decision.command`` (resume / restart / kill) and ``decision.alert``
(node-offline, policy-retry-cap). ``session_rows``, ``session_detail`` and
``node_rows`` are the CLI's views of its state; ``build`` is the factory
``processors.registry`` knows as ``supervisor``. Rules: ``processor``;
transition table: ``state``; every knob, with an example: ``config``.
"""

from typing import Any

from processors.supervisor.config import (
    KillOnCostConfig,
    NodeLivenessConfig,
    RestartOnCompactionConfig,
    ResumeOnIdleConfig,
    SupervisorConfig,
)
from processors.supervisor.outputs import (
    KILL_ON_COST,
    NODE_OFFLINE_RULE,
    RESTART_ON_COMPACTION,
    RESUME_ON_IDLE,
    RETRY_CAP_RULE,
)
from processors.supervisor.processor import SessionSupervisor
from processors.supervisor.queries import node_rows, session_detail, session_rows
from processors.supervisor.state import (
    TRANSITIONS,
    ExhaustedBudget,
    NodeRecord,
    RetryRecord,
    SessionRecord,
    SupervisorSnapshotError,
    SupervisorState,
    TenantState,
    is_legal,
    restore_state,
    session_cost,
    snapshot_state,
)


def build(config: dict[str, Any] | None) -> SessionSupervisor:
    """Registry factory (``processors.registry``): ``config`` is the ``[supervisor]`` table."""
    return SessionSupervisor(SupervisorConfig.model_validate(config or {}))


__all__ = [
    "KILL_ON_COST",
    "NODE_OFFLINE_RULE",
    "RESTART_ON_COMPACTION",
    "RESUME_ON_IDLE",
    "RETRY_CAP_RULE",
    "TRANSITIONS",
    "ExhaustedBudget",
    "KillOnCostConfig",
    "NodeLivenessConfig",
    "NodeRecord",
    "RestartOnCompactionConfig",
    "ResumeOnIdleConfig",
    "RetryRecord",
    "SessionRecord",
    "SessionSupervisor",
    "SupervisorConfig",
    "SupervisorSnapshotError",
    "SupervisorState",
    "TenantState",
    "build",
    "is_legal",
    "node_rows",
    "restore_state",
    "session_cost",
    "session_detail",
    "session_rows",
    "snapshot_state",
]
