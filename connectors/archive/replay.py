"""History back out of the archive: events in event-time order, processors over them, shadow re-publishing.

- ``read_events``: archived events as typed events, in replay order: event
  time, then stream (CONFIG, MARKET, SESSIONS, LLM, DECISIONS, DLQ: reference
  data before inputs before decisions), then broker sequence, then id.
- ``replay_run``: a processor over them through the runtime's pure path
  (``processors.runtime.run_partitioned``); no broker, no clock, so it derives
  exactly the decisions (and ids) the live run derived from the same input.
  A processor that declares ``row_input`` (the cost processor) is fed straight
  from the table's typed columns instead (``run_partitioned_rows``): the
  archive validated every event on the way in, so replays skip building and
  validating an event per row; ``tests/test_archive_replay.py`` checks both
  paths derive the same decisions.
- ``replay_publish``: copies of archived events back onto the bus under a
  *shadow tenant*. A copy keeps type, subject, time, payload, causation and
  correlation; its tenant becomes the shadow name and its id becomes
  ``derived_id("replay/<shadow>", original id, 0)``. Live consumers subscribe
  with ``tenant=<shadow>`` to re-process it; consumers of the original tenant
  never see it, and the original events are not touched. Publishing the same
  range again is dropped as duplicates; use another shadow name for a fresh run.

Time ranges are half-open: ``start <= time < end``.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from connectors.archive.errors import QueryError
from connectors.archive.layout import (
    ENVELOPE_NAMES,
    TABLE_FOR_TYPE,
    TableSpec,
    quote,
    range_clauses,
    stream_rank_sql,
)
from connectors.archive.store import Archive
from processors.base import Processor, PureRun, RowInput, RowProcessor
from processors.runtime import DEFAULT_PARTITIONS, run_partitioned, run_partitioned_rows
from schemas import EVENT_ADAPTER, EVENT_TYPES, Event, derived_id
from schemas.envelope import TENANT_PATTERN
from streams.bus import Bus
from streams.catalog import nats_filter, nats_subject, subject_matches
from streams.naming import check_pattern

S = TypeVar("S")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TENANT = re.compile(TENANT_PATTERN)

# The CloudEvents document of a row, built by DuckDB: the envelope through
# json_object (escaping, nulls), then the stored payload JSON spliced in as is.
_EVENT_JSON = (
    "left(json_object('specversion', '1.0', 'id', id, 'type', type, 'source', source, 'subject', subject, "
    "'time', strftime(time, '%Y-%m-%dT%H:%M:%S.%fZ'), 'datacontenttype', 'application/json', "
    "'dataschema', dataschema, 'tenant', tenant, 'traceparent', traceparent, "
    "'causationid', causationid, 'correlationid', correlationid), -1) || ',\"data\":' || data || '}'"
)


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """``2026-11-21``, ``2026-11-21T10:00:00Z``, ``now``, or an age: ``90s``, ``30m``, ``12h``, ``7d``, ``2w``."""
    value = text.strip()
    now = now or datetime.now(UTC)
    if value == "now":
        return now
    relative = _RELATIVE.match(value)
    if relative:
        return now - timedelta(**{_UNITS[relative.group(2)]: float(relative.group(1))})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            f"cannot read {text!r} as a time", hint="use 2026-11-21, 2026-11-21T10:00:00Z, now, or an age like 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def types_for(patterns: Iterable[str]) -> tuple[list[str], list[str]]:
    """The event types ``patterns`` (type space, as processors declare ``inputs``) can match,
    and the NATS filters that still need a per-event key check (patterns naming a key)."""
    types: list[str] = []
    keyed: list[str] = []
    for pattern in patterns:
        check_pattern(pattern)
        tokens = nats_filter(pattern, "t").split(".")[2:]
        for type_name in EVENT_TYPES:
            family = type_name.split(".", 1)[0]
            if tokens[0] in ("*", ">") and family == "dlq":
                continue  # like subscribe: the DLQ is only read when named
            if _type_matches(tokens, type_name.split(".")) and type_name not in types:
                types.append(type_name)
        if len(tokens) > 2 and not (len(tokens) == 3 and tokens[2] in ("*", ">")):
            keyed.append(nats_filter(pattern, "*"))
    return types, keyed


def _type_matches(pattern: list[str], type_tokens: list[str]) -> bool:
    for i, token in enumerate(type_tokens):
        if i >= len(pattern):
            return False
        if pattern[i] == ">":
            return True
        if pattern[i] not in ("*", token):
            return False
    return True


def events_sql(
    types: Sequence[str],
    start: datetime | None,
    end: datetime | None,
    tenant: str | None,
    exclude_tenant: str | None,
    available: Sequence[str],
) -> tuple[str, list[Any]]:
    """The query for ``read_events``: only the tables holding ``types``, in replay order."""
    tables = sorted({TABLE_FOR_TYPE[t].name for t in types} & set(available))
    if not tables:
        return "SELECT NULL AS doc WHERE false", []
    ranged, params = range_clauses(start, end, tenant)
    where = [f"type IN ({', '.join(_literal(t) for t in types)})", *ranged]
    if exclude_tenant is not None:
        params.append(exclude_tenant)
        where.append(f"tenant <> ${len(params)}")
    cols = ", ".join(quote(c) for c in ENVELOPE_NAMES)
    union = " UNION ALL ".join(f"SELECT {cols} FROM main.{quote(t)} WHERE {' AND '.join(where)}" for t in tables)
    sql = f"SELECT {_EVENT_JSON} AS doc FROM ({union}) ORDER BY time, {stream_rank_sql()}, seq NULLS FIRST, id"
    return sql, params


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_events(
    archive: Archive,
    *,
    patterns: Sequence[str] = (">",),
    start: datetime | None = None,
    end: datetime | None = None,
    tenant: str | None = None,
    exclude_tenant: str | None = None,
) -> Iterator[Event]:
    """Archived events matching ``patterns`` (type space) in replay order, decoded and validated."""
    types, keyed = types_for(patterns)
    sql, params = events_sql(types, start, end, tenant, exclude_tenant, archive.tables())
    validate = EVENT_ADAPTER.validate_json
    for batch in archive.batches(sql, params):
        docs = batch.column(0).to_pylist()
        if not keyed:
            for doc in docs:
                yield validate(doc)
            continue
        for doc in docs:
            event = validate(doc)
            subject = nats_subject(event.tenant, event.type, event.subject)
            if any(subject_matches(f, subject) for f in keyed):
                yield event


def replay_run(
    archive: Archive,
    processor: Processor[S],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    tenant: str | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    rows: bool = True,
) -> PureRun[None]:
    """Run ``processor`` over its ``inputs`` from the archive exactly as the live runner folds
    them (``processors.runtime.run_partitioned``: same state partitions, same skipping of
    repeated ids), so it derives the decisions, with the ids, the live run derived.
    ``partitions`` must match the runner's (``RunnerConfig.partitions``). ``rows=False``
    decodes every event even if the processor could read rows (for comparisons)."""
    plan = row_plan(processor) if rows else None
    if plan is not None:
        table, columns = plan
        row_processor: RowProcessor[Any] = processor  # type: ignore[assignment]
        rows_in = read_rows(archive, table, columns, start=start, end=end, tenant=tenant)
        _, run = run_partitioned_rows(row_processor, _gc_frozen(rows_in), partitions)
        return run
    events = read_events(archive, patterns=processor.inputs, start=start, end=end, tenant=tenant)
    _, run = run_partitioned(processor, _gc_frozen(events), partitions)
    return run


T = TypeVar("T")


def _gc_frozen(items: Iterable[T], every: int = 65_536) -> Iterator[T]:
    """``items``, keeping the cyclic GC off the decisions a long replay accumulates.

    A replay keeps every decision it derives (a million inputs of the cost
    processor give ~200k), and each full collection walks all of them again:
    measured, that was 35-40% of a 1M-event replay. ``gc.freeze()`` every
    ``every`` items moves what exists into the permanent generation, so
    collections only walk what is new. Frozen objects are still freed by
    reference counting. At the end ``gc.unfreeze()`` hands everything back,
    unless the program had frozen objects of its own before (``spine run``
    does, ``spine.gcpolicy``): unfreezing would undo that, so the replay's
    objects stay frozen too, and only reference cycles among them would wait.
    """
    ours = gc.get_freeze_count() == 0
    try:
        for i, item in enumerate(items):
            if i % every == 0:
                gc.freeze()
            yield item
    finally:
        if ours:
            gc.unfreeze()


class ArchivedCause:
    """An archived row's envelope, as much of it as a decision needs (``processors.base.Cause``)."""

    __slots__ = ("correlationid", "id", "tenant", "traceparent", "us")

    def __init__(self, id: str, us: int, tenant: str, traceparent: str | None, correlationid: str | None) -> None:
        self.id = id
        self.us = us
        self.tenant = tenant
        self.traceparent = traceparent
        self.correlationid = correlationid

    @property
    def time(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.us)


def row_plan(processor: Processor[Any]) -> tuple[TableSpec, list[str]] | None:
    """The table and typed columns a ``row_input`` processor reads, or None to decode events."""
    spec = getattr(processor, "row_input", None)
    if not isinstance(spec, RowInput) or not hasattr(processor, "handle_row"):
        return None
    types, keyed = types_for(processor.inputs)
    if keyed or types != [spec.type]:
        return None
    table = TABLE_FOR_TYPE[spec.type]
    by_field = {c.field: c for c in table.columns}
    columns = []
    for name in spec.fields:
        column = by_field.get(name)
        if column is None or column.sql_type == "JSON":
            return None
        columns.append(column.name)
    return table, columns


def read_rows(
    archive: Archive,
    table: TableSpec,
    columns: Sequence[str],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    tenant: str | None = None,
) -> Iterator[tuple[ArchivedCause, float, tuple[Any, ...]]]:
    """(cause, event time in epoch seconds, typed column values) in replay order."""
    if table.name not in archive.tables():
        return
    ranged, params = range_clauses(start, end, tenant)
    where = [f"type IN ({', '.join(_literal(t) for t in table.types)})", *ranged]
    picked = ", ".join(quote(c) for c in columns)
    sql = (
        f"SELECT id, epoch_us(time), tenant, traceparent, correlationid, {picked} FROM main.{quote(table.name)} "
        f"WHERE {' AND '.join(where)} ORDER BY time, {stream_rank_sql()}, seq NULLS FIRST, id"
    )
    for batch in archive.batches(sql, params):
        ids, uss, tenants, traces, correlations, *values = (column.to_pylist() for column in batch.columns)
        for id_, us, tenant_, trace, correlation, row in zip(
            ids, uss, tenants, traces, correlations, zip(*values, strict=True), strict=True
        ):
            yield ArchivedCause(id_, us, tenant_, trace, correlation), us / 1_000_000, row


def shadow_copy(event: Event, shadow: str) -> Event:
    """``event`` re-addressed to tenant ``shadow`` with a deterministic new id."""
    return event.model_copy(update={"id": derived_id(f"replay/{shadow}", event.id, 0), "tenant": shadow})


def check_shadow(shadow: str) -> str:
    if not _TENANT.match(shadow):
        raise QueryError(f"invalid shadow name {shadow!r}", hint="a tenant name: lowercase letters, digits, '-' or '_'")
    return shadow


async def replay_publish(
    bus: Bus,
    archive: Archive,
    *,
    shadow: str,
    start: datetime | None,
    end: datetime | None,
    patterns: Sequence[str] = (">",),
    tenant: str | None = None,
    chunk: int = 1000,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Publish shadow copies of the archived events; returns (published, dropped as duplicates)."""
    check_shadow(shadow)
    if tenant == shadow:
        raise QueryError("the shadow tenant must differ from the source tenant", hint="pick another --to-stream")
    published = duplicates = 0
    pending: list[Event] = []
    events = read_events(archive, patterns=patterns, start=start, end=end, tenant=tenant, exclude_tenant=shadow)
    for event in events:
        pending.append(shadow_copy(event, shadow))
        if len(pending) >= chunk:
            acks = await bus.publish_many(pending)
            published += len(acks)
            duplicates += sum(a.duplicate for a in acks)
            pending = []
            if on_chunk is not None:
                on_chunk(published)
    if pending:
        acks = await bus.publish_many(pending)
        published += len(acks)
        duplicates += sum(a.duplicate for a in acks)
        if on_chunk is not None:
            on_chunk(published)
    return published, duplicates
