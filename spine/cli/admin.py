"""``spine streams``, ``spine dlq`` and ``spine schemas``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from spine.cli._common import broker_url, emit, emit_json, out, run, settings
from spine.errors import UsageError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

streams_app = typer.Typer(help="Provision and inspect the streams.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and redrive dead letters.", no_args_is_help=True)
schemas_app = typer.Typer(help="Event types and their JSON Schemas.", no_args_is_help=True)


# -- streams ------------------------------------------------------------------------


@streams_app.command("apply", epilog="Example: SPINE_BUS__STREAMS__MARKET__MAX_AGE_S=86400 spine streams apply")
def streams_apply(as_json: JsonOpt = False) -> None:
    """Create or update every stream from the settings (idempotent)."""

    async def go() -> list[dict[str, Any]]:
        import streams

        cfg = settings()
        async with streams.connect(broker_url(cfg), cfg.bus) as bus:
            return [{"stream": r.stream, "action": r.action} for r in await bus.provision()]

    emit("Streams applied", run(go()), as_json)


@streams_app.command("list", epilog="Example: spine streams list --json")
def streams_list(as_json: JsonOpt = False) -> None:
    """Streams with message counts, bytes, consumer groups and their lag."""

    async def go() -> list[dict[str, Any]]:
        import streams

        cfg = settings()
        async with streams.connect(broker_url(cfg), cfg.bus) as bus:
            infos = await bus.describe()
        return [
            {
                "stream": i.name,
                "subjects": " ".join(i.subjects),
                "messages": i.messages,
                "bytes": i.bytes,
                "last_seq": i.last_seq,
                "groups": i.groups if as_json else _groups_cell(i.groups),
                "lag": sum(i.groups.values()),
            }
            for i in infos
        ]

    emit("Streams", run(go()), as_json)


def _groups_cell(groups: dict[str, int], shown: int = 4) -> str:
    busiest = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{g} (lag {n})" for g, n in busiest[:shown])
    return text + (f" +{len(busiest) - shown} more" if len(busiest) > shown else "")


# -- dead letters -----------------------------------------------------------------


async def _letters(seqs: set[int] | None = None, limit: int | None = None) -> list[Any]:
    import streams

    cfg = settings()
    found = []
    async with streams.connect(broker_url(cfg), cfg.bus) as bus:
        async for record in bus.replay("DLQ"):
            if seqs is None or record.seq in seqs:
                found.append(record)
    return found[-limit:] if limit else found


def _letter_row(record: Any) -> dict[str, Any]:
    e = record.event
    d = e.data
    return {
        "seq": record.seq,
        "time": e.time.strftime("%Y-%m-%d %H:%M:%S"),
        "kind": e.type.removeprefix("dlq."),
        "tenant": e.tenant,
        "source": f"{d.source_stream}#{d.source_sequence}",
        "group": d.group,
        "deliveries": d.deliveries,
        "reason": d.reason,
    }


@dlq_app.command("list", epilog="Example: spine dlq list --limit 20")
def dlq_list(
    limit: Annotated[int | None, typer.Option(help="Only the newest N.", min=1)] = None, as_json: JsonOpt = False
) -> None:
    """Dead letters: why each event was given up on, and where it came from."""
    emit("Dead letters", [_letter_row(r) for r in run(_letters(limit=limit))], as_json)


@dlq_app.command("show", epilog="Example: spine dlq show 3")
def dlq_show(
    seq: Annotated[int, typer.Argument(help="DLQ sequence (from `spine dlq list`).")], as_json: JsonOpt = False
) -> None:
    """One dead letter in full, with the original message."""
    found = run(_letters({seq}))
    if not found:
        raise UsageError(f"no dead letter with sequence {seq}", hint="see `spine dlq list`")
    record = found[0]
    original = record.event.data.original
    try:
        text = original.decode()
    except UnicodeDecodeError:
        text = repr(original)
    doc = {
        **_letter_row(record),
        "id": record.event.id,
        "original_subject": record.event.data.source_subject,
        "original": text,
    }
    if as_json:
        emit_json(doc)
    else:
        emit(f"Dead letter {seq}", [{"field": k, "value": v} for k, v in doc.items()], False)


@dlq_app.command("redrive", epilog="Examples: spine dlq redrive 3 4    |    spine dlq redrive --all")
def dlq_redrive(
    seqs: Annotated[list[int] | None, typer.Argument(help="DLQ sequences to redrive.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Redrive every dead letter.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead letters' original bytes back on their subject, then remove them from the DLQ."""
    if not seqs and not all_:
        raise UsageError("name the dead letters to redrive, or pass --all", hint="see `spine dlq list`")

    async def go() -> list[dict[str, Any]]:
        import streams

        records = await _letters(None if all_ else set(seqs or []))
        missing = set(seqs or []) - {r.seq for r in records}
        if missing:
            raise UsageError(f"no dead letter with sequence {sorted(missing)}", hint="see `spine dlq list`")
        cfg = settings()
        rows = []
        async with streams.connect(broker_url(cfg), cfg.bus) as bus:
            for record in records:
                data = record.event.data
                # The msg id makes a repeated redrive of the same letter a broker duplicate.
                ack = await bus.publish_raw(data.source_subject, data.original, msg_id=f"redrive-{record.event.id}")
                await bus.delete("DLQ", record.seq)
                rows.append({"dlq_seq": record.seq, "to": data.source_subject, "stream": ack.stream, "seq": ack.seq})
        return rows

    rows = run(go())
    if as_json:
        emit_json(rows)
    else:
        emit("Redriven", rows, False)


# -- schemas ------------------------------------------------------------------------


@schemas_app.command("list", epilog="Example: spine schemas list --json")
def schemas_list(as_json: JsonOpt = False) -> None:
    """Every event type, its schema id and the stream that holds it."""
    from schemas.registry import EVENT_TYPES, SCHEMA_VERSION, payload_class
    from streams.catalog import stream_for_type

    rows = [
        {
            "type": t,
            "dataschema": f"spine:{t}:{SCHEMA_VERSION}",
            "stream": stream_for_type(t).name,
            "model": payload_class(t).__name__,
        }
        for t in sorted(EVENT_TYPES)
    ]
    emit("Event types", rows, as_json)


@schemas_app.command("export", epilog="Example: spine schemas export schemas-json/")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="Where to write <type>.schema.json files.")],
    as_json: JsonOpt = False,
) -> None:
    """Write one JSON Schema (draft 2020-12) file per event type."""
    from schemas.export import export_json_schemas

    paths = export_json_schemas(directory)
    if as_json:
        emit_json([str(p) for p in paths])
    else:
        out.print(f"wrote {len(paths)} JSON Schemas to {directory}")
