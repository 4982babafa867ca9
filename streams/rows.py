"""Cheap decoding inside: a row processor's inputs, validated on the fields it reads.

Events are validated in full at the edges: every Spine producer publishes
typed events (``Bus.publish`` takes an ``Event``), the archive sink and
consumer groups validate what they receive. A processor that declares
``row_input`` (``streams.processing``) reads a handful of payload fields; its
runner does not need the rest of the event decoded into models on every
input. ``RowDecoder`` validates, in one pydantic-core pass over the JSON
bytes, the envelope attributes a decision needs and exactly the payload
fields the processor reads, each with the schema's own type and constraints
(the same ``FieldInfo``), and ignores the other fields. Anything it cannot
take (another type, a field missing or invalid) goes through the full
``schemas.decode`` instead, so an event the processor would see invalid is
still dead-lettered with the full schema's reason, and an event the full
schema fills with defaults folds exactly as before.

What it does not check, by design: payload fields the processor never reads,
and unknown extra fields. Those are the edge's to refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Annotated, Any, Literal, Protocol

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from typing_extensions import TypedDict

from schemas import SchemaError
from schemas.registry import event_class, payload_class
from streams.processing import Cause, RowInput

_CAUSE = ("id", "subject", "time", "tenant", "traceparent", "causationid", "correlationid")


class Row(Cause, Protocol):
    """A decoded row input: the envelope a decision reads (``Cause``), plus ``values``."""

    @property
    def type(self) -> str: ...

    @property
    def subject(self) -> str: ...

    @property
    def causationid(self) -> str | None: ...

    def values(self) -> Sequence[Any]: ...


class DecodedRow:
    """What ``RowDecoder.decode`` gives (a ``Row``)."""

    __slots__ = ("_values", "causationid", "correlationid", "id", "subject", "tenant", "time", "traceparent", "type")

    def __init__(self, type_name: str, doc: dict[str, Any], values: tuple[Any, ...]) -> None:
        self.type = type_name
        self.id = doc["id"]
        self.subject = doc["subject"]
        self.time = doc["time"]
        self.tenant = doc["tenant"]
        self.traceparent = doc["traceparent"]
        self.causationid = doc["causationid"]
        self.correlationid = doc["correlationid"]
        self._values = values

    def values(self) -> tuple[Any, ...]:
        return self._values

    def __repr__(self) -> str:
        return f"DecodedRow({self.type} {self.id} {self._values})"


class RowDecoder:
    """Decodes ``spec.type`` events into ``Row``s; ``SchemaError`` when the full decode must decide.

    One pydantic-core pass validates the JSON into plain dicts (no model
    instances: about as fast as ``orjson.loads``). Every attribute is required
    here, as Spine's encoder writes them all; a producer that leaves some out
    gets the full decode and its defaults.
    """

    def __init__(self, spec: RowInput) -> None:
        self.type = spec.type
        payload = payload_class(spec.type).model_fields
        envelope = event_class(spec.type).model_fields
        data = TypedDict(  # type: ignore[misc]
            f"{spec.type.replace('.', '_')}_row_data", {name: _checked(payload[name]) for name in spec.fields}
        )
        attributes = {name: _checked(envelope[name]) for name in _CAUSE}
        row = TypedDict(  # type: ignore[misc]
            f"{spec.type.replace('.', '_')}_row",
            {"type": Literal[spec.type], "data": data, **attributes},
        )
        self._adapter: TypeAdapter[dict[str, Any]] = TypeAdapter(row)
        pick = itemgetter(*spec.fields)
        self._pick = (lambda data: (pick(data),)) if len(spec.fields) == 1 else pick

    def decode(self, raw: bytes) -> Row:
        try:
            doc = self._adapter.validate_json(raw)
        except ValidationError as exc:
            raise SchemaError(f"not a {self.type} row: {exc.error_count()} errors", field=None) from None
        return DecodedRow(self.type, doc, self._pick(doc["data"]))


def row_decoder(processor: object) -> RowDecoder | None:
    """The row decoder for a processor whose only input is its ``row_input`` type, else None."""
    spec = getattr(processor, "row_input", None)
    inputs = getattr(processor, "inputs", ())
    if not isinstance(spec, RowInput) or not hasattr(processor, "handle_row") or tuple(inputs) != (spec.type,):
        return None
    return RowDecoder(spec)


def _checked(info: FieldInfo) -> Any:
    """The field's type with the schema's constraints and validators on it."""
    return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation


__all__ = ["Row", "RowDecoder", "row_decoder"]
