"""Decoded events to Arrow: one table per archive table a batch feeds, built column by column.

Never row at a time: each archive table's rows of a batch become one Arrow
table of a handful of arrays (envelope attributes, the broker position, the
payload as JSON bytes from pydantic's serializer), which DuckDB inserts with
one statement; DuckDB parses the payload into the typed columns.

The Python side is what the sink's event loop shares a core with, so it does
as little per event as it can: one pass to group by type, the envelope
converted by Arrow straight from each model's ``__dict__``, attributes that
are the same for a whole group (``type``, ``dataschema``, usually ``stream``)
repeated by Arrow rather than converted per event, one pydantic serializer
call for the payload, and the event-time range taken by Arrow from the
converted column (benchmarks/archive.py, ``write_path``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

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

# The envelope attributes that differ between events of one type, as pydantic keeps
# them in each model's __dict__; Arrow reads them by key in C, and ignores the keys it
# is not asked for. ``type`` and ``dataschema`` (a Literal per event class) are one
# value per group.
_VARYING = pa.struct(
    [
        ARROW_SCHEMA.field(name)
        for name in ("id", "source", "subject", "time", "tenant", "traceparent", "causationid", "correlationid")
    ]
)


@dataclass(frozen=True, slots=True)
class Part:
    """The rows of one archive table within a batch (``ARROW_SCHEMA``), and their
    event-time range (for the duplicate check)."""

    spec: TableSpec
    rows: pa.Table
    lo: datetime
    hi: datetime


def payload_json(event: Event) -> bytes:
    """The payload as compact JSON. ``None`` fields are left out: every optional
    field defaults to ``None`` (tests/test_archive_store.py checks it), so
    validating the JSON again gives back the same payload."""
    data = event.data
    return data.__pydantic_serializer__.to_json(data, exclude_none=True)


def build(items: Sequence[Incoming]) -> list[Part]:
    """The batch as one Arrow table per archive table it feeds (repeats of an id dropped)."""
    if len({item[0].id for item in items}) != len(items):
        items = _first_of_each_id(items)
    by_type: dict[str, list[Incoming]] = {}
    for item in items:
        group = by_type.get(item[0].type)
        if group is None:
            by_type[item[0].type] = [item]
        else:
            group.append(item)
    by_table: dict[str, tuple[TableSpec, list[pa.Table]]] = {}
    for type_name, group in by_type.items():
        spec = TABLE_FOR_TYPE[type_name]
        tables = by_table.setdefault(spec.name, (spec, []))[1]
        tables.append(_table(type_name, group))
    parts = []
    for spec, tables in by_table.values():
        rows = tables[0] if len(tables) == 1 else pa.concat_tables(tables)  # dead letters of several kinds
        lo, hi = pc.min_max(rows.column("time")).values()
        parts.append(Part(spec, rows, lo.as_py(), hi.as_py()))
    return parts


def _first_of_each_id(items: Sequence[Incoming]) -> list[Incoming]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item[0].id not in seen:
            seen.add(item[0].id)
            kept.append(item)
    return kept


def _table(type_name: str, rows: list[Incoming]) -> pa.Table:
    """The rows of one event type."""
    n = len(rows)
    events = [row[0] for row in rows]
    first = events[0]
    envelope = pa.array([event.__dict__ for event in events], type=_VARYING)
    streams = [row[1] for row in rows]
    if streams.count(streams[0]) == n:  # the usual case: every event of a type lives in one stream
        stream = pa.repeat(pa.scalar(streams[0] or default_stream(type_name), pa.string()), n)
    else:
        stream = pa.array([s if s is not None else default_stream(type_name) for s in streams], type=pa.string())
    payloads = [data.__pydantic_serializer__.to_json(data, exclude_none=True) for data in (e.data for e in events)]
    (ids, sources, subjects, times, tenants, traceparents, causationids, correlationids) = envelope.flatten()
    arrays = [
        ids,
        pa.repeat(pa.scalar(type_name, pa.string()), n),
        sources,
        subjects,
        times,
        tenants,
        pa.repeat(pa.scalar(first.dataschema, pa.string()), n),
        traceparents,
        causationids,
        correlationids,
        stream,
        pa.array([row[2] for row in rows], type=pa.int64()),
        # pydantic writes UTF-8: Arrow checks it vectorized rather than per Python object.
        pa.array(payloads, type=pa.binary()).cast(pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)
