"""Parquet export, Hive-partitioned by event type and UTC date.

    DIR/type=llm.call/date=2026-11-21/part-0.parquet

Each ``type=`` directory holds one schema (the table's columns but ``type``,
which is in the path), so DuckDB (``read_parquet('DIR/**/*.parquet',
hive_partitioning=true, union_by_name=true)``), polars, pandas and pyarrow read
it directly. Files are written whole and renamed into place; exporting a range
again replaces the files of the days it covers and leaves the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from connectors.archive.layout import quote, range_clauses
from connectors.archive.store import Archive


@dataclass(frozen=True, slots=True)
class ExportedFile:
    type: str
    date: date
    rows: int
    path: Path


def export_parquet(
    archive: Archive,
    directory: Path,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    tenant: str | None = None,
) -> list[ExportedFile]:
    """Write every (type, day) in range to its own Parquet file; one day of one table in memory at a time."""
    where, params = _filters(start, end, tenant)
    written: list[ExportedFile] = []
    for name in archive.tables():
        view = f"main.{quote(name)}"
        parts = archive.sql(
            f"SELECT type, utc_day(time) AS day FROM {view} WHERE {where} GROUP BY ALL ORDER BY ALL", params
        )
        for type_name, day in zip(parts["type"].to_pylist(), parts["day"].to_pylist(), strict=True):
            lo = datetime.combine(day, time(0), UTC)
            table = archive.sql(
                f"SELECT * EXCLUDE (type) FROM {view} WHERE {where} AND type = ${len(params) + 1} "
                f"AND time >= ${len(params) + 2} AND time < ${len(params) + 3} ORDER BY time, seq, id",
                [*params, type_name, lo, lo + timedelta(days=1)],
            )
            target = directory / f"type={type_name}" / f"date={day.isoformat()}" / "part-0.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            pq.write_table(table, tmp, compression="zstd")
            tmp.replace(target)
            written.append(ExportedFile(type_name, day, table.num_rows, target))
    return written


def _filters(start: datetime | None, end: datetime | None, tenant: str | None) -> tuple[str, list[object]]:
    where, params = range_clauses(start, end, tenant)
    return " AND ".join(["true", *where]), params
