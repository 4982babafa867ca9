"""The explicit registry of event types, and the discriminated union of events."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from schemas.envelope import (
    AlertDecisionEvent,
    BudgetDecisionEvent,
    CommandDecisionEvent,
    CostDecisionEvent,
    DeadLetterEvent,
    Envelope,
    LlmCallEvent,
    MarketTickEvent,
    NodeBacklogEvent,
    NodeHeartbeatEvent,
    ProviderConfigEvent,
    RouteDecisionEvent,
    ScaleDecisionEvent,
    SessionHeartbeatEvent,
    SessionMessageEvent,
    SessionStartedEvent,
    SessionStateEvent,
    SessionToolCallEvent,
)
from schemas.errors import SchemaError
from schemas.payloads.base import Payload

Event = Annotated[
    MarketTickEvent
    | SessionStartedEvent
    | SessionStateEvent
    | SessionMessageEvent
    | SessionToolCallEvent
    | SessionHeartbeatEvent
    | NodeHeartbeatEvent
    | NodeBacklogEvent
    | LlmCallEvent
    | ProviderConfigEvent
    | RouteDecisionEvent
    | CostDecisionEvent
    | BudgetDecisionEvent
    | AlertDecisionEvent
    | ScaleDecisionEvent
    | CommandDecisionEvent
    | DeadLetterEvent,
    Field(discriminator="type"),
]
"""Any Spine event, decoded by its ``type`` tag."""

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

# type name -> (event class, current payload version)
EVENT_TYPES: dict[str, type[Envelope]] = {
    "market.tick": MarketTickEvent,
    "session.started": SessionStartedEvent,
    "session.state": SessionStateEvent,
    "session.message": SessionMessageEvent,
    "session.tool_call": SessionToolCallEvent,
    "session.heartbeat": SessionHeartbeatEvent,
    "node.heartbeat": NodeHeartbeatEvent,
    "node.backlog": NodeBacklogEvent,
    "llm.call": LlmCallEvent,
    "config.provider": ProviderConfigEvent,
    "decision.route": RouteDecisionEvent,
    "decision.cost": CostDecisionEvent,
    "decision.budget": BudgetDecisionEvent,
    "decision.alert": AlertDecisionEvent,
    "decision.scale": ScaleDecisionEvent,
    "decision.command": CommandDecisionEvent,
    "dlq.undecodable": DeadLetterEvent,
    "dlq.max_deliver": DeadLetterEvent,
    "dlq.rejected": DeadLetterEvent,
    "dlq.late": DeadLetterEvent,
}

SCHEMA_VERSION = 1  # every type is at version 1 so far


def event_class(type_name: str) -> type[Envelope]:
    """The event class for ``type_name``, or a ``SchemaError`` listing the known ones."""
    try:
        return EVENT_TYPES[type_name]
    except KeyError:
        raise SchemaError(
            f"unknown event type {type_name!r}",
            field="type",
            hint="known types: " + ", ".join(sorted(EVENT_TYPES)),
        ) from None


def payload_class(type_name: str) -> type[Payload]:
    """The payload model of ``type_name``."""
    cls = event_class(type_name)
    annotation = cls.model_fields["data"].annotation
    assert isinstance(annotation, type) and issubclass(annotation, Payload)
    return annotation


def make_event(
    type_name: str,
    data: Payload | dict[str, Any],
    *,
    subject: str | None = None,
    **attributes: Any,
) -> Event:
    """Build and validate an event of ``type_name``; raises ``SchemaError``.

    ``subject`` defaults to the payload's natural key (``default_subject``).
    ``attributes`` are envelope attributes (``tenant``, ``source``, ``time``,
    ``id``, ``causationid``, ...). ``dataschema`` is filled in.
    """
    from schemas.codec import validate_event

    event_class(type_name)
    if subject is None:
        fields = data.model_dump() if isinstance(data, Payload) else data
        subject = default_subject(type_name, fields) if isinstance(fields, dict) else None
        if subject is None:
            raise SchemaError(
                f"{type_name} events need a subject (their ordering key)",
                field="subject",
                hint="pass subject=... (CLI: --subject)",
            )
    doc = {
        "type": type_name,
        "dataschema": f"spine:{type_name}:{SCHEMA_VERSION}",
        "subject": subject,
        "data": data,  # a Payload instance is taken as is (it was validated when built)
        **attributes,
    }
    return validate_event(doc)


def default_subject(type_name: str, data: dict[str, Any]) -> str | None:
    """The natural ordering key of a payload (DESIGN.md, Streams), if it has one."""
    if type_name == "market.tick":
        return _str(data.get("symbol"))
    if type_name.startswith("session."):
        return _str(data.get("session_id"))
    if type_name == "node.heartbeat":
        return _str(data.get("node_id"))
    if type_name == "node.backlog":
        return _str(data.get("queue"))
    if type_name == "llm.call":
        provider, model = data.get("provider"), data.get("model")
        return f"{provider}/{model}" if provider and model else None
    if type_name == "config.provider":
        return _str(data.get("deployment"))
    if type_name == "decision.route":
        return _str(data.get("model_group"))
    if type_name == "decision.scale":
        return _str(data.get("workload"))
    if type_name == "decision.command":
        return _str(data.get("session_id"))
    if type_name == "decision.alert":
        return _str(data.get("dedup_key"))
    if type_name in ("decision.cost", "decision.budget"):
        key = data.get("key")
        return f"{data.get('dimension') or data.get('scope')}:{key}" if key else None
    return None


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
