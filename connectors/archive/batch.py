"""Decoded events to Arrow: one table per batch, built column by column.

Never row at a time: a batch becomes one Arrow table of a handful of arrays
(envelope attributes, the broker position, the payload as JSON bytes from
pydantic's serializer), with each archive table's rows together, which DuckDB
inserts with one statement per table it feeds; DuckDB parses the payload into
the typed columns.

The Python side is what the sink's event loop shares a core with, so it does
as little per event as it can: one pass to group by table, the envelope
converted by Arrow straight from each model's ``__dict__``, and one pydantic
serializer call for the payload (benchmarks/archive.py, ``write_path``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from connectors.archive.layout import TABLE_FOR_TYPE, TABLES, TableSpec, default_stream
from schemas import Event

# An event and where it came from: (event, stream, stream sequence); the
# position is None for events archived without a broker (tests, imports).
Incoming = tuple[Event, str | None, int | None]

# The envelope attributes as pydantic keeps them in each model's __dict__; Arrow
# reads them by key in C, and ignores the keys it is not asked for.
_ENVELOPE = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("source", pa.string()),
        ("subject", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("tenant", pa.string()),
        ("dataschema", pa.string()),
        ("traceparent", pa.string()),
        ("causationid", pa.string()),
        ("correlationid", pa.string()),
    ]
)

ARROW_SCHEMA = pa.schema([*_ENVELOPE, ("stream", pa.string()), ("seq", pa.int64()), ("data", pa.string())])

_TABLE_OF = {type_name: spec.name for type_name, spec in TABLE_FOR_TYPE.items()}


@dataclass(frozen=True, slots=True)
class Part:
    """The rows of one table within a batch, and their event-time range (for the duplicate check)."""

    spec: TableSpec
    lo: datetime
    hi: datetime


def payload_json(event: Event) -> bytes:
    """The payload as compact JSON. ``None`` fields are left out: every optional
    field defaults to ``None`` (tests/test_archive_store.py checks it), so
    validating the JSON again gives back the same payload."""
    data = event.data
    return data.__pydantic_serializer__.to_json(data, exclude_none=True)


def build(items: Sequence[Incoming]) -> tuple[pa.Table, list[Part]]:
    """One Arrow table for the whole batch (repeats of an id dropped, each table's rows
    together), and which tables it feeds."""
    if len({item[0].id for item in items}) != len(items):
        items = _first_of_each_id(items)
    groups: dict[str, list[Incoming]] = {}
    for item in items:
        name = _TABLE_OF[item[0].type]
        group = groups.get(name)
        if group is None:
            groups[name] = [item]
        else:
            group.append(item)
    rows = items if len(groups) == 1 else [item for group in groups.values() for item in group]
    table = _table(rows)
    parts = []
    for name, group in groups.items():
        times = [item[0].time for item in group]
        parts.append(Part(TABLES[name], min(times), max(times)))
    return table, parts


def _first_of_each_id(items: Sequence[Incoming]) -> list[Incoming]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item[0].id not in seen:
            seen.add(item[0].id)
            kept.append(item)
    return kept


def _table(rows: Sequence[Incoming]) -> pa.Table:
    events = [row[0] for row in rows]
    envelope = pa.array([event.__dict__ for event in events], type=_ENVELOPE)
    streams = [row[1] for row in rows]
    if None in streams:
        streams = [s if s is not None else default_stream(e.type) for e, s in zip(events, streams, strict=True)]
    payloads = [data.__pydantic_serializer__.to_json(data, exclude_none=True) for data in (e.data for e in events)]
    arrays = [
        *envelope.flatten(),
        pa.array(streams, type=pa.string()),
        pa.array([row[2] for row in rows], type=pa.int64()),
        # pydantic writes UTF-8: Arrow checks it vectorized rather than per Python object.
        pa.array(payloads, type=pa.binary()).cast(pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
