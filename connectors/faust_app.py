"""Spine processors as Faust agents on Kafka (faust-streaming). The only module that imports ``faust``.

For teams that already operate Faust: ``build_app(processor, FaustSettings(...))``
returns a ``FaustHost`` whose ``app`` is an ordinary ``faust.App`` (run it with
``host.app.main()`` / ``faust -A ... worker``, or ``await host.start()`` inside
a program). Per processor it declares:

- a ``route`` agent on the processor's input topics (``StreamSpec.kafka_topic``
  of every stream its input patterns touch; value = CloudEvents JSON bytes,
  key = ``<tenant>/<subject>``) that re-keys each record by the processor's
  state partition (``checkpoint_key(name, partition_of(...))``) onto the topic
  ``<app id>-<processor>-repartition``, so each state partition is folded by
  one worker in order, whatever Kafka partition its inputs came from;
- a ``fold`` agent on that topic, and a table ``<processor>-state``: state
  partition -> the same checkpoint the native runner writes (state snapshot +
  input positions + recent input ids, ``Partition.to_checkpoint``), kept in
  Faust's changelog topic.

Each input follows the native runner's commit protocol (``streams.runner``),
one event at a time: fold with ``streams.processing.fold`` (deterministic
decision ids, duplicate inputs dropped by id, inputs at or behind the
partition's position skipped), publish the decisions and dead letters and
await the broker's acks, then write the partition's checkpoint to the table.
Faust flushes its producer (changelog included) before it commits input
offsets. A crash re-runs from the committed offsets; re-folded inputs are
skipped by position or by id, and re-published decisions carry the same ids
(consumers are idempotent on id).

Why one event at a time: ``Stream.group_by``, ``take``/``take_events`` and
batches of ``noack`` events acked later each lost records on Tansu under load
(Faust skips, and acks, records it holds while a stream is being re-balanced
or buffered). One at a time is slow (about a thousand events a second) but
holds on a single run.

Faust on Tansu (the dev broker), what it takes and what is left:

- ``processing_guarantee="at_least_once"``: ``exactly_once`` needs
  transactions, which Tansu refuses (as it refuses the idempotent producer,
  which Faust enables only for ``exactly_once``).
- The in-memory table store; the changelog, repartition and leader topics are
  created by Faust and work.
- Short group timings (``session_timeout_s``): Tansu keeps a departed member
  in the group until its session times out, so with Faust's default 60 s a
  restarted worker waits about that long to rejoin.
- Restarts lost records (1 to 40 of 150) until two Faust defects were worked around: a
  redundant ``flow_control.resume()`` at the end of recovery emptied the stream queues of
  records already fetched for the new assignment, and Faust's commit then counted them as
  handled (a missing offset just after the committed one, and offsets a seek "skipped",
  pass as gaps). ``_FlowControl`` keeps those records. And the fold resumes from the
  positions in its table, not from Faust's committed offsets: it takes each repartition
  partition strictly in offset order and seeks back over any gap.
- Tansu answers ListOffsets(latest) with the last record batch's base offset + 1, not the
  partition's end, so Faust can end a table's recovery before the last changelog writes;
  the fold then resumes from the older positions that table holds and re-folds (same ids).
  Faust recovers the table again on every rebalance and on stop, from where its last
  recovery ended: that recovery re-applied older checkpoints over newer ones the table
  held (a stopped worker's table went back by tens of calls, about one run in four under
  load). The state table (``_StateTable``) applies a changelog value only if its
  positions are not behind the value held.
- Tansu is not known to compact: the changelog keeps every checkpoint write
  and recovery reads them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

import faust
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent
from pydantic import BaseModel, ConfigDict, Field

from schemas import Event, SchemaError, decode, encode
from streams.bus import Record, Undecodable
from streams.catalog import (
    escape_token,
    kafka_key,
    nats_subject,
    stream_for_type,
    streams_for_pattern,
    subject_matches,
)
from streams.config import DEFAULT_DATA_DIR
from streams.errors import InvalidArgument
from streams.processing import DEFAULT_PARTITIONS, DEFAULT_SEEN_IDS, Partition, Processor, fold, key_function
from streams.processing import partition_of as state_partition
from streams.runner import (
    RunnerHealth,
    checkpoint_key,
    decode_checkpoint,
    encode_checkpoint,
    rejection_letter,
    undecodable_letter,
)

S = TypeVar("S")
log = logging.getLogger("spine.connectors.faust")

_UNDECODABLE_KEY = b"undecodable"


class FaustSettings(BaseModel):
    """How a processor runs under Faust (one settings object; ``broker`` is a Spine kafka:// URL)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    broker: str = Field(default="kafka://127.0.0.1:9092", description="kafka://host:port[,host2:port]")
    app_id: str | None = Field(default=None, description="Faust app id = consumer group; default spine-<processor>.")
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, description="State partitions (as the native runner).")
    topic_partitions: int = Field(default=8, ge=1, description="Kafka partitions of the repartition/changelog topics.")
    replication_factor: int = Field(default=1, ge=1, description="Of the topics Faust creates.")
    batch_max: int = Field(default=1000, ge=1, description="Events folded per commit.")
    batch_wait_s: float = Field(default=0.05, gt=0, description="Longest wait to fill a batch.")
    seen_ids: int = Field(default=DEFAULT_SEEN_IDS, ge=0, description="Recent input ids kept per partition (dedup).")
    session_timeout_s: float = Field(default=10.0, gt=0, description="Short on Tansu: it waits this for lost members.")
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    commit_interval_s: float = Field(default=2.8, gt=0, description="How often Faust commits acked offsets.")
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR / "faust",
        description="Faust's own files go in <data_dir>/<app id> (Faust's default is <app id>-data in the cwd).",
    )


def faust_brokers(url: str) -> list[str]:
    """``kafka://h1:9092,h2:9092`` -> ``["kafka://h1:9092", "kafka://h2:9092"]`` (Faust's form)."""
    parsed = urlparse(url)
    hosts = [h.strip() for h in parsed.netloc.split(",") if h.strip()]
    if parsed.scheme != "kafka" or not hosts:
        raise InvalidArgument(f"not a Kafka URL: {url!r}", hint="Kafka URLs look like kafka://host:9092[,host2:9092]")
    return [f"kafka://{host}" for host in hosts]


def input_topics(processor: Processor[Any]) -> list[str]:
    """The Kafka topics of every stream the processor's input patterns touch."""
    topics: list[str] = []
    for pattern in processor.inputs:
        for spec in streams_for_pattern(pattern):
            if spec.kafka_topic not in topics:
                topics.append(spec.kafka_topic)
    return topics


def _full(pattern: str) -> str:
    """A type-space pattern over ``<type>.<key>``: ``llm.call`` means ``llm.call.*``."""
    tokens = pattern.split(".")
    if tokens[-1] != ">" and len(tokens) == 2:
        return pattern + ".*"
    if tokens[-1] != ">" and len(tokens) == 1:
        return pattern + ".>"
    return pattern


def _headers(event: Event) -> list[tuple[str, bytes]]:
    """The Kafka transport's headers (DESIGN.md, Wire format): id, type, traceparent, content type."""
    headers = [("id", event.id.encode()), ("type", event.type.encode())]
    headers.append(("content-type", b"application/cloudevents+json"))
    if event.traceparent:
        headers.append(("traceparent", event.traceparent.encode()))
    return headers


class _FlowControl(FlowControlEvent):
    """Faust's flow control, made to drop no record that Faust then counts as handled.

    - ``resume`` empties the stream queues only if flow was suspended. Faust empties them on
      resume to drop records fetched before a rebalance, but ``Recovery._resume_streams``
      resumes the source partitions, seeks to the committed offsets and only then resumes
      flow, which recovery had already resumed: records fetched meanwhile belong to the
      current assignment and were emptied away unacked, then committed past (below).
    - ``clear`` (on stop and on revocation, just before Faust's last commit) also forgets
      Faust's offset "gaps": after a seek Faust takes any offsets it skipped over as gaps
      of a compacted topic and commits them as handled; the records behind them may be in
      the queues being emptied.
    """

    def __init__(self, app: faust.App) -> None:
        super().__init__(loop=app.loop)
        self._app = app

    def resume(self) -> None:
        was_suspended = not self.is_active()
        self._suspend.clear()
        self._resume.set()
        if was_suspended:
            self.clear()

    def clear(self) -> None:
        super().clear()
        gaps = getattr(self._app._consumer, "_gap", None)  # not started: nothing to forget
        if gaps is not None:
            gaps.clear()


class _StateTable(faust.Table):  # type: ignore[type-arg]  # faust types Table loosely
    """The state table, whose changelog recovery never moves a state partition back.

    Faust recovers a table again on every rebalance, stop included, reading the
    changelog up to the end offset the broker reports; on Tansu that end can be
    short of the last writes (the last record batch's base offset + 1), so the
    recovery ended on an older checkpoint than the table held, and a worker's
    table went back by tens of calls as it stopped. A checkpoint's positions only
    grow as its partition folds (one repartition partition feeds it, in offset
    order), so a changelog value older than the one held is not applied.
    """

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        events = list(batch)
        newest = newest_checkpoints(self.data.get, events)
        if len(newest) < len(events):
            log.info("table %s: recovery kept %d older checkpoints out", self.name, len(events) - len(newest))
        super().apply_changelog_batch(newest)


def newest_checkpoints(held: Callable[[Any], bytes | None], batch: Iterable[Any]) -> list[Any]:
    """The changelog events of ``batch`` not older than what is held for their key (deletes pass)."""
    versions: dict[Any, int] = {}
    out = []
    for event in batch:
        key, raw = event.key, event.message.value
        if raw is None:
            versions.pop(key, None)
            out.append(event)
            continue
        have = versions.get(key)
        if have is None:
            current = held(key)
            have = -1 if current is None else _checkpoint_version(current)
        version = _checkpoint_version(raw)
        if version >= have:
            out.append(event)
        versions[key] = max(version, have)
    return out


def _checkpoint_version(raw: bytes) -> int:
    return sum(int(v) for v in decode_checkpoint(raw).get("positions", {}).values())


class _App(faust.App):
    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return _FlowControl(self)


class FaustHost(Generic[S]):
    """One processor hosted by a Faust app: its agent, repartition topic and state table."""

    def __init__(self, processor: Processor[S], settings: FaustSettings | None = None) -> None:
        self.processor = processor
        self._key_of = key_function(processor)
        self.settings = settings or FaustSettings()
        self.app_id = self.settings.app_id or f"spine-{processor.name}"
        self.health = RunnerHealth(processor.name, 0)
        self._patterns = [_full(p) for p in processor.inputs]
        self._parts: dict[int, Partition[S]] = {}  # live state of partitions this worker folds
        self._next: dict[Any, int] = {}  # repartition TP -> offset the fold must see next
        self._gaps: dict[Any, tuple[int, float]] = {}  # TP -> (offset sought back to, when)
        self.app = self._build_app()

    # -- the Faust app -----------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.settings
        app = _App(
            self.app_id,
            Table=_StateTable,
            broker=faust_brokers(s.broker),
            store="memory://",
            datadir=str(s.data_dir / self.app_id),
            web_enabled=False,
            processing_guarantee="at_least_once",  # exactly_once needs transactions (Tansu refuses them)
            producer_acks=-1,
            topic_partitions=s.topic_partitions,
            topic_replication_factor=s.replication_factor,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=s.heartbeat_interval_s,
            broker_commit_interval=s.commit_interval_s,
            consumer_auto_offset_reset="earliest",
        )
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        name = self.processor.name
        source = app.topic(*input_topics(self.processor), **raw)
        self.repartition = app.topic(
            f"{self.app_id}-{name}-repartition", partitions=s.topic_partitions, internal=True, **raw
        )
        self.outputs: dict[str, Any] = {}
        # use_partitioner: the changelog partition of a key is the producer's choice for that
        # key, the same as its repartition topic partition (same key bytes, same partition count),
        # so a table key is always written and recovered where its inputs are folded.
        self.table = app.Table(
            f"{name}-state",
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=s.topic_partitions,
            use_partitioner=True,
        )
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]  # mode types it loosely

        # One event at a time, each handled completely (published and acked by the broker,
        # checkpointed) before Faust acks it. Not ``take``/``take_events`` (nor a batch of
        # ``noack`` events acked later): on Tansu those lost records under load and across restarts.
        async def route(stream: Any) -> None:
            async for event in stream.events():
                # Not awaited: Faust flushes its producer before it commits input offsets.
                await self.repartition.send(key=self._route(event.value), value=event.value, force=True)

        async def fold_batches(stream: Any) -> None:
            async for event in stream.events():
                if await self._in_order(event.message):
                    await self._commit([event])

        app.agent(source, name=f"{self.app_id}.{name}.route")(route)
        app.agent(self.repartition, name=f"{self.app_id}.{name}.fold")(fold_batches)
        app.timer(self.GAP_RETRY_S)(self._retry_gaps)
        return app

    async def _on_revoked(self, sender: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may fold these partitions next: reload from the table when they return.
        self._parts.clear()
        self._next.clear()
        self._gaps.clear()

    # -- input positions: the table, not Faust's committed offsets, says where to resume ----------
    GAP_RETRY_S = 0.5

    def _resume_offset(self, tp: Any) -> int:
        """The first offset of repartition partition ``tp`` that the table does not reflect.

        Every key folded from ``tp`` lives in the changelog partition of the same number
        (``use_partitioner``), written in fold order, and the fold takes ``tp`` strictly in
        offset order. So whatever prefix of that changelog partition the table recovered,
        the highest position for ``tp`` in it is the exact point to resume from.
        """
        key = f"{tp.topic}/{tp.partition}"
        resume = 0
        for raw in self.table.values():
            if raw is not None:
                resume = max(resume, int(decode_checkpoint(raw).get("positions", {}).get(key, 0)))
        return resume

    async def _in_order(self, message: Any) -> bool:
        """True if ``message`` is the next record of its partition; seek back over a gap.

        Faust's committed offsets cannot be trusted to resume from: on Tansu a recovered
        table can also lag the last changelog writes (Tansu reports the end offset of a
        partition as the last record batch's base offset + 1, so Faust ends recovery early).
        Records before the expected offset are already in the table (skipped); a record
        after it means records were lost on the way: seek back and let them come again.
        """
        tp = message.tp
        expected = self._next.get(tp)
        if expected is None:
            expected = self._next[tp] = self._resume_offset(tp)
        if message.offset == expected:
            self._next[tp] = expected + 1
            self._gaps.pop(tp, None)
            return True
        if message.offset > expected:
            sought, at = self._gaps.get(tp, (-1, 0.0))
            if sought != expected or time.monotonic() - at > self.GAP_RETRY_S:
                log.info(
                    "faust %s: %s offset %d arrived, expected %d: seeking back",
                    self.app_id,
                    tp,
                    message.offset,
                    expected,
                )
                await self._seek(tp, expected)
        return False

    async def _seek(self, tp: Any, offset: int) -> None:
        self._gaps[tp] = (offset, time.monotonic())
        await self.app.consumer.seek(tp, offset)

    async def _retry_gaps(self) -> None:
        # A seek can lose to records already in flight (Faust drops a re-read record behind
        # the last one it read), and then nothing arrives to trigger another: retry here.
        now = time.monotonic()
        for tp, (offset, at) in list(self._gaps.items()):
            if now - at > self.GAP_RETRY_S and tp in self.app.consumer.assignment():
                await self._seek(tp, offset)

    def _route(self, value: bytes) -> bytes:
        """Repartition key: the state partition of the event (undecodable ones share one key)."""
        try:
            event = decode(value)
        except SchemaError:
            return _UNDECODABLE_KEY
        p = state_partition(self._key_of(event), self.settings.partitions)
        return checkpoint_key(self.processor.name, p).encode()

    def _partition(self, p: int) -> Partition[S]:
        part = self._parts.get(p)
        if part is None:
            raw = self.table.get(checkpoint_key(self.processor.name, p).encode())
            if raw is None:
                part = Partition(p, self.processor.initial_state())
            else:
                part = Partition.from_checkpoint(self.processor, decode_checkpoint(raw))
            self._parts[p] = part
        return part

    def _output_topic(self, event: Event) -> Any:
        topic = stream_for_type(event.type).kafka_topic
        channel = self.outputs.get(topic)
        if channel is None:
            channel = self.outputs[topic] = self.app.topic(topic, key_serializer="raw", value_serializer="raw")
        return channel

    # -- one batch: fold, publish, checkpoint -------------------------------------------------
    async def _commit(self, events: Sequence[Any]) -> None:
        name = self.processor.name
        outputs: list[Event] = []
        touched: set[int] = set()
        for fevent in events:
            message = fevent.message
            position_key = f"{message.topic}/{message.partition}"
            seq = message.offset + 1  # 1-based like the Bus, so 0 means "nothing folded"
            raw: bytes = fevent.value
            try:
                event = decode(raw)
            except SchemaError as exc:
                subject = (message.key or b"").decode(errors="replace")
                letter = Undecodable(self._input_stream(), seq, subject, raw, str(exc), message.partition)
                outputs.append(undecodable_letter(name, letter))
                continue
            if not any(subject_matches(p, f"{event.type}.{escape_token(event.subject)}") for p in self._patterns):
                continue
            p = state_partition(self._key_of(event), self.settings.partitions)
            part = self._partition(p)
            if part.positions.get(position_key, 0) >= seq:
                continue  # already reflected in the checkpointed state
            subject = nats_subject(event.tenant, event.type, event.subject)
            record = Record(stream_for_type(event.type).name, seq, subject, event, message.partition)
            try:
                decisions, rejects = fold(self.processor, part, event, self.settings.seen_ids)
            except Exception as exc:  # a processor bug must not stop the stream: dead-letter the input
                self.health.errors += 1
                self.health.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("processor %s failed on %s", name, event.id)
                decisions, rejects = [], []
                outputs.append(
                    rejection_letter(name, record, event, f"processor error: {type(exc).__name__}: {exc}", 0)
                )
            outputs.extend(decisions)
            for index, reject in enumerate(rejects):
                outputs.append(rejection_letter(name, record, event, reject.reason, index, reject.kind))
            part.positions[position_key] = seq
            touched.add(p)
            self.health.handled += 1
        # Publish, acked by the broker, before the state that produced it is checkpointed.
        if outputs:
            pending = [
                await self._output_topic(e).send(
                    key=kafka_key(e.tenant, e.subject), value=encode(e), headers=_headers(e), force=True
                )
                for e in outputs
            ]
            await asyncio.gather(*pending)
        dead = sum(1 for e in outputs if e.type.startswith("dlq."))
        self.health.emitted += len(outputs) - dead
        self.health.dead_lettered += dead
        # Checkpoint each touched partition into the table (its changelog is the durable copy).
        for p in sorted(touched):
            doc = self._parts[p].to_checkpoint(self.processor, self.settings.partitions)
            self.table[checkpoint_key(name, p).encode()] = encode_checkpoint(doc)
        self.health.batches += 1
        if touched:
            self.health.last_checkpoint = time.time()

    def _input_stream(self) -> str:
        """The stream an undecodable input came from (after repartitioning, only known if there is one)."""
        names = {spec.name for pattern in self.processor.inputs for spec in streams_for_pattern(pattern)}
        return names.pop() if len(names) == 1 else self.repartition.get_topic_name()

    # -- running it in-process ---------------------------------------------------------------
    async def start(self) -> None:
        """Start the app in the running loop (a Faust worker does this for ``app.main()``)."""
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()

    def partitions(self) -> dict[int, Partition[S]]:
        """The state partitions in this worker's table (for queries such as ``cost_rows``)."""
        out: dict[int, Partition[S]] = {}
        for raw in self.table.values():
            if raw is not None:
                part = Partition.from_checkpoint(self.processor, decode_checkpoint(raw))
                out[part.index] = part
        return out


def build_app(processor: Processor[S], settings: FaustSettings | None = None) -> FaustHost[S]:
    """A Faust app hosting ``processor`` (see the module docstring)."""
    return FaustHost(processor, settings)
