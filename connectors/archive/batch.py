"""Decoded events to Arrow: one table per archive table, built column by column.

Never row at a time: a batch becomes a handful of Arrow arrays (envelope
attributes, the broker position, the payload as JSON bytes from pydantic's
serializer), which DuckDB inserts in one statement per table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from connectors.archive.layout import TABLE_FOR_TYPE, TableSpec, default_stream
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
class TableBatch:
    """The rows for one table, and their event-time range (for the duplicate check)."""

    spec: TableSpec
    table: pa.Table
    lo: datetime
    hi: datetime


def payload_json(event: Event) -> bytes:
    """The payload as compact JSON. ``None`` fields are left out: every optional
    field defaults to ``None`` (tests/test_archive_layout.py checks it), so
    validating the JSON again gives back the same payload."""
    data = event.data
    return data.__pydantic_serializer__.to_json(data, exclude_none=True)


def build(items: Sequence[Incoming]) -> tuple[list[TableBatch], int]:
    """The table batches for ``items``, and how many repeats of an id within them were dropped."""
    groups: dict[str, list[Incoming]] = {}
    seen: set[str] = set()
    repeats = 0
    for item in items:
        event = item[0]
        if event.id in seen:
            repeats += 1
            continue
        seen.add(event.id)
        groups.setdefault(TABLE_FOR_TYPE[event.type].name, []).append(item)
    batches = []
    for rows in groups.values():
        events = [row[0] for row in rows]
        times = [e.time for e in events]
        batches.append(TableBatch(TABLE_FOR_TYPE[events[0].type], _table(rows, events, times), min(times), max(times)))
    return batches, repeats


def _table(rows: list[Incoming], events: list[Event], times: list[datetime]) -> pa.Table:
    columns = [
        [e.id for e in events],
        [e.type for e in events],
        [e.source for e in events],
        [e.subject for e in events],
        times,
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
