"""The CloudEvents 1.0 envelope and one explicit event class per type.

Every event on the wire is a CloudEvents JSON structured-mode document with
Spine's extension attributes (``tenant``, ``traceparent``, ``causationid``,
``correlationid``). Each event class pins ``type`` and ``dataschema``
(``spine:<type>:<version>``) with ``Literal`` tags and types its ``data``;
``schemas.registry`` lists them all and decodes by ``type``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from schemas.ids import uuid7
from schemas.payloads.config import ProviderConfig
from schemas.payloads.decisions import (
    AlertDecision,
    BudgetDecision,
    CommandDecision,
    CostDecision,
    RouteDecision,
    ScaleDecision,
)
from schemas.payloads.dlq import DeadLetter
from schemas.payloads.llm import LlmCall
from schemas.payloads.market import MarketTick
from schemas.payloads.sessions import (
    NodeBacklog,
    NodeHeartbeat,
    SessionHeartbeat,
    SessionMessage,
    SessionStarted,
    SessionStateChanged,
    SessionToolCall,
)

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TRACEPARENT_PATTERN = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def utcnow() -> datetime:
    """Wall-clock now, for producers only: processors read event time."""
    return datetime.now(UTC)


EventTime = Annotated[AwareDatetime, AfterValidator(_utc)]


class Envelope(BaseModel):
    """CloudEvents attributes shared by every event. Use a concrete subclass."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=uuid7, min_length=1, max_length=128)
    type: str
    source: str = Field(default="spine", min_length=1, max_length=512)
    subject: str = Field(min_length=1, max_length=1024, description="Ordering/partition key.")
    time: EventTime = Field(default_factory=utcnow, description="Event time (UTC).")
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    tenant: str = Field(default="default", pattern=TENANT_PATTERN)
    traceparent: str | None = Field(default=None, pattern=TRACEPARENT_PATTERN)
    causationid: str | None = Field(default=None, max_length=128)
    correlationid: str | None = Field(default=None, max_length=128)


class MarketTickEvent(Envelope):
    type: Literal["market.tick"] = "market.tick"
    dataschema: Literal["spine:market.tick:1"] = "spine:market.tick:1"
    data: MarketTick


class SessionStartedEvent(Envelope):
    type: Literal["session.started"] = "session.started"
    dataschema: Literal["spine:session.started:1"] = "spine:session.started:1"
    data: SessionStarted


class SessionStateEvent(Envelope):
    type: Literal["session.state"] = "session.state"
    dataschema: Literal["spine:session.state:1"] = "spine:session.state:1"
    data: SessionStateChanged


class SessionMessageEvent(Envelope):
    type: Literal["session.message"] = "session.message"
    dataschema: Literal["spine:session.message:1"] = "spine:session.message:1"
    data: SessionMessage


class SessionToolCallEvent(Envelope):
    type: Literal["session.tool_call"] = "session.tool_call"
    dataschema: Literal["spine:session.tool_call:1"] = "spine:session.tool_call:1"
    data: SessionToolCall


class SessionHeartbeatEvent(Envelope):
    type: Literal["session.heartbeat"] = "session.heartbeat"
    dataschema: Literal["spine:session.heartbeat:1"] = "spine:session.heartbeat:1"
    data: SessionHeartbeat


class NodeHeartbeatEvent(Envelope):
    type: Literal["node.heartbeat"] = "node.heartbeat"
    dataschema: Literal["spine:node.heartbeat:1"] = "spine:node.heartbeat:1"
    data: NodeHeartbeat


class NodeBacklogEvent(Envelope):
    type: Literal["node.backlog"] = "node.backlog"
    dataschema: Literal["spine:node.backlog:1"] = "spine:node.backlog:1"
    data: NodeBacklog


class LlmCallEvent(Envelope):
    type: Literal["llm.call"] = "llm.call"
    dataschema: Literal["spine:llm.call:1"] = "spine:llm.call:1"
    data: LlmCall


class ProviderConfigEvent(Envelope):
    type: Literal["config.provider"] = "config.provider"
    dataschema: Literal["spine:config.provider:1"] = "spine:config.provider:1"
    data: ProviderConfig


class RouteDecisionEvent(Envelope):
    type: Literal["decision.route"] = "decision.route"
    dataschema: Literal["spine:decision.route:1"] = "spine:decision.route:1"
    data: RouteDecision


class CostDecisionEvent(Envelope):
    type: Literal["decision.cost"] = "decision.cost"
    dataschema: Literal["spine:decision.cost:1"] = "spine:decision.cost:1"
    data: CostDecision


class BudgetDecisionEvent(Envelope):
    type: Literal["decision.budget"] = "decision.budget"
    dataschema: Literal["spine:decision.budget:1"] = "spine:decision.budget:1"
    data: BudgetDecision


class AlertDecisionEvent(Envelope):
    type: Literal["decision.alert"] = "decision.alert"
    dataschema: Literal["spine:decision.alert:1"] = "spine:decision.alert:1"
    data: AlertDecision


class ScaleDecisionEvent(Envelope):
    type: Literal["decision.scale"] = "decision.scale"
    dataschema: Literal["spine:decision.scale:1"] = "spine:decision.scale:1"
    data: ScaleDecision


class CommandDecisionEvent(Envelope):
    type: Literal["decision.command"] = "decision.command"
    dataschema: Literal["spine:decision.command:1"] = "spine:decision.command:1"
    data: CommandDecision


DeadLetterType = Literal["dlq.undecodable", "dlq.max_deliver", "dlq.rejected", "dlq.late"]


class DeadLetterEvent(Envelope):
    """A dead letter; the subject is the source stream name.

    ``dlq.undecodable``: bytes that are not a valid event; ``dlq.max_deliver``:
    handled and not acked too many times; ``dlq.rejected``: a handler gave up
    (``Delivery.term``); ``dlq.late``: behind a processor's watermark.
    """

    type: DeadLetterType
    dataschema: Literal[
        "spine:dlq.undecodable:1", "spine:dlq.max_deliver:1", "spine:dlq.rejected:1", "spine:dlq.late:1"
    ]
    data: DeadLetter
