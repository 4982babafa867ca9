"""Encode events to CloudEvents JSON bytes and decode them back, on orjson.

``decode`` never lets a pydantic traceback escape: every failure is a
``SchemaError`` naming the offending field (``data.price``) and what was wrong.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from schemas.errors import SchemaError
from schemas.registry import EVENT_TYPES, Event


def encode(event: Event) -> bytes:
    """The event as one UTF-8 CloudEvents JSON document."""
    return orjson.dumps(event.model_dump(mode="json"))


def decode(raw: bytes | str) -> Event:
    """Parse and validate one event; ``SchemaError`` on anything invalid."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"not valid JSON: {exc}", field=None) from None
    return validate_event(doc)


def validate_event(doc: Any) -> Event:
    """Validate an already-parsed CloudEvents document into a typed event."""
    if not isinstance(doc, dict):
        raise SchemaError(f"an event must be a JSON object, got {type(doc).__name__}", field=None)
    type_name = doc.get("type")
    if not isinstance(type_name, str):
        raise SchemaError("missing the CloudEvents 'type' attribute", field="type")
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise SchemaError(
            f"unknown event type {type_name!r}",
            field="type",
            hint="run `spine schemas list` for the known types",
        )
    try:
        return cls.model_validate(doc)  # type: ignore[return-value]
    except ValidationError as exc:
        raise schema_error_from(exc, type_name) from None


def schema_error_from(exc: ValidationError, type_name: str | None = None) -> SchemaError:
    """Translate pydantic's error into one line naming the first bad field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    what = f"{type_name} event" if type_name else "event"
    value = first.get("input")
    shown = "" if first["type"] == "missing" or isinstance(value, dict) else f", got {_short(value)}"
    return SchemaError(f"invalid {what}: field '{field}': {first['msg']}{shown}{more}", field=field)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
