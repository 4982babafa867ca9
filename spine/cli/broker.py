"""``spine broker start|stop|status``: the embedded NATS JetStream broker, or with ``--kafka``
the Tansu Kafka-API dev broker (memory only)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from spine.cli._common import emit, emit_json, err, out, settings

app = typer.Typer(
    help="Run the embedded NATS JetStream broker (data under the data dir), or a Kafka dev broker (--kafka).",
    no_args_is_help=True,
)
KafkaOpt = Annotated[
    bool, typer.Option("--kafka", help="The Tansu Kafka-API broker instead: memory only, for development.")
]
_KAFKA_ENV = "SPINE_BUS__KAFKA__IDEMPOTENCE=false"  # Tansu refuses InitProducerId


@app.command(epilog="Examples: spine broker start --port 4333    |    spine broker start --kafka")
def start(
    port: Annotated[int | None, typer.Option(help="Port (default: SPINE_BROKER_PORT or a free one).")] = None,
    kafka: KafkaOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Start the embedded broker if it is not running, and wait until it is healthy."""
    from streams.embedded import start_detached

    cfg = settings()
    if kafka:
        _start_kafka(cfg.data_dir, port, as_json)
        return
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


def _start_kafka(data_dir: Path, port: int | None, as_json: bool) -> None:
    from streams.embedded_kafka import start_detached

    state, started = start_detached(data_dir, port)
    doc = {"url": state.url, "pid": state.pid, "started": started, "storage": "memory", "env": _KAFKA_ENV}
    if as_json:
        emit_json(doc)
        return
    verb = "started" if started else "already running:"
    out.print(f"{verb} the Tansu Kafka-API broker (pid {state.pid}) at [bold]{state.url}[/bold]")
    out.print(
        "[yellow]It keeps nothing on disk: every event is gone when it stops. For development only.[/yellow]\n"
        f"Use it with: SPINE_BROKER_URL={state.url} {_KAFKA_ENV}  (Tansu refuses the idempotent producer)"
    )


@app.command(epilog="Example: spine broker stop")
def stop(kafka: KafkaOpt = False, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Stop the embedded broker cleanly; its data stays for the next start (the Kafka dev broker keeps none)."""
    from streams import embedded, embedded_kafka

    state = (embedded_kafka.stop_detached if kafka else embedded.stop_detached)(settings().data_dir)
    name = "the Tansu Kafka broker" if kafka else "nats-server"
    if as_json:
        emit_json({"stopped": state is not None, "pid": state.pid if state else None})
    elif state is None:
        err.print(f"no embedded {'Kafka ' if kafka else ''}broker is running")
    else:
        out.print(f"stopped {name} (pid {state.pid})")


@app.command(epilog="Example: spine broker status --json")
def status(
    kafka: KafkaOpt = False, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Show whether the embedded broker runs, where, and whether JetStream is healthy."""
    from streams.embedded import healthy, read_state

    cfg = settings()
    if kafka:
        _kafka_status(cfg.data_dir, as_json)
        return
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


def _kafka_status(data_dir: Path, as_json: bool) -> None:
    from streams.embedded_kafka import kafka_ready, read_state

    state = read_state(data_dir)
    doc: dict[str, Any] = {"running": False}
    if state is not None:
        doc = {
            "running": True,
            "healthy": kafka_ready(state.port),
            "url": state.url,
            "pid": state.pid,
            "uptime_s": round(time.time() - state.started_at, 1),
            "storage": "memory (nothing on disk)",
            "log": state.log_file,
        }
    if as_json:
        emit_json(doc)
        return
    emit("Kafka dev broker", [{"key": k, "value": v} for k, v in doc.items()], False)
