"""``spine run PROCESSOR``: host one processor (or the archive sink) until stopped."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from spine.cli._common import broker_url, emit, emit_json, err, run, settings

_EPILOG = """Examples:

  spine run cost                                 (one replica, all partitions)

  spine run supervisor --config processors.toml  ([supervisor] table)

  spine run cost --replicas 2 --replica 0        (this process owns half the partitions)

  spine run archive                              (the DuckDB archive sink)
"""


def register(app: typer.Typer) -> None:
    app.command("run", epilog=_EPILOG)(run_cmd)


def run_cmd(
    processor: Annotated[str, typer.Argument(help="Processor name (cost, supervisor, ...) or 'archive'.")],
    group: Annotated[str | None, typer.Option(help="Checkpoint namespace (default: the processor name).")] = None,
    replicas: Annotated[int, typer.Option(help="How many replicas share the partitions.", min=1)] = 1,
    replica: Annotated[
        int | None, typer.Option(help="Which replica this process is (default: run all replicas here).", min=0)
    ] = None,
    partitions: Annotated[int, typer.Option(help="State partitions (fixed for a processor's life).", min=1)] = 8,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Processors config file (TOML/YAML).")] = None,
    tenant: Annotated[str, typer.Option(help="Only this tenant ('*' for all).")] = "*",
    batch_max: Annotated[int, typer.Option(help="Most events per batch (one checkpoint each).", min=1)] = 5000,
    until_idle: Annotated[
        float | None, typer.Option(help="Stop after this many seconds with no new input (scripts, CI).", min=0.1)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final health as JSON.")] = False,
) -> None:
    """Run a processor as a consumer of its input streams, with exactly-once effects.

    Stops on Ctrl-C or SIGTERM after finishing and checkpointing the batch in hand.
    """
    if processor == "archive":
        from spine.cli.archive import archive_run

        archive_run(batch_size=None, max_wait=None, tenant=tenant, until_idle=until_idle, as_json=as_json)
        return
    from spine.processes import build_processor, processor_config

    cfg = settings()
    built = [build_processor(processor, cfg, processor_config(processor, config))]
    which = list(range(replicas)) if replica is None else [replica]
    built += [build_processor(processor, cfg, processor_config(processor, config)) for _ in which[1:]]
    health = run(_run(built, which, replicas, partitions, group, tenant, batch_max, until_idle, quiet=as_json))
    if as_json:
        emit_json(health)
    else:
        emit(
            f"{processor}: stopped",
            health,
            False,
            columns=[
                "replica",
                "handled",
                "emitted",
                "dead_lettered",
                "batches",
                "events_per_s",
                "errors",
                "positions",
            ],
        )


async def _run(
    processors: list[Any],
    which: list[int],
    replicas: int,
    partitions: int,
    group: str | None,
    tenant: str,
    batch_max: int,
    until_idle: float | None,
    *,
    quiet: bool,
) -> list[dict[str, Any]]:
    import streams
    from spine.gcpolicy import freeze_startup_heap
    from streams.runner import Runner, RunnerConfig

    cfg = settings()
    url = broker_url(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    name = processors[0].name
    if not quiet:
        err.print(
            f"[dim]running {name} (replicas {', '.join(map(str, which))} of {replicas}, {partitions} partitions) "
            f"on {url}; Ctrl-C stops after the batch in hand[/dim]"
        )
    async with streams.connect(url, cfg.bus) as bus:
        freeze_startup_heap()
        runners = [
            Runner(
                bus,
                proc,
                RunnerConfig(
                    partitions=partitions,
                    replicas=replicas,
                    replica=r,
                    tenant=tenant,
                    group=group,
                    batch_max=batch_max,
                ),
            )
            for proc, r in zip(processors, which, strict=True)
        ]
        tasks = [asyncio.create_task(r.run(stop)) for r in runners]
        last_total, last_change = -1, time.monotonic()
        try:
            while not stop.is_set() and not all(t.done() for t in tasks):
                await asyncio.sleep(0.2)
                total = sum(r.health.handled for r in runners)
                now = time.monotonic()
                if total != last_total:
                    last_total, last_change = total, now
                    if not quiet:
                        rate = sum(r.health.rate for r in runners)
                        err.print(f"[dim]{name}: {total:,} events handled · {rate:,.0f}/s[/dim]", end="\r")
                if until_idle is not None and now - last_change >= until_idle:
                    stop.set()
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for task in tasks:
                if not task.done():
                    task.cancel()
    if not quiet:
        err.print()
    return [r.health.as_dict() for r in runners]
