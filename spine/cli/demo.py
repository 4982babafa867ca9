"""``spine demo``: show, for real, everything Spine does so far.

It starts the embedded NATS broker (a real nats-server with JetStream file
storage), publishes one sample of every event family under a fresh tenant,
consumes them through a consumer group, rejects one in the handler, sends a
malformed and a non-JSON message, and shows both arriving in the DLQ with
their reasons while the group carries on.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import orjson
import typer

from spine.cli._common import broker_url, emit, out, run, settings
from spine.cli.archive_demo import demo_archive


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: spine demo")(demo)


def demo(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON summary.")] = False) -> None:
    """Run the end-to-end demo on the embedded broker (or SPINE_BROKER_URL)."""
    logging.getLogger("spine.streams.dlq").setLevel(logging.ERROR)  # the demo shows its dead letters itself
    summary = run(_demo(quiet=as_json))
    summary["archive"] = run(demo_archive(summary, quiet=as_json))
    if as_json:
        from spine.cli._common import emit_json

        emit_json(summary)


async def _demo(*, quiet: bool) -> dict[str, Any]:
    import streams
    from schemas import make_event
    from schemas.samples import SAMPLES, sample_subject

    def say(text: str) -> None:
        if not quiet:
            out.print(text)

    cfg = settings()
    url = broker_url(cfg)
    tenant = f"demo-{int(time.time()) % 100000:05d}"
    group = "demo-viewer"
    say(f"[bold]1. Broker[/bold]: {url}  (tenant for this run: [bold]{tenant}[/bold])")

    async with streams.connect(url, cfg.bus) as bus:
        await bus.provision()
        samples = [
            make_event(t, SAMPLES[t], subject=sample_subject(t), tenant=tenant, source="spine/demo")
            for t in SAMPLES
            if not t.startswith("dlq.")
        ]
        acks = await bus.publish_many(samples)
        again = await bus.publish(samples[0])
        say(
            f"[bold]2. Published[/bold] {len(samples)} events, one per type, each acked by JetStream; "
            f"re-publishing the first id was dropped as a duplicate: {again.duplicate}"
        )
        bad_subject = f"spine.{tenant}.llm.call.openai/gpt-4o"
        bad_llm = dict(SAMPLES["llm.call"], input_tokens=-5)
        malformed = orjson.dumps(
            {
                "specversion": "1.0",
                "id": "bad-1",
                "type": "llm.call",
                "source": "demo",
                "subject": "openai/gpt-4o",
                "dataschema": "spine:llm.call:1",
                "tenant": tenant,
                "data": bad_llm,
            }
        )
        await bus.publish_raw(bad_subject, malformed, msg_id=f"{tenant}-malformed")
        await bus.publish_raw(f"spine.{tenant}.market.tick.BTC-USD", b"BTC 97000 (not JSON)", msg_id=f"{tenant}-raw")
        say("[bold]3. Sent[/bold] two bad messages: an llm.call with input_tokens=-5, and a line that is not JSON")

        rows = []
        expected = len(samples)
        async for delivery in bus.subscribe(">", group=group, tenant=tenant, start="all"):
            event = delivery.event
            if event.type == "decision.command":
                await delivery.term("demo handler: refuses to act on commands")
                verdict = "term -> DLQ"
            else:
                await delivery.ack()
                verdict = "ack"
            rows.append(
                {
                    "stream": delivery.stream,
                    "seq": delivery.seq,
                    "type": event.type,
                    "subject": event.subject,
                    "handled": verdict,
                }
            )
            if len(rows) == expected:
                break
        if not quiet:
            emit(f"4. Consumed by group '{group}' (members share work; explicit acks)", rows, False)

        from schemas.envelope import DeadLetterEvent

        letters = [(r.seq, r.event) async for r in bus.replay("DLQ", tenant=tenant)]
        dlq_rows = [
            {
                "dlq_seq": seq,
                "kind": e.type,
                "source": f"{e.data.source_stream}#{e.data.source_sequence}",
                "reason": e.data.reason,
            }
            for seq, e in letters
            if isinstance(e, DeadLetterEvent)
        ]
        if not quiet:
            emit("5. Dead letters for this run: kept with their reason and original bytes", dlq_rows, False)
        lag = await bus.lag(group)
        say(f"[bold]6. Lag[/bold] of group '{group}': {lag.pending} pending, {lag.ack_pending} awaiting ack")
        published = {a.stream for a in acks}
        from spine.cli.demo_processors import demo_processors

        processors_summary = await demo_processors(bus, tenant, quiet=quiet)
        from spine.cli.demo_decisions import demo_decisions

        decisions_summary = await demo_decisions(bus, tenant, quiet=quiet)
    say(
        "\nTry next (spine is .venv/bin/spine; `source .venv/bin/activate` puts it on PATH):\n"
        "  spine streams list\n"
        "  spine dlq list\n"
        f"  spine consume '>' --group me --tenant {tenant} --from-start --limit 5\n"
        '  spine publish market.tick --data \'{"venue": "x", "symbol": "ETH-USD", "price": 3500}\'\n'
        "  spine broker stop\n"
        f"  spine cost today --by model --group cost-{tenant}-fleet --date {processors_summary['day']}\n"
        f"  spine sessions list --group supervisor-{tenant}-fleet\n"
        f"  spine routes --group routing-ops-{tenant}    (and: spine alerts --open --tenant ops-{tenant})\n"
        "  spine run cost    (and: spine run supervisor) to keep them running on everything"
    )
    return {
        "url": url,
        "tenant": tenant,
        "published": len(samples),
        "streams": sorted(published),
        "consumed": rows,
        "dead_letters": dlq_rows,
        "lag": lag.total,
        "processors": processors_summary,
        "decisions": decisions_summary,
    }
