"""``spine archive run|export|info`` and ``spine replay sql|report|run|publish``.

The archive is ``<data dir>/archive.duckdb`` (``SPINE_ARCHIVE__PATH`` moves
it). Reads are safe while ``spine archive run`` writes: they go through the
sink's query server (see ``connectors.archive.store``). duckdb and pyarrow are
imported inside the commands, off the CLI's start path.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
import typer

from spine.cli._common import broker_url, emit, emit_json, err, out, run, settings
from spine.errors import UsageError

if TYPE_CHECKING:
    from datetime import datetime

    from connectors.archive import Archive
    from processors.base import Processor

archive_app = typer.Typer(help="Archive every stream into DuckDB, and export it to Parquet.", no_args_is_help=True)
replay_app = typer.Typer(
    help="Query history with SQL, run reports, backtest processors, re-publish to a shadow tenant.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
FromOpt = Annotated[str | None, typer.Option("--from", help="Start (inclusive): 2026-11-21, ...T10:00:00Z, or 7d ago.")]
ToOpt = Annotated[str | None, typer.Option("--to", help="End (exclusive), same forms as --from.")]
TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")]


def register(app: typer.Typer) -> None:
    app.add_typer(archive_app, name="archive")
    app.add_typer(replay_app, name="replay")


def _path() -> Path:
    cfg = settings()
    return cfg.archive.file(cfg.data_dir)


def _open() -> Archive:
    from connectors.archive import Archive

    cfg = settings()
    return Archive.open(cfg.archive.file(cfg.data_dir), lock_timeout_s=cfg.archive.lock_timeout_s)


def _range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    from connectors.archive import parse_time

    return (parse_time(start) if start else None, parse_time(end) if end else None)


# -- spine archive ------------------------------------------------------------------


@archive_app.command("run", epilog="Examples: spine archive run    |    spine archive run --until-idle 5 --json")
def archive_run(
    batch_size: Annotated[int | None, typer.Option(help="Events per commit (default: settings).", min=1)] = None,
    max_wait: Annotated[float | None, typer.Option(help="Commit a partial batch after this many seconds.")] = None,
    tenant: Annotated[str, typer.Option(help="Only this tenant ('*' for all).")] = "*",
    until_idle: Annotated[
        float | None, typer.Option(help="Stop after this many seconds without a new batch (scripts, CI).", min=0.1)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Archive every stream (and the DLQ) into DuckDB until Ctrl-C or SIGTERM, then commit and stop."""
    cfg = settings()
    url = broker_url(cfg)
    path = cfg.archive.file(cfg.data_dir)
    doc = run(_sink(url, path, batch_size, max_wait, tenant, until_idle, quiet=as_json))
    if as_json:
        emit_json(doc)
    else:
        emit("Archive sink stopped", [{"field": k, "value": v} for k, v in doc.items()], False)


async def _sink(
    url: str,
    path: Path,
    batch_size: int | None,
    max_wait: float | None,
    tenant: str,
    until_idle: float | None,
    *,
    quiet: bool,
) -> dict[str, Any]:
    import streams
    from connectors.archive import Archive, SinkStats, run_sink, sink_bus_config
    from spine.gcpolicy import freeze_startup_heap

    cfg = settings()
    batch = batch_size or cfg.archive.batch_size
    archive = await asyncio.to_thread(Archive.open, path, read_only=False, lock_timeout_s=cfg.archive.lock_timeout_s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    last = [time.monotonic()]
    shown = [0.0]
    live = not quiet and err.is_terminal

    def progress(stats: SinkStats) -> None:
        last[0] = time.monotonic()
        line = (
            f"archived {stats.inserted:,} events ({stats.duplicates:,} repeats skipped, "
            f"{stats.dead_letters:,} dead letters) · {stats.rate:,.0f}/s · {stats.batches:,} batches"
        )
        if live:
            err.print(f"\r{line}", end="")
        elif not quiet and last[0] - shown[0] >= 5:
            shown[0] = last[0]
            err.print(line)

    async def watchdog() -> None:
        while until_idle is not None and not stop.is_set():
            await asyncio.sleep(0.1)
            if time.monotonic() - last[0] >= until_idle:
                stop.set()

    if not quiet:
        err.print(f"[dim]archiving {url} into {path} as group '{cfg.archive.group}'; Ctrl-C stops[/dim]")
    idle = asyncio.create_task(watchdog())
    try:
        async with streams.connect(url, sink_bus_config(cfg.bus, batch)) as bus:
            freeze_startup_heap()
            stats = await run_sink(
                bus,
                archive,
                stop=stop,
                batch_size=batch,
                max_wait_s=max_wait or cfg.archive.max_wait_s,
                on_batch=progress,
                group=cfg.archive.group,
                tenant=tenant,
                serve=cfg.archive.serve,
                query_timeout_s=cfg.archive.query_timeout_s,
                query_max_rows=cfg.archive.query_max_rows,
            )
    finally:
        idle.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await asyncio.to_thread(archive.close)
        if live:
            err.print()
    return {"archive": str(path), **stats.as_dict()}


@archive_app.command("export", epilog="Example: spine archive export ./history --from 7d")
def archive_export(
    directory: Annotated[Path, typer.Argument(help="Output directory (type=<type>/date=<day>/part-0.parquet).")],
    start: FromOpt = None,
    end: ToOpt = None,
    tenant: TenantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export the archive to Parquet, partitioned by event type and UTC date."""
    from connectors.archive import export_parquet

    lo, hi = _range(start, end)
    with _open() as archive:
        files = export_parquet(archive, directory, start=lo, end=hi, tenant=tenant)
    by_type: dict[str, dict[str, Any]] = {}
    for f in files:
        row = by_type.setdefault(
            f.type, {"type": f.type, "files": 0, "rows": 0, "first_day": f.date, "last_day": f.date}
        )
        row["files"] += 1
        row["rows"] += f.rows
        row["first_day"] = min(row["first_day"], f.date)
        row["last_day"] = max(row["last_day"], f.date)
    if as_json:
        emit_json([{**r, "first_day": str(r["first_day"]), "last_day": str(r["last_day"])} for r in by_type.values()])
        return
    emit(f"Exported to {directory}", list(by_type.values()), False)
    glob = f"{directory}/**/*.parquet"
    out.print(f"read it back: spine replay sql \"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning=true)\"")  # noqa: S608


@archive_app.command("info", epilog="Example: spine archive info --json")
def archive_info(as_json: JsonOpt = False) -> None:
    """Where the archive is, whether a sink serves it, rows per table and the time span."""
    from connectors.archive.serve import read_state

    path = _path()
    state = read_state(path)
    with _open() as archive:
        counts = archive.counts()
        span = archive.sql("SELECT min(time) AS first, max(time) AS last FROM events").to_pylist()[0]
    doc = {
        "path": str(path),
        "bytes": path.stat().st_size if path.exists() else 0,
        "served_by_pid": state.pid if state else None,
        "first_event": span["first"],
        "last_event": span["last"],
        "rows": counts,
    }
    if as_json:
        emit_json(doc)
        return
    rows = [{"field": k, "value": v} for k, v in doc.items() if k != "rows"]
    emit(f"Archive {path}", rows, False)
    emit("Rows per table", [{"table": k, "rows": v} for k, v in counts.items() if v], False)


# -- spine replay sql / report ------------------------------------------------------

Format = Literal["table", "csv", "json", "parquet"]


@replay_app.command(
    "sql",
    epilog="""Examples:

  spine replay sql "SELECT model, sum(cost_usd) FROM llm_calls GROUP BY ALL"

  spine replay sql "SELECT * FROM market_ticks WHERE symbol = 'BTC-USD'" --format parquet --out ticks.parquet

Tables: events, market_ticks, llm_calls, session_events, node_heartbeats, decisions, alerts, dead_letters, ...""",
)
def replay_sql(
    query: Annotated[str, typer.Argument(help="One SELECT over the archive's views.")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = "table",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
    max_rows: Annotated[int, typer.Option(help="Rows shown in a table (files get all).", min=1)] = 200,
    as_json: JsonOpt = False,
) -> None:
    """Run SQL over the archive (read-only; safe while the sink writes)."""
    if as_json:
        fmt = "json"
    if fmt == "parquet" and out_file is None:
        raise UsageError("--format parquet needs --out FILE")
    with _open() as archive:
        table = archive.sql(query)
    _write_table(table, fmt, out_file, "Query result", max_rows)


def _write_table(table: Any, fmt: Format, out_file: Path | None, title: str, max_rows: int) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert out_file is not None
        pq.write_table(table, out_file, compression="zstd")
        err.print(f"wrote {table.num_rows:,} rows to {out_file}")
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, str(out_file) if out_file else sys.stdout.buffer)
        sys.stdout.flush()
    elif fmt == "json":
        data = orjson.dumps(table.to_pylist(), option=orjson.OPT_INDENT_2, default=_json_default) + b"\n"
        if out_file:
            out_file.write_bytes(data)
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    else:
        rows = table.slice(0, max_rows).to_pylist()
        emit(title, rows, False, columns=table.column_names)
        if table.num_rows > max_rows:
            err.print(f"[dim]showing {max_rows:,} of {table.num_rows:,} rows (--max-rows, or --format csv)[/dim]")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            import base64

            return base64.b64encode(value).decode()
    return str(value)


@replay_app.command("report", epilog="Examples: spine replay report cost --from 7d    |    spine replay report")
def replay_report(
    name: Annotated[str | None, typer.Argument(help="Report name; none lists them.")] = None,
    start: FromOpt = None,
    end: ToOpt = None,
    tenant: TenantOpt = None,
    show_sql: Annotated[bool, typer.Option("--sql", help="Print the report's SQL instead of running it.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Built-in reports: cost, latency, alerts, sessions, dead-letters, volume."""
    from connectors.archive.reports import REPORTS, report, run_report

    if name is None:
        emit("Reports", [{"name": r.name, "title": r.title, "what": r.description} for r in REPORTS.values()], as_json)
        return
    lo, hi = _range(start, end)
    chosen = report(name)
    if show_sql:
        out.print(chosen.sql(lo, hi, tenant), markup=False)
        return
    with _open() as archive:
        table = run_report(archive, name, start=lo, end=hi, tenant=tenant)
    _write_table(table, "json" if as_json else "table", None, chosen.title, 1000)


# -- spine replay run / publish -----------------------------------------------------


@replay_app.command(
    "run",
    epilog="""Examples:

  spine replay run cost --from 7d --config prices.toml

  spine replay run alerting --from 2026-11-14 --to 2026-11-21 --out events > fired.jsonl

PROCESSOR is a registered name, or module:factory for your own (factory(config) -> Processor).""",
)
def replay_run_cmd(
    processor: Annotated[str, typer.Argument(help="Processor name (see the error for the known ones).")],
    start: FromOpt = None,
    end: ToOpt = None,
    tenant: TenantOpt = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Processors config file (TOML/YAML): its [NAME] table.")
    ] = None,
    out_mode: Annotated[
        Literal["table", "events"], typer.Option("--out", help="table, or events: CloudEvents JSON lines.")
    ] = "table",
    partitions: Annotated[int, typer.Option(help="State partitions: the live runner's setting.", min=1)] = 8,
    as_json: JsonOpt = False,
) -> None:
    """Backtest: run a processor over archived events in event-time order, with no broker."""
    from connectors.archive import replay_run
    from schemas import encode

    built = _build_processor(processor, config)
    lo, hi = _range(start, end)
    began = time.perf_counter()
    with _open() as archive:
        result = replay_run(archive, built, start=lo, end=hi, tenant=tenant, partitions=partitions)
    seconds = time.perf_counter() - began
    summary = {
        "processor": built.name,
        "handled": result.handled,
        "decisions": len(result.decisions),
        "rejected": len(result.rejected),
        "seconds": round(seconds, 3),
    }
    if as_json:
        emit_json(
            {
                **summary,
                "events": [e.model_dump(mode="json") for e in result.decisions],
                "rejections": [{"id": e.id, "kind": r.kind, "reason": r.reason} for e, r in result.rejected],
            }
        )
        return
    if out_mode == "events":
        sys.stdout.buffer.write(b"".join(encode(e) + b"\n" for e in result.decisions))
        sys.stdout.flush()
    else:
        rows = [
            {
                "time": e.time.strftime("%Y-%m-%d %H:%M:%S"),
                "type": e.type,
                "subject": e.subject,
                "decision": orjson.dumps(e.data.model_dump(mode="json", exclude_none=True)).decode()[:160],
            }
            for e in result.decisions
        ]
        emit(f"Decisions {built.name} would have made", rows, False, columns=["time", "type", "subject", "decision"])
    rate = result.handled / seconds if seconds > 0 else 0.0
    err.print(
        f"[dim]{built.name}: {result.handled:,} events in {seconds:.2f}s ({rate:,.0f}/s) -> "
        f"{len(result.decisions):,} decisions, {len(result.rejected):,} rejected[/dim]"
    )


def _build_processor(name: str, config_file: Path | None) -> Processor[Any]:
    """A registered processor, built as `spine run` builds it (its [NAME] table of the
    processors config file; cost priced from litellm's table unless the config pins one),
    or ``module:factory`` called with the whole config file."""
    if ":" not in name:
        from spine.processes import build_processor, processor_config

        return build_processor(name, settings(), processor_config(name, config_file))
    import importlib

    from spine.settings import load_config_file

    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load processor factory {name!r}: {exc}", hint="module:function, importable") from exc
    return factory(load_config_file(config_file) if config_file else None)  # type: ignore[no-any-return]


@replay_app.command(
    "publish",
    epilog="Example: spine replay publish --from 2026-11-14 --to 2026-11-21 --to-stream shadow\n\n"
    "Then: spine consume '>' --tenant shadow --group my-shadow-consumer --from-start",
)
def replay_publish_cmd(
    start: Annotated[str, typer.Option("--from", help="Start (inclusive).")],
    end: Annotated[str, typer.Option("--to", help="End (exclusive).")],
    to_stream: Annotated[str, typer.Option("--to-stream", help="Shadow tenant that receives the copies.")] = "shadow",
    pattern: Annotated[str, typer.Option(help="Type pattern: 'market.>', 'llm.call', '>' (all but DLQ).")] = ">",
    tenant: TenantOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-publish archived events onto the bus under a shadow tenant, for live consumers to re-process.

    Copies keep type, subject, time and payload; they get the shadow tenant and new deterministic
    ids, so the original tenant's consumers never see them.
    """
    from connectors.archive import replay_publish

    lo, hi = _range(start, end)
    cfg = settings()

    async def go() -> tuple[int, int]:
        import streams

        with _open() as archive:
            async with streams.connect(broker_url(cfg), cfg.bus) as bus:
                return await replay_publish(
                    bus, archive, shadow=to_stream, start=lo, end=hi, patterns=(pattern,), tenant=tenant
                )

    published, duplicates = run(go())
    doc = {"shadow_tenant": to_stream, "published": published, "duplicates": duplicates}
    if as_json:
        emit_json(doc)
        return
    out.print(
        f"published {published:,} copies to tenant '{to_stream}' ({duplicates:,} already there); "
        f"consume them with: spine consume '{pattern}' --tenant {to_stream} --group <name> --from-start"
    )
