"""The Archive: layout, idempotent Arrow writes, typed views, reads while the writer holds the file, export."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import types
from datetime import timedelta
from pathlib import Path
from typing import Union, get_args, get_origin

import duckdb
import pyarrow.dataset as ds
import pytest
from pydantic import BaseModel

from connectors.archive import (
    Archive,
    ArchiveLocked,
    QueryError,
    export_parquet,
    layout,
    read_events,
    run_report,
    serve,
)
from schemas import EVENT_TYPES, Event, make_event, payload_class
from schemas.samples import SAMPLES, sample_subject
from tests.archive_support import T0, archive_path, count, llm_calls

ROOT = Path(__file__).resolve().parent.parent
SECOND = timedelta(seconds=1)


def samples(tenant: str = "acme") -> list[Event]:
    return [make_event(t, SAMPLES[t], subject=sample_subject(t), tenant=tenant, source="tests") for t in SAMPLES]


@pytest.fixture
def writer(tmp_path: Path) -> Archive:
    archive = Archive.open(archive_path(tmp_path), read_only=False)
    yield archive  # type: ignore[misc]
    archive.close()


# -- layout --------------------------------------------------------------------------


def test_every_event_type_has_a_named_table_and_every_view_answers(writer: Archive) -> None:
    assert set(layout.TABLE_OF_TYPE) == set(EVENT_TYPES)
    for name in layout.VIEW_NAMES:
        assert writer.sql(f"SELECT * FROM {name} LIMIT 0").num_rows == 0


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                found += _models(ann)
            stack += list(get_args(ann))
    return found


def test_optional_payload_fields_default_to_none() -> None:
    """The archive stores payloads without their None fields; that round-trips only if
    every field that may be None also defaults to None."""
    for type_name in EVENT_TYPES:
        for model in _models(payload_class(type_name)):
            for name, field in model.model_fields.items():
                ann = field.annotation
                nullable = get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann)
                if nullable:
                    assert field.default is None, f"{model.__name__}.{name} may be None but defaults otherwise"


# -- writing ---------------------------------------------------------------------------


def test_every_type_round_trips_exactly(writer: Archive) -> None:
    events = samples()
    odd = make_event(
        "llm.call",
        {"provider": "openai", "model": "gpt-4.1 *mini>", "cost_usd": 0.1 + 0.2, "finish_reasons": ["stop", "len"]},
        tenant="acme",
        source="tests",
        traceparent=f"00-{'a' * 32}-{'b' * 16}-01",
        correlationid="corr-ü",
    )
    nan_tick = make_event("market.tick", {"venue": "v", "symbol": "X", "price": 1.5, "change_24h_pct": math.inf})
    writer.write([(e, None, None) for e in [*events, odd, nan_tick]])
    back = {e.id: e for e in read_events(writer, patterns=(">", "dlq.>"))}
    for event in [*events, odd, nan_tick]:
        assert back[event.id] == event
    assert writer.sql("SELECT cost_usd FROM llm_calls WHERE id = $1", [odd.id]).column(0)[0].as_py() == 0.1 + 0.2


def test_repeats_in_a_batch_across_batches_and_after_reopening_are_stored_once(tmp_path: Path) -> None:
    path = archive_path(tmp_path)
    events = samples()
    with Archive.open(path, read_only=False) as archive:
        first = archive.write([(e, "X", i) for i, e in enumerate(events)] + [(events[0], "X", 99)])
        assert first.total_inserted == len(events) and first.duplicates == 1
        again = archive.write([(e, None, None) for e in events])
        assert again.total_inserted == 0 and again.duplicates == len(events)
    with Archive.open(path, read_only=False) as archive:  # a restarted sink
        assert archive.write([(e, None, None) for e in events]).total_inserted == 0
        assert count(archive, "SELECT count(*) FROM events") == len(events)
        assert count(archive, "SELECT count(DISTINCT id) FROM events") == len(events)


def test_batches_later_than_everything_stored_skip_the_check_and_earlier_ones_are_checked(writer: Archive) -> None:
    calls = llm_calls([("openai", "gpt-4o", 0.01, 100.0, "ok")] * 30, "acme")  # one a minute
    assert writer.write([(e, None, None) for e in calls[:10]]).total_inserted == 10
    # Later than the newest stored call: inserted without the anti-join.
    assert writer.write([(e, None, None) for e in calls[10:20]]).total_inserted == 10
    # Reaching back into stored time (a redelivery among new events): checked, stored once.
    mixed = writer.write([(e, None, None) for e in [calls[19], *calls[20:25]]])
    assert mixed.total_inserted == 5 and mixed.duplicates == 1
    # A repeat of the newest stored event on its own (same time as the newest row).
    assert writer.write([(calls[24], None, None)]).total_inserted == 0
    # Out of order: earlier than the newest stored, not stored yet.
    assert writer.write([(e, None, None) for e in [*calls[25:], *calls[5:12]]]).total_inserted == 5
    assert count(writer, "SELECT count(*) FROM llm_calls") == 30
    assert count(writer, "SELECT count(DISTINCT id) FROM llm_calls") == 30


def test_typed_views(writer: Archive) -> None:
    events = samples()
    writer.write([(e, None, None) for e in events])
    types_of = {
        row["column_name"]: row["data_type"]
        for row in writer.sql(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'llm_calls'"
        ).to_pylist()
    }
    assert types_of["input_tokens"] == "BIGINT" and types_of["latency_ms"] == "DOUBLE"
    assert types_of["finish_reasons"] == "JSON" and types_of["time"] == "TIMESTAMP WITH TIME ZONE"
    tick = writer.sql("SELECT symbol, price, bid, stream FROM market_ticks").to_pylist()[0]
    assert tick == {"symbol": "BTC-USD", "price": 97123.5, "bid": 97120.0, "stream": "MARKET"}
    session = writer.sql("SELECT type, session_id, state, tool FROM session_events ORDER BY type").to_pylist()
    assert [r["type"] for r in session] == sorted(t for t in SAMPLES if t.startswith("session."))
    assert all(r["session_id"] == "s-42" for r in session)
    assert count(writer, "SELECT count(*) FROM decisions") == sum(t.startswith("decision.") for t in SAMPLES)
    assert writer.sql("SELECT rule, status FROM alerts").to_pylist()[0]["status"] in ("firing", "resolved")
    letter = writer.sql("SELECT original, original_base64, reason FROM dead_letters LIMIT 1").to_pylist()[0]
    assert letter["original"] and isinstance(letter["original"], bytes)


def test_a_column_added_to_a_model_is_added_and_filled_from_the_payload(tmp_path: Path) -> None:
    path = archive_path(tmp_path)
    tick = samples()[0]
    with Archive.open(path, read_only=False) as archive:
        archive.write([(tick, None, None)])
    con = duckdb.connect(str(path))
    con.execute("DROP VIEW main.market_ticks")
    con.execute("ALTER TABLE store.market_ticks DROP COLUMN venue")  # an archive from before the field existed
    con.close()
    with Archive.open(path, read_only=False) as archive:
        assert archive.sql("SELECT venue FROM market_ticks").to_pylist() == [{"venue": "binance"}]


# -- reading while the writer holds the file ------------------------------------------------------


def test_a_reader_in_the_writers_process_shares_its_database_read_only(writer: Archive) -> None:
    writer.write([(e, None, None) for e in samples()])
    with Archive.open(writer.path) as reader:
        assert reader.mode == "read"
        assert count(reader, "SELECT count(*) FROM events") == len(SAMPLES)
        with pytest.raises(QueryError, match="read-only"):
            reader.sql("DELETE FROM store.llm_calls")
    assert count(writer, "SELECT count(*) FROM llm_calls") == 1


def _in_subprocess(code: str, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


_READ = """
import sys
from connectors.archive import Archive, QueryError
with Archive.open(sys.argv[1], lock_timeout_s=0.3) as a:
    print(a.mode, a.sql("SELECT count(*) FROM events").column(0)[0].as_py())
    try:
        a.sql("DROP TABLE store.llm_calls")
    except QueryError as exc:
        print("refused:", exc.message)
"""


async def test_other_processes_read_through_the_writers_query_server(writer: Archive) -> None:
    writer.write([(e, None, None) for e in samples()])
    server = serve.QueryServer(writer)
    await server.start()
    try:
        proc = await asyncio.to_thread(_in_subprocess, _READ, writer.path)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0] == f"remote {len(SAMPLES)}"
        assert lines[1].startswith("refused:") and "read-only" in lines[1]
        assert server.queries >= 2  # the ping and the count
    finally:
        await server.close()
    assert not serve.state_file(writer.path).exists()
    assert count(writer, "SELECT count(*) FROM llm_calls") == 1


def test_without_a_query_server_a_reader_waits_then_names_the_lock_holder(writer: Archive) -> None:
    proc = _in_subprocess(_READ, writer.path)
    assert proc.returncode != 0
    assert "ArchiveLocked" in proc.stderr and f"process {os.getpid()}" in proc.stderr


def test_a_second_writer_in_one_process_is_refused(writer: Archive) -> None:
    with pytest.raises(ArchiveLocked):
        Archive.open(writer.path, read_only=False)


def test_a_missing_archive_says_how_to_make_one(tmp_path: Path) -> None:
    from connectors.archive import ArchiveNotFound

    with pytest.raises(ArchiveNotFound) as info:
        Archive.open(tmp_path / "nope.duckdb")
    assert info.value.hint and "spine archive run" in info.value.hint


# -- export and reports ----------------------------------------------------------------


def test_parquet_export_is_partitioned_by_type_and_date_and_readable(writer: Archive, tmp_path: Path) -> None:
    events = samples() + llm_calls([("openai", "gpt-4o", 0.01, 100.0, "ok")] * 3, "acme", start=T0)
    writer.write([(e, None, None) for e in events])
    out = tmp_path / "export"
    files = export_parquet(writer, out)
    assert sum(f.rows for f in files) == len(events)
    assert (out / "type=llm.call" / f"date={T0.date()}" / "part-0.parquet").exists()
    con = duckdb.connect()
    rows = con.sql(
        f"SELECT type, count(*) AS n FROM read_parquet('{out}/**/*.parquet', hive_partitioning=true, "
        "union_by_name=true) GROUP BY type"
    ).fetchall()
    assert dict(rows) == {t: (4 if t == "llm.call" else 1) for t in SAMPLES}
    table = ds.dataset(out / "type=llm.call", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 4 and "cost_usd" in table.column_names and "date" in table.column_names
    again = export_parquet(writer, out)  # idempotent: the same files, rewritten
    assert sorted(f.path for f in again) == sorted(f.path for f in files)
    assert sum(1 for _ in out.rglob("*.parquet")) == len(files)


def test_reports(writer: Archive) -> None:
    calls = llm_calls(
        [
            ("openai", "gpt-4o", 0.25, 100.0, "ok"),
            ("openai", "gpt-4o", 0.50, 300.0, "ok"),
            ("openai", "gpt-4o-mini", None, 200.0, "error"),
            ("anthropic", "claude", 1.0, 1000.0, "ok"),
        ],
        "acme",
    )
    alert = make_event(
        "decision.alert",
        {"rule": "drop", "dedup_key": "drop:BTC", "status": "firing", "value": -4.2},
        tenant="acme",
        time=T0,
    )
    session = [
        make_event("session.started", SAMPLES["session.started"], tenant="acme", time=T0),
        make_event(
            "session.state", {"session_id": "s-42", "state": "running"}, tenant="acme", time=T0 + timedelta(seconds=1)
        ),
        make_event("session.tool_call", {"session_id": "s-42", "tool": "bash", "status": "error"}, tenant="acme"),
    ]
    writer.write([(e, None, None) for e in [*calls, alert, *session]])
    cost = run_report(writer, "cost").to_pylist()
    assert [(r["provider"], r["model"], r["calls"], r["cost_usd"], r["unpriced"]) for r in cost] == [
        ("anthropic", "claude", 1, 1.0, 0),
        ("openai", "gpt-4o", 2, 0.75, 0),
        ("openai", "gpt-4o-mini", 1, None, 1),
    ]
    latency = {r["provider"]: r for r in run_report(writer, "latency").to_pylist()}
    assert latency["openai"]["p95_ms"] == pytest.approx(290.0) and latency["openai"]["error_pct"] == pytest.approx(
        33.33
    )
    assert run_report(writer, "alerts").to_pylist()[0]["value"] == -4.2
    (timeline,) = run_report(writer, "sessions").to_pylist()
    assert timeline["timeline"] == "started > running" and timeline["tool_errors"] == 1
    assert run_report(writer, "cost", tenant="other").num_rows == 0
    assert run_report(writer, "volume").num_rows >= 4


def test_a_reader_with_newer_code_than_the_file_reads_what_is_there(tmp_path: Path) -> None:
    path = archive_path(tmp_path)
    with Archive.open(path, read_only=False) as archive:
        archive.write([(e, None, None) for e in samples()])
    con = duckdb.connect(str(path))  # as if made before the market.tick type existed
    for view in ("events", "market_ticks"):
        con.execute(f"DROP VIEW main.{view}")
    con.execute("DROP TABLE store.market_ticks")
    con.close()
    with Archive.open(path) as reader:
        assert "market_ticks" not in reader.tables() and "llm_calls" in reader.tables()
        assert "market_ticks" not in reader.counts()
        assert len(list(read_events(reader))) == sum(not t.startswith(("dlq.", "market.")) for t in SAMPLES)
        assert export_parquet(reader, tmp_path / "export")


def test_served_queries_are_stopped_after_the_timeout_and_refused_beyond_the_row_limit(writer: Archive) -> None:
    writer.write([(e, None, None) for e in samples()])
    with pytest.raises(QueryError, match=r"longer than 0\.2 s"):
        writer.read_only_query("SELECT count(*) FROM range(100000000000) a", timeout_s=0.2)
    with pytest.raises(QueryError, match="more than 10 rows"):
        writer.read_only_query("SELECT * FROM range(100)", max_rows=10)
    assert writer.read_only_query("SELECT * FROM range(10)", timeout_s=5, max_rows=10).num_rows == 10
    # The cursor and the writer are fine afterwards.
    assert count(writer, "SELECT count(*) FROM llm_calls") == 1
