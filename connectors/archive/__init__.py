"""The DuckDB archive of every stream: the sink, SQL over history, replays and backtests.

    from connectors.archive import Archive, read_events, replay_run
    with Archive.open(".spine/archive.duckdb") as archive:      # read-only, safe while the sink writes
        archive.sql("SELECT model, sum(cost_usd) FROM llm_calls GROUP BY ALL")   # a pyarrow.Table
        archive.relation("SELECT * FROM market_ticks")                          # a DuckDB relation
        run = replay_run(archive, processor, start=parse_time("7d"))            # decisions it would make

Modules: ``layout`` (tables and views), ``batch`` (events to Arrow),
``store`` (the Archive; the only ``duckdb`` import), ``serve`` (queries while
the sink holds the file), ``sink`` (``run_sink``), ``replay``, ``reports``,
``export`` (Parquet). Names load lazily, so ``config`` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectors.archive.config import ArchiveConfig
    from connectors.archive.errors import ArchiveError, ArchiveLocked, ArchiveNotFound, QueryError
    from connectors.archive.export import ExportedFile, export_parquet
    from connectors.archive.replay import parse_time, read_events, replay_publish, replay_run, shadow_copy
    from connectors.archive.reports import REPORTS, run_report
    from connectors.archive.sink import SinkStats, run_sink, sink_bus_config
    from connectors.archive.store import Archive, WriteResult

_EXPORTS = {
    "Archive": "store",
    "WriteResult": "store",
    "ArchiveConfig": "config",
    "ArchiveError": "errors",
    "ArchiveLocked": "errors",
    "ArchiveNotFound": "errors",
    "QueryError": "errors",
    "ExportedFile": "export",
    "export_parquet": "export",
    "parse_time": "replay",
    "read_events": "replay",
    "replay_publish": "replay",
    "replay_run": "replay",
    "shadow_copy": "replay",
    "REPORTS": "reports",
    "run_report": "reports",
    "SinkStats": "sink",
    "run_sink": "sink",
    "sink_bus_config": "sink",
}

__all__ = [
    "REPORTS",
    "Archive",
    "ArchiveConfig",
    "ArchiveError",
    "ArchiveLocked",
    "ArchiveNotFound",
    "ExportedFile",
    "QueryError",
    "SinkStats",
    "WriteResult",
    "export_parquet",
    "parse_time",
    "read_events",
    "replay_publish",
    "replay_run",
    "run_report",
    "run_sink",
    "shadow_copy",
    "sink_bus_config",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'connectors.archive' has no attribute {name!r}")
    return getattr(importlib.import_module(f"connectors.archive.{module}"), name)
