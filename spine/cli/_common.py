"""What every CLI command shares: settings, the broker URL, output as table or JSON."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
from rich.console import Console
from rich.table import Table

from spine.settings import SpineSettings, load_settings

T = TypeVar("T")

# Piped output is not cut at 80 columns; errors stay on one line (soft wrap).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    """Global options (set by the root callback)."""

    debug: bool = False
    url: str | None = None
    data_dir: Path | None = None


def settings() -> SpineSettings:
    return load_settings(broker_url=State.url, data_dir=State.data_dir)


def broker_url(cfg: SpineSettings, *, announce: bool = True) -> str:
    """``SPINE_BROKER_URL``/``--url`` if set, else the embedded broker (started if needed)."""
    if cfg.broker_url:
        return cfg.broker_url
    from streams.embedded import start_detached

    state, started = start_detached(cfg.data_dir, cfg.broker_port)
    if started and announce:
        err.print(f"[dim]started the embedded NATS broker at {state.url} (data in {cfg.data_dir})[/dim]")
    return state.url


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def emit_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def emit_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)


def emit(title: str, rows: list[dict[str, Any]], as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Rows as a rich table, or one JSON list with ``--json``."""
    if as_json:
        emit_json(rows)
        return
    cols = list(columns or (rows[0].keys() if rows else []))
    emit_table(title, cols, [[row.get(c) for c in cols] for row in rows])
