"""The archive step of ``spine demo``: archive what the demo published, query it, backtest it.

If ``spine archive run`` already holds the archive (another terminal), the
step lets that sink do the archiving and reads through it; otherwise it runs
the sink itself until the demo's events are in and the group has no lag.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from spine.cli._common import emit, out, settings

_TIMEOUT_S = 15.0
_PREFERRED = ("cost", "alerting", "scaling", "routing", "supervisor")


async def demo_archive(summary: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """Archive the demo tenant's events, run two queries and a backtest; return what happened."""
    from connectors.archive import Archive
    from connectors.archive.serve import read_state

    def say(text: str) -> None:
        if not quiet:
            out.print(text)

    cfg = settings()
    path = cfg.archive.file(cfg.data_dir)
    tenant = str(summary["tenant"])
    began = time.monotonic()
    if read_state(path) is not None:
        by = "the running `spine archive run` (read through its query server)"
        archived = await _wait_for_sink(path, tenant, int(summary["published"]))
    else:
        by = "a sink started for this step"
        archived = await _archive(str(summary["url"]), path, tenant, int(summary["published"]))
    say(
        f"[bold]Archive[/bold]: {archived} of this run's events are in {path} (archived by {by}, "
        f"{time.monotonic() - began:.1f}s), each in a typed table, dead letters included"
    )
    # Literal SQL on purpose: users copy these lines; the tenant is the demo's own name.
    where = f"WHERE tenant = '{tenant}'"
    queries = {
        "by_type": f"SELECT stream, type, count(*) AS events FROM events {where} GROUP BY ALL ORDER BY ALL",  # noqa: S608
        "dead_letters": f'SELECT type AS kind, source_stream, "group", reason FROM dead_letters {where} ORDER BY time',  # noqa: S608
    }
    titles = {"by_type": "This run's events, by stream and type", "dead_letters": "This run's dead letters"}
    results: dict[str, Any] = {"archived": archived, "path": str(path)}
    with Archive.open(path, lock_timeout_s=cfg.archive.lock_timeout_s) as archive:
        for key, sql in queries.items():
            rows = archive.sql(sql).to_pylist()
            results[key] = rows
            if not quiet:
                out.print(f'$ spine replay sql "{sql}"', markup=False)
                emit(titles[key], rows, False)
        results["backtest"] = _backtest(archive, tenant, say)
    lines = [
        "\nQuery and replay the archive:",
        f'  spine replay sql "{queries["by_type"]}"',
        f'  spine replay sql "SELECT * FROM llm_calls {where}" --format csv',  # noqa: S608
        f"  spine replay report cost --tenant {tenant}        (spine replay report: all reports)",
        f"  spine replay run {results['backtest'].get('processor') or 'NAME'} --tenant {tenant}",
        f"  spine replay publish --from 1h --to now --tenant {tenant} --to-stream shadow",
        "  spine archive export ./history && spine archive info",
        "  spine archive run                               (keep archiving; Ctrl-C stops)",
    ]
    say("\n".join(lines))
    return results


async def _archive(url: str, path: Path, tenant: str, expected: int) -> int:
    import streams
    from connectors.archive import Archive, run_sink

    cfg = settings()
    archive = await asyncio.to_thread(Archive.open, path, read_only=False, lock_timeout_s=cfg.archive.lock_timeout_s)
    reader = archive.reader()
    stop = asyncio.Event()
    try:
        async with streams.connect(url, cfg.bus) as bus:
            sink = asyncio.create_task(
                run_sink(
                    bus, archive, stop=stop, batch_size=cfg.archive.batch_size, max_wait_s=0.1, group=cfg.archive.group
                )
            )
            deadline = time.monotonic() + _TIMEOUT_S
            archived = 0
            while time.monotonic() < deadline and not sink.done():
                await asyncio.sleep(0.1)
                archived = _count(reader, tenant)
                if archived >= expected and (await bus.lag(cfg.archive.group)).total == 0:
                    break
            stop.set()
            await sink
            return _count(reader, tenant)
    finally:
        reader.close()
        await asyncio.to_thread(archive.close)


async def _wait_for_sink(path: Path, tenant: str, expected: int) -> int:
    from connectors.archive import Archive

    deadline = time.monotonic() + _TIMEOUT_S
    with Archive.open(path) as archive:
        archived = _count(archive, tenant)
        while archived < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            archived = _count(archive, tenant)
    return archived


def _count(archive: Any, tenant: str) -> int:
    table = archive.sql("SELECT count(*) AS n FROM events WHERE tenant = $1 AND stream <> 'DLQ'", [tenant])
    return int(table.column(0)[0].as_py())


def _backtest(archive: Any, tenant: str, say: Any) -> dict[str, Any]:
    from connectors.archive import replay_run
    from processors import registry

    known = registry.names()
    if not known:
        say(
            "[bold]Backtest[/bold]: no processors are registered yet; `spine replay run NAME` backtests each one "
            "over the archive as soon as it lands (cost, alerting, scaling, ...)"
        )
        return {"processor": None}
    name = next((n for n in _PREFERRED if n in known), known[0])
    result = replay_run(archive, registry.build(name, None), tenant=tenant)
    say(
        f"[bold]Backtest[/bold]: spine replay run {name} --tenant {tenant} -> {result.handled} events in, "
        f"{len(result.decisions)} decisions it would have made"
    )
    return {"processor": name, "handled": result.handled, "decisions": len(result.decisions)}
