"""Decoded events to Arrow: one table per archive table, built column by column.

Never row at a time: a batch becomes one Arrow table of a handful of arrays
(envelope attributes, the broker position, the payload as JSON bytes from
pydantic's serializer), which DuckDB inserts with one statement per table it
feeds; DuckDB parses the payload into the typed columns.
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

ARROW_SCHEMA = pa.schema(
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
        ("stream", pa.string()),
        ("seq", pa.int64()),
        ("data", pa.string()),
    ]
)


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
    """One Arrow table for the whole batch (repeats of an id dropped), and which tables it feeds."""
    rows: list[Incoming] = []
    seen: set[str] = set()
    ranges: dict[str, tuple[datetime, datetime]] = {}
    for item in items:
        event = item[0]
        if event.id in seen:
            continue
        seen.add(event.id)
        rows.append(item)
        name = TABLE_FOR_TYPE[event.type].name
        when = event.time
        known = ranges.get(name)
        if known is None:
            ranges[name] = (when, when)
        elif when < known[0] or when > known[1]:
            ranges[name] = (min(when, known[0]), max(when, known[1]))
    parts = [Part(TABLES[name], lo, hi) for name, (lo, hi) in ranges.items()]
    return _table(rows), parts


def _table(rows: list[Incoming]) -> pa.Table:
    events = [row[0] for row in rows]
    columns = [
        [e.id for e in events],
        [e.type for e in events],
        [e.source for e in events],
        [e.subject for e in events],
        [e.time for e in events],
        [e.tenant for e in events],
        [e.dataschema for e in events],
        [e.traceparent for e in events],
        [e.causationid for e in events],
        [e.correlationid for e in events],
        [stream if stream is not None else default_stream(e.type) for e, stream, _ in rows],
        [seq for _, _, seq in rows],
        [payload_json(e) for e in events],
    ]
    arrays = [pa.array(values, type=f.type) for values, f in zip(columns, ARROW_SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
