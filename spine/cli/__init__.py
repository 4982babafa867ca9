"""The ``spine`` command line: a thin sync shell over the async packages.

Errors are one line on stderr plus a hint (exit 2 for bad input, 1 for a
runtime failure); ``--debug`` shows the traceback. Heavy imports (nats,
litellm, duckdb) happen inside the commands that need them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from schemas.errors import SpineError
from spine.cli import admin, archive, broker, cost, decisions, demo, events, run, supervision
from spine.cli._common import State, err

app = typer.Typer(
    name="spine",
    help="Spine: an event backbone for fleets of AI agents (NATS JetStream, processors, DuckDB).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Broker URL (default: SPINE_BROKER_URL, else the embedded broker)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Data directory (default: SPINE_DATA_DIR or .spine).")
    ] = None,
) -> None:
    State.debug = debug
    State.url = url
    State.data_dir = data_dir


app.add_typer(broker.app, name="broker")
app.add_typer(admin.streams_app, name="streams")
app.add_typer(admin.dlq_app, name="dlq")
app.add_typer(admin.schemas_app, name="schemas")
events.register(app)
demo.register(app)
archive.register(app)
run.register(app)
cost.register(app)
decisions.register(app)
supervision.register(app)


def main() -> None:
    """Entry point of the ``spine`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except SpineError as exc:
        if State.debug:
            raise
        # escape: messages quote user input and name config tables like [routing]
        err.print(f"[bold red]error:[/bold red] {escape(exc.message)}", markup=True, highlight=False)
        if exc.hint:
            err.print(f"[dim]hint: {escape(exc.hint)}[/dim]")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # the last guard: one line, not a traceback
        if State.debug:
            raise
        err.print(f"[bold red]error:[/bold red] unexpected {type(exc).__name__}: {escape(str(exc))}")
        err.print("[dim]hint: rerun with --debug for the traceback, and please report it[/dim]")
        sys.exit(1)
