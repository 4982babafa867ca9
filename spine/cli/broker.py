"""``spine broker start|stop|status``: the embedded NATS JetStream broker."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from spine.cli._common import emit, emit_json, err, out, settings

app = typer.Typer(help="Run the embedded NATS JetStream broker (data under the data dir).", no_args_is_help=True)


@app.command(epilog="Example: spine broker start --port 4333")
def start(
    port: Annotated[int | None, typer.Option(help="Port (default: SPINE_BROKER_PORT or a free one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Start the embedded broker if it is not running, and wait until it is healthy."""
    from streams.embedded import start_detached

    cfg = settings()
    state, started = start_detached(cfg.data_dir, port or cfg.broker_port)
    doc = {"url": state.url, "pid": state.pid, "data_dir": state.data_dir, "started": started}
    if as_json:
        emit_json(doc)
    elif started:
        out.print(
            f"started nats-server (pid {state.pid}) at [bold]{state.url}[/bold], JetStream data in {state.data_dir}"
        )
    else:
        out.print(f"already running (pid {state.pid}) at [bold]{state.url}[/bold]")


@app.command(epilog="Example: spine broker stop")
def stop(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Stop the embedded broker cleanly; its data stays for the next start."""
    from streams.embedded import stop_detached

    state = stop_detached(settings().data_dir)
    if as_json:
        emit_json({"stopped": state is not None, "pid": state.pid if state else None})
    elif state is None:
        err.print("no embedded broker is running")
    else:
        out.print(f"stopped nats-server (pid {state.pid})")


@app.command(epilog="Example: spine broker status --json")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show whether the embedded broker runs, where, and whether JetStream is healthy."""
    from streams.embedded import healthy, read_state

    cfg = settings()
    state = read_state(cfg.data_dir)
    doc: dict[str, Any]
    if state is None:
        doc = {"running": False, "url": cfg.broker_url, "data_dir": str(cfg.data_dir)}
    else:
        doc = {
            "running": True,
            "healthy": healthy(state.monitor_port),
            "url": state.url,
            "pid": state.pid,
            "uptime_s": round(time.time() - state.started_at, 1),
            "data_dir": state.data_dir,
            "monitor": state.monitor_url,
            "log": state.log_file,
        }
        if cfg.broker_url:
            doc["note"] = f"SPINE_BROKER_URL={cfg.broker_url} overrides it for other commands"
    if as_json:
        emit_json(doc)
        return
    emit("Embedded broker", [{"key": k, "value": v} for k, v in doc.items()], False)
