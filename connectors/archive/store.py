"""The Archive: one DuckDB file that the sink writes and everyone else reads.

The only module that imports ``duckdb``. DuckDB lets one process open a file
for writing, and then no other process may open it at all, not even
read-only. So reads while the sink writes work like this (measured in
``benchmarks/archive.py``; tests in ``tests/test_archive_store.py``):

1. The writer (the sink) opens the file once and keeps it: reopening per batch
   costs a checkpoint (~45 ms here), and a reader holding the file in between
   would stall ingest for as long as its query runs.
2. While it runs, the writer serves read-only queries from its own process
   (``serve.QueryServer``, 127.0.0.1, token in ``<file>.serve.json``), each on a
   fresh cursor: DuckDB's MVCC gives every query a snapshot of the batches
   committed so far while the next batch is written.
3. ``Archive.open(path)`` (read-only) goes through that server when one is
   alive, else opens the file read-only itself, retrying on a lock (a sink
   starting or stopping) until ``lock_timeout_s``. In the writer's own process
   it shares the writer's database through a cursor.
4. A writer that finds the file held by a reader waits the same way, then
   fails with ``ArchiveLocked`` naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import duckdb
import pyarrow as pa

from connectors.archive import layout, serve
from connectors.archive.batch import ARROW_SCHEMA, Incoming, Part, build
from connectors.archive.errors import ArchiveError, ArchiveLocked, ArchiveNotFound, QueryError

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection, DuckDBPyRelation

Mode = Literal["write", "read", "remote"]

_BATCH = "_archive_batch"
_READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_LOCK_HOLDER = re.compile(r"PID (\d+)")

# Writers open in this process, by resolved path: readers here share their database.
_WRITERS: dict[Path, Archive] = {}
_WRITERS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch did."""

    received: int
    inserted: dict[str, int] = field(default_factory=dict)

    @property
    def total_inserted(self) -> int:
        return sum(self.inserted.values())

    @property
    def duplicates(self) -> int:
        return self.received - self.total_inserted


class Archive:
    """The DuckDB archive of every stream; see the module docstring for how to open it."""

    def __init__(
        self,
        path: Path,
        mode: Mode,
        con: DuckDBPyConnection | None = None,
        remote: serve.ServeState | None = None,
        *,
        shared: bool = False,
    ) -> None:
        self.path = path
        self.mode = mode
        self._con = con
        self._remote = remote
        self._shared = shared  # a cursor on a writer's connection: read-only by checking statements
        self._lock = threading.Lock()  # the write transaction, and closing
        # Readers' cursors come from a connection of their own, so a query can start while
        # a batch is being written (DuckDB connection objects are not thread-safe).
        self._cursors = con.cursor() if con is not None and mode == "write" else con
        self._cursors_lock = threading.Lock()
        self._scratch: DuckDBPyConnection | None = None
        self._tables: list[str] | None = None
        # The writer's newest stored event time per "time"-deduplicated table (None: empty),
        # read on a table's first write and kept up to date by ``write``.
        self._newest: dict[str, datetime | None] = {}
        self._batch = _Batch()  # what the writer's inserts read as _BATCH
        self._prepared: set[str] = set()  # the names of the inserts prepared on the writer's connection

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, *, read_only: bool = True, lock_timeout_s: float = 10.0) -> Archive:
        """Open the archive at ``path``: the writer creates it and its layout; readers need it to exist."""
        path = Path(path)
        return cls._open_reader(path, lock_timeout_s) if read_only else cls._open_writer(path, lock_timeout_s)

    @classmethod
    def _open_writer(cls, path: Path, timeout: float) -> Archive:
        key = path.resolve()
        with _WRITERS_LOCK:
            if key in _WRITERS:
                raise ArchiveLocked(f"{path} is already open for writing in this process")
        path.parent.mkdir(parents=True, exist_ok=True)
        con = _connect(path, read_only=False, timeout=timeout)
        try:
            # Each checkpoint rewrites the table's last, partly filled row group; checkpointing
            # by 256 MB of WAL instead of DuckDB's 16 MB cut the write path's CPU by a third
            # (benchmarks/archive.py). A graceful close checkpoints whatever is left.
            con.execute("SET checkpoint_threshold = '256MB'")
            # A 5000-row insert spread over DuckDB's threads costs ~1 us/event more CPU in all
            # (~15% of the write path) than on one, and the sink's event loop wants the other
            # core (benchmarks/archive.py, ``write_path``). The setting is the database's, so
            # queries served while the sink writes run on one thread too: the cost report over
            # 3M calls took 65 ms instead of 40 ms.
            con.execute("SET threads = 1")
            for statement in layout.ddl():
                con.execute(statement)
            _migrate(con)
            for statement in layout.views():
                con.execute(statement)
        except duckdb.Error as exc:
            con.close()
            raise ArchiveError(f"cannot set up the archive layout in {path}: {exc}") from exc
        archive = cls(path, "write", con)
        con.register(_BATCH, archive._batch)
        with _WRITERS_LOCK:
            _WRITERS[key] = archive
        return archive

    @classmethod
    def _open_reader(cls, path: Path, timeout: float) -> Archive:
        with _WRITERS_LOCK:
            writer = _WRITERS.get(path.resolve())
        if writer is not None:
            return writer.reader()
        if not path.exists():
            raise ArchiveNotFound(
                f"no archive at {path}", hint="run `spine archive run` (or `spine demo`) to create it"
            )
        deadline = time.monotonic() + timeout
        while True:
            state = serve.read_state(path)
            if state is not None and serve.ping(state):
                return cls(path, "remote", remote=state)
            try:
                return cls(path, "read", _connect(path, read_only=True, timeout=0))
            except ArchiveLocked:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def reader(self) -> Archive:
        """A read handle on this process's open database (MVCC snapshot per query)."""
        if self._con is None:
            raise ArchiveError("this archive is served by another process; open it with Archive.open(path)")
        return Archive(self.path, "read", self._cursor(), shared=True)

    # -- writing ---------------------------------------------------------------------
    def write(self, items: Sequence[Incoming]) -> WriteResult:
        """Store a batch in one transaction; ids already archived are skipped."""
        if self.mode != "write" or self._con is None:
            raise ArchiveError(f"{self.path} is open read-only", hint="the sink opens it with read_only=False")
        parts = build(items)
        inserted: dict[str, int] = {}
        archived_at = _timestamp(datetime.now(UTC))
        with self._lock:
            con = self._con
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    for part in parts:
                        name = part.spec.name
                        self._batch.table = part.rows
                        if self._all_new(con, part):
                            count = self._insert(con, _INSERT_NEW[name], [archived_at])
                        else:
                            window = [_timestamp(t) for t in part.spec.dedup_params(part.lo, part.hi)]
                            count = self._insert(con, _INSERT[name], [archived_at, *window])
                        inserted[name] = count
                finally:
                    self._batch.table = _EMPTY
                con.execute("COMMIT")
            except duckdb.Error as exc:
                with contextlib.suppress(duckdb.Error):  # the failed statement may have ended it
                    con.execute("ROLLBACK")
                for part in parts:  # re-read after a failure rather than trust what the cache says
                    self._newest.pop(part.spec.name, None)
                raise ArchiveError(f"writing {len(items)} events to {self.path} failed: {exc}") from exc
            for part in parts:
                if part.spec.name in self._newest:
                    newest = self._newest[part.spec.name]
                    self._newest[part.spec.name] = part.hi if newest is None else max(newest, part.hi)
        return WriteResult(len(items), inserted)

    def _insert(self, con: DuckDBPyConnection, statement: _Statement, literals: list[str]) -> int:
        """Run one of the prepared inserts; the number of rows it inserted.

        Each is prepared on its first use (and kept for the connection's life, through
        rollbacks): planning one of these inserts anew took ~2 ms, about as long as
        inserting its 5000 rows, and the executed plan reads the batch's current table
        (benchmarks/archive.py, ``write_path``). Python's client cannot pass parameters
        to ``EXECUTE``, hence the literals (``_timestamp``).
        """
        if statement.name not in self._prepared:
            con.execute(f"PREPARE {statement.name} AS {statement.sql}")
            self._prepared.add(statement.name)
        row = con.execute(f"EXECUTE {statement.name}({', '.join(literals)})").fetchone()
        return int(row[0]) if row else 0

    def _all_new(self, con: DuckDBPyConnection, part: Part) -> bool:
        """Whether every row of ``part`` is later than the newest event stored in its table.

        A repeat of an id has the same event time (``layout.TableSpec.dedup``), so such rows
        cannot be archived yet, and the insert skips the anti-join against the stored ids:
        with it, each insert builds a hash table of the whole batch (~1.8 ms per 5000 rows)
        and plans a join (benchmarks/archive.py, ``write_path``). A batch reaching back into
        stored time (a redelivery, a restart, producers' clocks apart) is checked as before.
        """
        spec = part.spec
        if spec.dedup != "time":
            return False
        if spec.name not in self._newest:
            row = con.execute(f"SELECT max(time) FROM {spec.qualified}").fetchone()
            self._newest[spec.name] = row[0] if row else None
        newest = self._newest[spec.name]
        return newest is None or part.lo > newest

    def checkpoint(self) -> None:
        """Merge the write-ahead log into the file (DuckDB also does it by size)."""
        if self._con is not None and self.mode == "write":
            with self._lock:
                self._con.execute("CHECKPOINT")

    # -- reading ---------------------------------------------------------------------
    def sql(self, query: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run one read query; the result as an Arrow table."""
        if self._remote is not None:
            return serve.query(self._remote, query, list(params or []))
        if self._shared:
            return self.read_only_query(query, params)
        con = self._cursor()
        try:
            return con.sql(query, params=list(params or [])).to_arrow_table()
        except duckdb.Error as exc:
            raise _query_error(exc, query) from exc
        finally:
            con.close()

    def batches(self, query: str, params: Sequence[Any] | None = None, rows: int = 65_536) -> Iterator[pa.RecordBatch]:
        """Stream a result in record batches (bounded memory on a local file)."""
        if self._remote is not None:
            yield from self.sql(query, params).to_batches(max_chunksize=rows)
            return
        con = self._cursor()
        try:
            try:
                reader = con.sql(query, params=list(params or [])).to_arrow_reader(rows)
            except duckdb.Error as exc:
                raise _query_error(exc, query) from exc
            yield from reader
        finally:
            con.close()

    def relation(self, query: str) -> DuckDBPyRelation:
        """A lazy DuckDB relation for ``query`` (over a fetched Arrow table when served remotely)."""
        if self._remote is not None:
            if self._scratch is None:
                self._scratch = _utc(duckdb.connect())
            return self._scratch.from_arrow(self.sql(query))
        # The writer's own connection stays the sink's: a relation gets a cursor of its own.
        con = self._cursor() if self.mode == "write" else self._con
        assert con is not None
        try:
            return con.sql(query)
        except duckdb.Error as exc:
            raise _query_error(exc, query) from exc

    def read_only_query(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout_s: float | None = None,
        max_rows: int | None = None,
    ) -> pa.Table:
        """``sql`` for the query server: only SELECT/EXPLAIN, on a fresh cursor.

        ``timeout_s`` interrupts a query that runs longer; ``max_rows`` refuses a result
        bigger than that (read batch by batch, so a huge one is never held whole): the
        server runs inside the sink's process, whose memory and CPU must stay its own.
        """
        con = self._cursor()
        timer = threading.Timer(timeout_s, con.interrupt) if timeout_s is not None else None
        try:
            try:
                statements = con.extract_statements(query)
            except duckdb.Error as exc:
                raise _query_error(exc, query) from exc
            if len(statements) != 1 or statements[0].type not in _READ_ONLY_STATEMENTS:
                raise QueryError(
                    "the archive is served read-only: one SELECT (or EXPLAIN) statement per query",
                    hint="write through the sink; stop it to run other statements on the file",
                )
            if timer is not None:
                timer.start()
            try:
                reader = con.sql(query, params=list(params or [])).to_arrow_reader(65_536)
                batches, rows = [], 0
                for batch in reader:
                    rows += batch.num_rows
                    if max_rows is not None and rows > max_rows:
                        raise QueryError(
                            f"the result has more than {max_rows:,} rows, the query server's limit",
                            hint="aggregate or add LIMIT; `spine archive export` writes everything to Parquet",
                        )
                    batches.append(batch)
                return pa.Table.from_batches(batches, schema=reader.schema)
            except duckdb.InterruptException:
                raise QueryError(
                    f"the query ran longer than {timeout_s:g} s, the query server's limit, and was stopped",
                    hint="narrow it (a time range, fewer columns) or raise SPINE_ARCHIVE__QUERY_TIMEOUT_S",
                ) from None
            except duckdb.Error as exc:
                raise _query_error(exc, query) from exc
        finally:
            if timer is not None:
                timer.cancel()
            con.close()

    def tables(self) -> list[str]:
        """The per-type tables this archive has, in layout order. A reader running newer code
        than the writer that made the file may know types the file has no table for yet."""
        if self._tables is None:
            found = self.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'")
            names = set(found.column(0).to_pylist())
            self._tables = [name for name in layout.TABLES if name in names]
        return self._tables

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        parts = " UNION ALL ".join(
            f"SELECT '{name}' AS name, count(*) AS n FROM main.{layout.quote(name)}" for name in self.tables()
        )
        table = self.sql(parts)
        return dict(zip(table["name"].to_pylist(), table["n"].to_pylist(), strict=True))

    def _cursor(self) -> DuckDBPyConnection:
        with self._cursors_lock:
            if self._cursors is None:
                raise ArchiveError(f"{self.path} is closed")
            return self._cursors.cursor()

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        if self._con is None:
            return
        if self.mode == "write":
            with _WRITERS_LOCK:
                _WRITERS.pop(self.path.resolve(), None)
        with self._lock, self._cursors_lock:
            if self._cursors is not None and self._cursors is not self._con:
                self._cursors.close()
            self._cursors = None
            self._con.close()
            self._con = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Archive({str(self.path)!r}, mode={self.mode!r})"


_EMPTY = ARROW_SCHEMA.empty_table()


class _Batch:
    """The part of a batch being inserted, as the writer's connection sees it: registered once under
    ``_BATCH`` when the writer opens, where registering each batch's table and dropping it
    again cost ~0.3 us/event (benchmarks/archive.py, ``write_path``). DuckDB takes a fresh
    Arrow stream of the current table for each statement that reads it."""

    def __init__(self) -> None:
        self.table: pa.Table = _EMPTY

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


@dataclass(frozen=True, slots=True)
class _Statement:
    """An insert the writer prepares under ``name``."""

    name: str
    sql: str


_INSERT: dict[str, _Statement] = {
    name: _Statement(f"archive_insert_checked_{i}", spec.insert_sql(_BATCH))
    for i, (name, spec) in enumerate(layout.TABLES.items())
}
_INSERT_NEW: dict[str, _Statement] = {
    name: _Statement(f"archive_insert_new_{i}", spec.insert_sql(_BATCH, check=False))
    for i, (name, spec) in enumerate(layout.TABLES.items())
}


def _timestamp(value: datetime) -> str:
    """A TIMESTAMPTZ literal: exact to the microsecond, as DuckDB stores it."""
    if value.tzinfo is None:
        raise ArchiveError(f"timestamp {value} has no time zone")
    return f"TIMESTAMPTZ '{value.isoformat()}'"


def _connect(path: Path, *, read_only: bool, timeout: float) -> DuckDBPyConnection:
    """Open the file, retrying while another process holds its lock."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" not in text.lower():
                raise ArchiveError(f"cannot open {path}: {text.splitlines()[0]}") from exc
            if time.monotonic() >= deadline:
                holder = _LOCK_HOLDER.search(text)
                who = f"process {holder.group(1)}" if holder else "another process"
                raise ArchiveLocked(
                    f"{path} is locked by {who}",
                    hint="a sink started with serve off, or a reader, holds it; stop it or retry",
                ) from exc
        except duckdb.Error as exc:
            raise ArchiveError(f"cannot open {path}: {str(exc).splitlines()[0]}") from exc
        else:
            _utc(con)
            return con
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _utc(con: DuckDBPyConnection) -> DuckDBPyConnection:
    """Timestamps print, cast to dates and partition in UTC, whatever the machine's zone."""
    con.execute("SET GLOBAL TimeZone = 'UTC'")
    return con


def _migrate(con: DuckDBPyConnection) -> None:
    """Add payload columns that models gained since the file was made, filled from ``data``."""
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE schema_name = ?", [layout.SCHEMA]
    ).fetchall()
    existing: dict[str, dict[str, str]] = {}
    for table, column, data_type in rows:
        existing.setdefault(table, {})[column] = data_type
    for spec in layout.TABLES.values():
        have = existing.get(spec.name, {})
        for column in spec.columns:
            found = have.get(column.name)
            if found is None:
                con.execute(f"ALTER TABLE {spec.qualified} ADD COLUMN {layout.quote(column.name)} {column.sql_type}")
                con.execute(spec.backfill_sql(column))
            elif found != column.sql_type:
                raise ArchiveError(
                    f"column {spec.name}.{column.name} is {found} in the archive but {column.sql_type} in the model",
                    hint=f"migrate it: ALTER TABLE {spec.qualified} ALTER {column.name} TYPE {column.sql_type}",
                )


def _query_error(exc: duckdb.Error, query: str) -> ArchiveError:
    first = str(exc).splitlines()[0]
    shown = " ".join(query.split())
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    if isinstance(exc, duckdb.ParserException | duckdb.BinderException | duckdb.CatalogException):
        return QueryError(f"{first} (in: {shown})", hint="tables and views: " + ", ".join(layout.VIEW_NAMES))
    if isinstance(exc, duckdb.InvalidInputException | duckdb.ConversionException):
        return QueryError(f"{first} (in: {shown})")
    return ArchiveError(f"query failed: {first} (in: {shown})")
