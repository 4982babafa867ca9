"""The archive's tables and views, derived from the payload models.

One table per payload model in the ``store`` schema (``store.llm_calls``,
``store.dead_letters`` for every ``dlq.*`` type, ...). Each row holds the
envelope columns, the broker position it came from, the payload exactly as
JSON (``data``, what replays decode) and one typed column per payload field,
filled by DuckDB from the JSON at insert time, so SQL over the typed columns
never parses JSON. Views in ``main`` are what users query: one per table under
the same name, family views (``session_events``, ``decisions``) and ``events``
(every event, envelope + ``data``).

This module only builds SQL text; ``store`` runs it.
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from schemas.registry import EVENT_TYPES, payload_class
from streams.catalog import STREAM_ORDER, stream_for_type

SCHEMA = "store"

# Envelope and position columns every table starts with, in this order.
ENVELOPE: tuple[tuple[str, str], ...] = (
    ("id", "VARCHAR"),
    ("type", "VARCHAR"),
    ("source", "VARCHAR"),
    ("subject", "VARCHAR"),
    ("time", "TIMESTAMPTZ"),
    ("tenant", "VARCHAR"),
    ("dataschema", "VARCHAR"),
    ("traceparent", "VARCHAR"),
    ("causationid", "VARCHAR"),
    ("correlationid", "VARCHAR"),
    ("stream", "VARCHAR"),
    ("seq", "BIGINT"),
    ("data", "VARCHAR"),
)
ARCHIVED_AT = ("archived_at", "TIMESTAMPTZ")
ENVELOPE_NAMES = tuple(name for name, _ in ENVELOPE)
RESERVED = {*ENVELOPE_NAMES, ARCHIVED_AT[0]}

# Replays read events in event-time order; equal times go by stream in
# ``STREAM_ORDER`` (the runner's merge uses the same), then by broker sequence.

# The explicit table (and view) name of every event type.
TABLE_OF_TYPE: dict[str, str] = {
    "market.tick": "market_ticks",
    "session.started": "session_starts",
    "session.state": "session_states",
    "session.message": "session_messages",
    "session.tool_call": "session_tool_calls",
    "session.heartbeat": "session_heartbeats",
    "node.heartbeat": "node_heartbeats",
    "node.backlog": "node_backlogs",
    "llm.call": "llm_calls",
    "config.provider": "provider_configs",
    "decision.route": "route_decisions",
    "decision.cost": "cost_decisions",
    "decision.budget": "budget_decisions",
    "decision.alert": "alerts",
    "decision.scale": "scale_decisions",
    "decision.command": "commands",
    "dlq.undecodable": "dead_letters",
    "dlq.max_deliver": "dead_letters",
    "dlq.rejected": "dead_letters",
    "dlq.late": "dead_letters",
}

# Views over several tables: name -> (tables, description).
FAMILY_VIEWS: dict[str, tuple[str, ...]] = {
    "session_events": (
        "session_starts",
        "session_states",
        "session_messages",
        "session_tool_calls",
        "session_heartbeats",
    ),
    "decisions": (
        "route_decisions",
        "cost_decisions",
        "budget_decisions",
        "alerts",
        "scale_decisions",
        "commands",
    ),
}


@dataclass(frozen=True, slots=True)
class Column:
    """A typed payload column: ``field`` of the JSON payload as ``sql_type``."""

    name: str
    field: str
    sql_type: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One physical table and the event types it stores."""

    name: str
    types: tuple[str, ...]
    columns: tuple[Column, ...]
    # "time": a repeat of an id has the same event time, so the duplicate check
    # only reads the batch's time range (zone maps skip the rest). "all": dead
    # letters carry the wall-clock time they were made, so check every row.
    dedup: Literal["time", "all"]

    @property
    def qualified(self) -> str:
        return f"{SCHEMA}.{quote(self.name)}"

    def create_sql(self) -> str:
        cols = [f"{quote(n)} {t}" for n, t in (*ENVELOPE, ARCHIVED_AT)]
        cols += [f"{quote(c.name)} {c.sql_type}" for c in self.columns]
        return f"CREATE TABLE IF NOT EXISTS {self.qualified} ({', '.join(cols)})"

    def insert_sql(self, batch: str, *, check: bool = True) -> str:
        """Insert the rows of Arrow table ``batch`` (all of them this table's) not stored yet. Parameters:
        ``$1`` the rows' ``archived_at``, then ``dedup_params``. Without ``check``, insert
        them all, only ``$1``: for rows the caller knows are new (``store.Archive.write``:
        every row later than the newest stored one).

        ``archived_at`` is a parameter rather than ``now()`` so that the statement can be
        prepared once (``store`` does): DuckDB binds a statement calling ``now()`` again on
        every execution, and binding is most of a 5000-row insert's fixed cost.

        The payload is parsed once per row into a struct that ``unnest`` spreads over
        the typed columns: DuckDB binds that in well under half the time of one
        ``struct_extract`` per column (benchmarks/archive.py, ``write_path``)."""
        struct = "{" + ", ".join(f'"{c.field}": "{c.sql_type}"' for c in self.columns) + "}"
        names = [*ENVELOPE_NAMES, ARCHIVED_AT[0], *(c.name for c in self.columns)]
        select = [f"b.{quote(n)}" for n in ENVELOPE_NAMES] + [f"CAST($1 AS {ARCHIVED_AT[1]})"]
        if self.columns:
            select.append(f"unnest(from_json(b.data, '{struct}'))")
        sql = (
            f"INSERT INTO {self.qualified} ({', '.join(quote(n) for n in names)}) "
            f"SELECT {', '.join(select)} FROM {batch} AS b"
        )
        if not check:
            return sql
        window = (
            " WHERE time BETWEEN CAST($2 AS TIMESTAMPTZ) AND CAST($3 AS TIMESTAMPTZ)" if self.dedup == "time" else ""
        )
        return f"{sql} ANTI JOIN (SELECT id FROM {self.qualified}{window}) AS seen ON seen.id = b.id"

    def dedup_params(self, lo: datetime, hi: datetime) -> list[datetime]:
        """The parameters of ``insert_sql`` after ``archived_at``: the batch's event-time range,
        if the check uses it."""
        return [lo, hi] if self.dedup == "time" else []

    def backfill_sql(self, column: Column) -> str:
        """Fill a column added after rows were stored, from their JSON payload."""
        getter = f"data -> '$.{column.field}'" if column.sql_type == "JSON" else f"data ->> '$.{column.field}'"
        return f"UPDATE {self.qualified} SET {quote(column.name)} = CAST({getter} AS {column.sql_type})"

    def view_sql(self) -> str:
        extra = ""
        if self.name == "dead_letters":
            extra = ", from_base64(original_base64) AS original"
        return f"CREATE OR REPLACE VIEW main.{quote(self.name)} AS SELECT *{extra} FROM {self.qualified}"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_type(annotation: Any) -> str:
    """The DuckDB type of a payload field: scalars typed, anything nested as JSON."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return sql_type(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return sql_type(args[0]) if len(args) == 1 else "JSON"
    if origin is Literal:
        kinds = {type(v) for v in get_args(annotation)}
        return sql_type(kinds.pop()) if len(kinds) == 1 else "JSON"
    if annotation is bool:
        return "BOOLEAN"
    if annotation is int:
        return "BIGINT"
    if annotation is float:
        return "DOUBLE"
    if annotation is str:
        return "VARCHAR"
    return "JSON"


def columns_of(model: type[BaseModel]) -> tuple[Column, ...]:
    """Typed columns for ``model``'s fields; a field named like an envelope column gets ``data_``."""
    return tuple(
        Column(f"data_{name}" if name in RESERVED else name, name, sql_type(field.annotation))
        for name, field in model.model_fields.items()
    )


def _build_tables() -> dict[str, TableSpec]:
    by_name: dict[str, list[str]] = {}
    for type_name in EVENT_TYPES:
        # A type added to the registry without a name here still gets a table.
        name = TABLE_OF_TYPE.get(type_name, type_name.replace(".", "_") + "_events")
        by_name.setdefault(name, []).append(type_name)
    tables = {}
    for name, type_names in by_name.items():
        models = {payload_class(t) for t in type_names}
        assert len(models) == 1, f"table {name} mixes payload models {models}"
        dedup: Literal["time", "all"] = "all" if all(t.startswith("dlq.") for t in type_names) else "time"
        tables[name] = TableSpec(name, tuple(type_names), columns_of(models.pop()), dedup)
    return tables


TABLES: dict[str, TableSpec] = _build_tables()
TABLE_FOR_TYPE: dict[str, TableSpec] = {t: spec for spec in TABLES.values() for t in spec.types}


def stream_rank_sql() -> str:
    cases = " ".join(f"WHEN '{name}' THEN {i}" for i, name in enumerate(STREAM_ORDER))
    return f"CASE stream {cases} ELSE {len(STREAM_ORDER)} END"


def family_view_sql(name: str, tables: Iterable[str]) -> str:
    """A view over several tables; columns absent from one table read as NULL."""
    parts = [f"SELECT * FROM {TABLES[t].qualified}" for t in tables]
    return f"CREATE OR REPLACE VIEW main.{quote(name)} AS " + " UNION ALL BY NAME ".join(parts)


def events_view_sql() -> str:
    """Every event: envelope, position, ``data`` and ``archived_at``, with a replay order key."""
    cols = ", ".join(quote(n) for n in (*ENVELOPE_NAMES, ARCHIVED_AT[0]))
    parts = [f"SELECT {cols} FROM {spec.qualified}" for spec in TABLES.values()]
    return (
        f"CREATE OR REPLACE VIEW main.events AS SELECT *, {stream_rank_sql()} AS stream_rank FROM ("
        + " UNION ALL ".join(parts)
        + ")"
    )


def default_stream(type_name: str) -> str:
    """The stream an event of ``type_name`` lives in (for events archived without a position)."""
    return stream_for_type(type_name).name


# The UTC day of a TIMESTAMPTZ from its microseconds: no ICU time-zone work per row,
# which makes "by day" over 10M rows ~5x faster than CAST(time AS DATE).
UTC_DAY_MACRO = "CREATE OR REPLACE MACRO utc_day(t) AS DATE '1970-01-01' + CAST(epoch_us(t) // 86400000000 AS INTEGER)"


def ddl() -> list[str]:
    """Every statement that creates the layout (idempotent)."""
    statements = [f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}", UTC_DAY_MACRO]
    statements += [spec.create_sql() for spec in TABLES.values()]
    return statements


def views() -> list[str]:
    statements = [spec.view_sql() for spec in TABLES.values()]
    statements += [family_view_sql(name, tables) for name, tables in FAMILY_VIEWS.items()]
    statements.append(events_view_sql())
    return statements


VIEW_NAMES: tuple[str, ...] = (*TABLES, *FAMILY_VIEWS, "events")


def range_clauses(start: object | None, end: object | None, tenant: str | None) -> tuple[list[str], list[object]]:
    """SQL clauses (with ``$n`` parameters) for a time range ``[start, end)`` and a tenant."""
    where: list[str] = []
    params: list[object] = []
    for value, clause in ((start, "time >= "), (end, "time < "), (tenant, "tenant = ")):
        if value is not None:
            params.append(value)
            where.append(f"{clause}${len(params)}")
    return where, params
