"""``spine publish`` and ``spine consume``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape

from schemas import Event, SchemaError, make_event, validate_event
from spine.cli._common import broker_url, emit_json, err, out, run, settings
from spine.errors import UsageError

_PUBLISH_EPILOG = """Examples:

  spine publish market.tick --data '{"venue": "binance", "symbol": "BTC-USD", "price": 97000}'

  spine publish llm.call --tenant acme --data '{"provider": "openai", "model": "gpt-4o", "input_tokens": 812}'

  spine publish --file events.jsonl            (CloudEvents lines)

  spine publish --file calls.jsonl --type llm.call   (bare payload lines)
"""


def register(app: typer.Typer) -> None:
    app.command(epilog=_PUBLISH_EPILOG)(publish)
    app.command(epilog="Example: spine consume 'llm.>' --group billing --from-start --limit 10")(consume)


def publish(
    type_name: Annotated[str | None, typer.Argument(metavar="TYPE", help="Event type, e.g. market.tick.")] = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Payload as a JSON object.")] = None,
    subject: Annotated[str | None, typer.Option(help="Ordering key (default: the payload's natural key).")] = None,
    tenant: Annotated[str, typer.Option(help="Tenant.")] = "default",
    source: Annotated[str, typer.Option(help="CloudEvents source.")] = "spine/cli",
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="JSON lines: CloudEvents, or payloads with TYPE.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Publish events. Everything is validated before anything is published."""
    if file is not None and data is not None:
        raise UsageError("give either --data or --file, not both")
    if file is None:
        if type_name is None or data is None:
            raise UsageError("publish needs TYPE and --data, or --file", hint="spine publish --help")
        events = [_build(type_name, _parse_json(data, "--data"), subject, tenant, source, where="--data")]
    else:
        events = _read_file(file, type_name, subject, tenant, source)
    if not events:
        raise UsageError(f"{file} holds no events")
    acks = run(_publish(events, show_progress=file is not None and not as_json))
    if as_json:
        emit_json(
            [
                {"id": e.id, "type": e.type, "stream": a.stream, "seq": a.seq, "duplicate": a.duplicate}
                for e, a in zip(events, acks, strict=True)
            ]
        )
        return
    dupes = sum(a.duplicate for a in acks)
    if len(events) == 1:
        a = acks[0]
        note = " (duplicate: already stored)" if a.duplicate else ""
        out.print(f"published {events[0].type} {events[0].id} to {a.stream} seq {a.seq}{note}")
    else:
        out.print(f"published {len(events)} events ({dupes} duplicates dropped by the broker)")


def _parse_json(text: str | bytes, where: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None


def _build(type_name: str | None, doc: Any, subject: str | None, tenant: str, source: str, *, where: str) -> Event:
    try:
        if isinstance(doc, dict) and "specversion" in doc:
            if type_name is not None and doc.get("type") != type_name:
                raise SchemaError(f"type is {doc.get('type')!r} but TYPE says {type_name!r}", field="type")
            return validate_event(doc)
        if type_name is None:
            raise SchemaError("a bare payload needs TYPE (or write CloudEvents lines)", field="type")
        if not isinstance(doc, dict):
            raise SchemaError(f"a payload must be a JSON object, got {type(doc).__name__}", field="data")
        return make_event(type_name, doc, subject=subject, tenant=tenant, source=source)
    except SchemaError as exc:
        raise UsageError(f"{where}: {exc.message}", hint=exc.hint) from None


def _read_file(path: Path, type_name: str | None, subject: str | None, tenant: str, source: str) -> list[Event]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        events.append(_build(type_name, _parse_json(line, where), subject, tenant, source, where=where))
    return events


async def _publish(events: list[Event], *, show_progress: bool) -> list[Any]:
    from rich.progress import Progress

    import streams

    cfg = settings()
    async with streams.connect(broker_url(cfg), cfg.bus) as bus:
        if not show_progress:
            return await bus.publish_many(events)
        acks: list[Any] = []
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("publishing", total=len(events))
            for i in range(0, len(events), 1000):
                chunk = events[i : i + 1000]
                acks.extend(await bus.publish_many(chunk))
                progress.advance(task, len(chunk))
        return acks


def consume(
    pattern: Annotated[str, typer.Argument(help="Type pattern: 'market.>', 'llm.call', '>' (all but DLQ).")],
    group: Annotated[str, typer.Option("--group", "-g", help="Consumer group (durable; members share work).")],
    from_start: Annotated[bool, typer.Option("--from-start", help="A new group starts at the oldest event.")] = False,
    limit: Annotated[int | None, typer.Option(help="Stop after N events.", min=1)] = None,
    wait: Annotated[float | None, typer.Option(help="Stop after this many idle seconds.", min=0.1)] = None,
    tenant: Annotated[str, typer.Option(help="Tenant ('*' for all).")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON list of events at the end.")] = False,
) -> None:
    """Consume events as a member of a consumer group, printing and acking them."""
    events = run(_consume(pattern, group, from_start, limit, wait, tenant, as_json))
    if as_json:
        emit_json([e.model_dump(mode="json") for e in events])
    else:
        err.print(f"[dim]consumed {len(events)} events as group {group}[/dim]")


async def _consume(
    pattern: str, group: str, from_start: bool, limit: int | None, wait: float | None, tenant: str, quiet: bool
) -> list[Event]:
    import streams

    cfg = settings()
    seen: list[Event] = []
    async with streams.connect(broker_url(cfg), cfg.bus) as bus:
        deliveries = bus.subscribe(pattern, group=group, tenant=tenant, start="all" if from_start else "new")
        try:
            while limit is None or len(seen) < limit:
                try:
                    delivery = await asyncio.wait_for(anext(deliveries), timeout=wait)
                except TimeoutError:
                    break
                event = delivery.event
                if not quiet:
                    out.print(
                        f"[cyan]{event.time:%Y-%m-%d %H:%M:%S}[/cyan] [bold]{event.type}[/bold] "
                        f"{escape(event.subject)} [dim]tenant={event.tenant} {delivery.stream}#{delivery.seq}[/dim] "
                        + escape(orjson.dumps(event.data.model_dump(mode="json", exclude_none=True)).decode()),
                        markup=True,
                    )
                await delivery.ack()
                seen.append(event)
        finally:
            await deliveries.aclose()  # type: ignore[attr-defined]
    return seen
