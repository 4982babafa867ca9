"""``spine cost``: spending from the cost processor's checkpointed state (not recomputed)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import typer

from spine.cli._common import broker_url, emit, run, settings
from spine.errors import UsageError

Period = Literal["today", "week", "month"]


def register(app: typer.Typer) -> None:
    app.command(
        "cost",
        epilog="Examples: spine cost today --by model    |    spine cost month --by project --tenant acme --json",
    )(cost_cmd)


async def load_states(name: str, group: str | None) -> list[Any]:
    """Every checkpointed partition state of processor ``name`` (through the bus's KV)."""
    import streams
    from processors import registry
    from streams.runner import decode_checkpoint

    cfg = settings()
    processor = registry.build(name, None)
    async with streams.connect(broker_url(cfg), cfg.bus) as bus:
        store = await bus.checkpoints()
        prefix = f"{group or name}.p"
        states = []
        for key in await store.keys(prefix):
            raw = await store.get(key)
            if raw is not None:
                states.append(processor.restore(decode_checkpoint(raw)["state"]))
    return states


def cost_cmd(
    period: Annotated[str, typer.Argument(help="today, week or month.")] = "today",
    by: Annotated[str, typer.Option(help="tenant, provider, model, project or session.")] = "model",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    on: Annotated[str | None, typer.Option("--date", help="A day in the period (default: today, UTC).")] = None,
    group: Annotated[str | None, typer.Option(help="The cost processor's checkpoint group.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Cost per provider/model/project/session for a day, week or month (event time, UTC)."""
    from processors.cost import DIMENSIONS, cost_rows
    from processors.windows import bucket_start

    periods = {"today": "day", "day": "day", "week": "week", "month": "month"}
    if period not in periods:
        raise UsageError(f"unknown period {period!r}", hint="today, week or month")
    if by not in DIMENSIONS:
        raise UsageError(f"cannot group by {by!r}", hint="by: " + ", ".join(DIMENSIONS))
    try:
        day = date.fromisoformat(on) if on else datetime.now(UTC).date()
    except ValueError:
        raise UsageError(f"--date {on!r} is not a date", hint="use YYYY-MM-DD") from None
    p = periods[period]
    bucket = bucket_start(day, p).isoformat()  # type: ignore[arg-type]
    states = run(load_states("cost", group))
    rows = cost_rows(states, p, bucket, by, tenant)  # type: ignore[arg-type]
    if not as_json and not states:
        raise UsageError("the cost processor has no state yet", hint="start it with `spine run cost`")
    title = f"Cost by {by}, {p} from {bucket} (event time, UTC)"
    if not as_json and rows:
        total = sum(r["cost_usd"] for r in rows)
        title += f": ${total:,.4f} over {sum(r['calls'] for r in rows):,} calls"
    emit(
        title,
        rows,
        as_json,
        columns=["tenant", by, "cost_usd", "calls", "input_tokens", "output_tokens", "unpriced_calls"],
    )
