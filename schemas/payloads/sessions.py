"""Coding-agent sessions and the nodes that run them (``session.*``, ``node.heartbeat``, ``node.backlog``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.payloads.base import Count, Id, NonEmpty, NonNegative, Payload

SessionStatus = Literal["running", "idle", "compacted", "error", "completed"]


class SessionStarted(Payload):
    """An agent session began on a node; the envelope subject is the session id."""

    session_id: Id
    node_id: Id
    agent: NonEmpty = Field(description="Agent kind, e.g. 'claude-code', 'opencode'.")
    project: str | None = None
    model: str | None = Field(default=None, description="Model the agent uses, provider/model.")
    workdir: str | None = None


class SessionStateChanged(Payload):
    """A session moved to ``state``; the supervisor validates the transition."""

    session_id: Id
    node_id: Id | None = None
    state: SessionStatus
    reason: str | None = None


class SessionMessage(Payload):
    """A message in a session. ``content`` only when the producer opts in."""

    session_id: Id
    role: Literal["user", "assistant", "system", "tool"]
    tokens: Count | None = None
    content: str | None = Field(default=None, description="Message text; omitted unless opted in.")


class SessionToolCall(Payload):
    """A tool the agent called, with its outcome."""

    session_id: Id
    tool: NonEmpty
    status: Literal["ok", "error"] = "ok"
    duration_ms: NonNegative | None = None
    error: str | None = None


class SessionHeartbeat(Payload):
    """A live session's periodic sign of life."""

    session_id: Id
    node_id: Id
    state: SessionStatus | None = None
    tokens_used: Count | None = None


class NodeHeartbeat(Payload):
    """A node's periodic sign of life; ``interval_s`` says when to expect the next."""

    node_id: Id
    hostname: str | None = None
    interval_s: float = Field(default=10.0, gt=0)
    sessions_active: Count = 0
    cpu_pct: float | None = Field(default=None, ge=0)
    mem_pct: float | None = Field(default=None, ge=0, le=100)
    version: str | None = None


class NodeBacklog(Payload):
    """Pending work of a queue or consumer group, as a worker or the backlog reporter saw it.

    The envelope subject is ``queue``. ``connectors.backlog`` publishes one per
    consumer group from the broker's lag; a worker pool may publish its own
    queue depth. The scaling processor reads the latest per queue.
    """

    queue: Id = Field(description="Consumer group or work queue name.")
    pending: Count = Field(description="Items not yet delivered to any worker.")
    in_flight: Count = Field(default=0, description="Items delivered and not yet acknowledged.")
    stream: str | None = Field(default=None, description="Stream the queue reads, if one.")
    node_id: Id | None = Field(default=None, description="Who measured it.")
