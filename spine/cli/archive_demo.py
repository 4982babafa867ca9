"""The archive step of ``spine demo``: archive what the demo published, query it, backtest it.

If ``spine archive run`` already holds the archive (another terminal), the
step lets that sink do the archiving and reads through it; otherwise it runs
the sink itself until the group has caught up. Then two queries over this
run's tenant, and a backtest: the cost processor replayed from the archive
over the demo fleet's LLM calls, compared id for id with the decisions the
live runner published during the demo.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import yaml

from spine.cli._common import emit, out, settings

_TIMEOUT_S = 15.0


async def demo_archive(summary: dict[str, Any], *, quiet: bool) -> dict[str, Any]:
    """Archive the demo's events, run two queries and a backtest; return what happened."""
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
        by = "the running `spine archive run`, read through its query server"
        archived = await _wait_for_sink(path, tenant, int(summary["published"]))
    else:
        by = "a sink run for this step"
        archived = await _archive(str(summary["url"]), path, tenant, int(summary["published"]))
    say(
        f"\n[bold]8. Archive[/bold]: {archived} events of this run are in {path} "
        f"(archived by {by}, {time.monotonic() - began:.1f}s): one typed table per event type, dead letters included"
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
    backtest = results["backtest"]
    run_cmd = f"  spine replay run cost --tenant {backtest['tenant']} --config {backtest['config']}" if backtest else ""
    lines = [
        "\nQuery and replay the archive:",
        f'  spine replay sql "{queries["by_type"]}"',
        f'  spine replay sql "SELECT * FROM llm_calls {where}" --format csv',  # noqa: S608
        "  spine replay report cost        (and: latency, alerts, sessions, dead-letters, volume; --json)",
        *([run_cmd] if run_cmd else []),
        f"  spine replay publish --from 2h --to now --tenant {tenant} --to-stream shadow",
        "  spine archive export ./history && spine archive info",
        "  spine archive run               (keep archiving as events arrive; Ctrl-C stops)",
    ]
    say("\n".join(lines))
    return results


async def _archive(url: str, path: Path, tenant: str, expected: int) -> int:
    """Run the sink until the group has no lag (twice in a row) and this run's events are in."""
    import streams
    from connectors.archive import Archive, run_sink, sink_bus_config

    cfg = settings()
    archive = await asyncio.to_thread(Archive.open, path, read_only=False, lock_timeout_s=cfg.archive.lock_timeout_s)
    reader = archive.reader()
    stop = asyncio.Event()
    try:
        async with streams.connect(url, sink_bus_config(cfg.bus, cfg.archive.batch_size)) as bus:
            sink = asyncio.create_task(
                run_sink(
                    bus, archive, stop=stop, batch_size=cfg.archive.batch_size, max_wait_s=0.1, group=cfg.archive.group
                )
            )
            deadline = time.monotonic() + _TIMEOUT_S
            caught_up = 0
            while time.monotonic() < deadline and not sink.done():
                await asyncio.sleep(0.1)
                idle = (await bus.lag(cfg.archive.group)).total == 0 if _count(reader, tenant) >= expected else False
                caught_up = caught_up + 1 if idle else 0
                if caught_up >= 2:
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
    table = archive.sql("SELECT count(*) AS n FROM events WHERE tenant = $1", [tenant])
    return int(table.column(0)[0].as_py())


def _backtest(archive: Any, tenant: str, say: Any) -> dict[str, Any] | None:
    """Replay the cost processor over the demo tenant with the most LLM calls; compare with live."""
    from connectors.archive import replay_run
    from spine.processes import build_processor

    busiest = archive.sql(
        "SELECT tenant, count(*) AS n FROM llm_calls WHERE starts_with(tenant, $1) GROUP BY tenant ORDER BY n DESC",
        [tenant],
    ).to_pylist()
    if not busiest:
        say("[bold]Backtest[/bold]: this run archived no LLM calls to replay the cost processor over")
        return None
    target = busiest[0]["tenant"]
    try:
        from spine.cli.demo_processors import DEMO_CONFIG

        config = dict(DEMO_CONFIG.get("cost", {}))
    except ImportError:
        config = {}
    cfg = settings()
    config_file = cfg.data_dir / "demo-processors.yaml"  # the demo's cost config, for the printed command
    config_file.write_text(yaml.safe_dump({"cost": config}, sort_keys=False))
    began = time.perf_counter()
    result = replay_run(archive, build_processor("cost", cfg, config), tenant=target)
    seconds = time.perf_counter() - began
    live = set(
        archive.sql("SELECT id FROM decisions WHERE tenant = $1 AND source = 'processors/cost'", [target])
        .column(0)
        .to_pylist()
    )
    replayed = {e.id for e in result.decisions}
    same = len(live & replayed)
    verdict = (
        "identical, id for id, to the decisions the live runner published"
        if live == replayed
        else f"{same} of them match the {len(live)} the live runner published"
    )
    say(
        f"[bold]Backtest[/bold]: `spine replay run cost --tenant {target}` replayed {result.handled} LLM calls from "
        f"the archive in {seconds:.2f}s (no broker) -> {len(replayed)} decisions, {verdict}"
    )
    return {
        "tenant": target,
        "config": str(config_file),
        "handled": result.handled,
        "decisions": len(replayed),
        "live_decisions": len(live),
        "matching": same,
    }
