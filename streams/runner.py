"""The runner: hosts one pure processor on any Bus, with exactly-once effects.

The processor's state is split into partitions by key (``processors.runtime``);
replica ``r`` of ``R`` owns partitions ``p % R == r``. Each partition's
checkpoint holds its state *and* the input positions that state reflects, so
state and position can never disagree.

Commit protocol, one batch at a time:

1. **Read.** Follow each input stream in order from the lowest position any
   owned partition has checkpointed (``Bus.follow``: no group, no acks; the
   positions are ours). Collect up to ``batch_max`` records or ``batch_wait_s``.
   Several input streams are merged into event-time order
   (``streams.ordering``); records held back for it are not folded yet.
2. **Fold.** For each record: skip it if its partition is not ours, or if the
   partition's position for that stream is already at or past it (it is
   reflected in the state). Otherwise fold it (``processors.runtime.fold``)
   and advance the partition's position. Outputs get deterministic ids
   (``derived_id(processor, input id, index)``); rejections become dead
   letters with deterministic ids too. Undecodable inputs are dead-lettered
   by replica 0.
3. **Publish.** Publish every output of the batch and wait for the broker's
   acks (``publish_many``).
4. **Checkpoint.** Write each touched partition's checkpoint (state +
   positions + recent input ids) to the checkpoint store, one key per
   partition.

Steps 3 and 4 of batch N run while batch N+1 is read and folded (one batch
in flight; batch N+1's step 3 starts only after batch N's step 4), so the
broker's round trips overlap the CPU work. Step 2 takes each touched
partition's checkpoint as of the end of its batch, before the next fold.

A crash anywhere re-runs from the last checkpoint: before 3 nothing escaped;
between 3 and 4 the batch is folded again and re-publishes the *same ids*,
which the broker drops within its duplicate window (and every consumer of
decisions is idempotent on id beyond it); in the middle of 4 the partitions
already written skip the batch by position and the others redo it. No input
is lost (positions only move in step 4, after publish) and none is counted
twice (state and position move together).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from schemas import Event, derived_id, encode
from streams.bus import Bus, CheckpointStore, Followed, Record, RowRecord, Undecodable
from streams.catalog import nats_filter, streams_for_pattern, subject_matches
from streams.deadletters import dead_letter
from streams.errors import InvalidArgument
from streams.intake import Intake
from streams.ordering import StreamMerge
from streams.processing import (
    DEFAULT_PARTITIONS,
    DEFAULT_SEEN_IDS,
    Partition,
    Processor,
    fold,
    fold_row,
    key_function,
    owned_partitions,
    partition_of,
)
from streams.rows import Row, row_decoder

S = TypeVar("S")
log = logging.getLogger("spine.streams.runner")

FaultHook = Callable[[str], None]


@dataclass(frozen=True)
class RunnerConfig:
    """How a runner reads, batches and splits work."""

    partitions: int = DEFAULT_PARTITIONS
    replicas: int = 1
    replica: int = 0
    batch_max: int = 5000
    batch_wait_s: float = 0.01
    seen_ids: int = DEFAULT_SEEN_IDS
    tenant: str = "*"
    group: str | None = None  # checkpoint namespace; default: the processor's name

    def __post_init__(self) -> None:
        if not 0 <= self.replica < self.replicas:
            raise InvalidArgument(f"replica {self.replica} is not in 0..{self.replicas - 1}")
        if self.replicas > self.partitions:
            raise InvalidArgument(
                f"{self.replicas} replicas for {self.partitions} partitions: some would idle",
                hint="use at most as many replicas as partitions",
            )


@dataclass
class RunnerHealth:
    """What ``spine run`` reports: throughput, lag, last checkpoint, errors."""

    processor: str
    replica: int
    handled: int = 0
    emitted: int = 0
    dead_lettered: int = 0
    batches: int = 0
    errors: int = 0
    last_error: str | None = None
    last_checkpoint: float | None = None
    started: float = field(default_factory=time.time)
    positions: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.handled / max(time.time() - self.started, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {
            "processor": self.processor,
            "replica": self.replica,
            "handled": self.handled,
            "emitted": self.emitted,
            "dead_lettered": self.dead_lettered,
            "batches": self.batches,
            "events_per_s": round(self.rate, 1),
            "errors": self.errors,
            "last_error": self.last_error,
            "last_checkpoint": self.last_checkpoint,
            "positions": self.positions,
        }


def checkpoint_key(processor: str, partition: int) -> str:
    return f"{processor}.p{partition}"


def encode_checkpoint(doc: dict[str, Any]) -> bytes:
    # Compressed: a tenant's state with daily buckets compresses ~10x under the
    # broker's 1 MB message limit.
    return zlib.compress(orjson.dumps(doc), 1)


def decode_checkpoint(raw: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(zlib.decompress(raw))
    return doc


async def load_partitions(
    store: CheckpointStore,
    processor: Processor[S],
    partitions: list[int],
    total: int,
    group: str | None = None,
) -> dict[int, Partition[S]]:
    """The checkpointed partitions (fresh state where none was written yet)."""
    parts: dict[int, Partition[S]] = {}
    for p in partitions:
        raw = await store.get(checkpoint_key(group or processor.name, p))
        if raw is None:
            parts[p] = Partition(p, processor.initial_state())
            continue
        doc = decode_checkpoint(raw)
        if int(doc.get("partitions", total)) != total:
            raise InvalidArgument(
                f"checkpoints of {processor.name} were written with {doc['partitions']} partitions, not {total}",
                hint="run with the same --partitions, or reset the processor's checkpoints",
            )
        parts[p] = Partition.from_checkpoint(processor, doc)
    return parts


class Runner(Generic[S]):
    """Runs ``processor`` on ``bus`` until ``stop`` is set. See the module docstring."""

    def __init__(
        self,
        bus: Bus,
        processor: Processor[S],
        config: RunnerConfig | None = None,
        *,
        fault: FaultHook | None = None,
    ) -> None:
        self.bus = bus
        self.processor = processor
        self.config = config or RunnerConfig()
        self.fault = fault or (lambda step: None)
        self.health = RunnerHealth(processor.name, self.config.replica)
        self.owned = owned_partitions(self.config.replica, self.config.replicas, self.config.partitions)
        self.parts: dict[int, Partition[S]] = {}
        self._inputs = self._plan_inputs()
        self._rows = row_decoder(processor)  # cheap decoding inside (streams.rows)
        self._merge: StreamMerge | None = None  # several input streams: merged by event time
        self._position_keys: dict[tuple[str, int], str] = {}
        self._partition_for: dict[str, int] = {}  # partition key -> state partition
        self._key_of = key_function(processor)

    def _plan_inputs(self) -> dict[str, tuple[str, list[str]]]:
        """stream -> (broker-side pattern, client-side patterns) for the processor's inputs."""
        by_stream: dict[str, list[str]] = {}
        for pattern in self.processor.inputs:
            for spec in streams_for_pattern(pattern):
                by_stream.setdefault(spec.name, []).append(pattern)
        return {name: (pats[0] if len(pats) == 1 else ">", pats) for name, pats in by_stream.items()}

    async def run(self, stop: asyncio.Event) -> RunnerHealth:
        store = await self.bus.checkpoints()
        self.parts = await load_partitions(store, self.processor, self.owned, self.config.partitions, self.config.group)
        intake: Intake[Followed] = Intake(limit=self.config.batch_max * 2)
        self._merge = StreamMerge(self._inputs) if len(self._inputs) > 1 else None
        readers = [
            asyncio.create_task(self._read(stream, pattern, filters, intake))
            for stream, (pattern, filters) in self._inputs.items()
        ]
        for reader in readers:
            reader.add_done_callback(intake.wake)  # a failed reader stops the runner at once
        flushing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                batch = await self._collect(intake, stop, readers)
                if self._merge is not None:
                    batch = self._merge.release(batch, time.monotonic())
                if flushing is not None and flushing.done():
                    flushing.result()  # a failed publish or checkpoint stops the runner now
                if batch:
                    folded = self._fold(batch)
                    if flushing is not None:
                        await flushing  # batch N is published and checkpointed before N+1
                    flushing = asyncio.create_task(self._flush(folded, store))
            if flushing is not None:
                await flushing  # graceful stop: the last batch is published and checkpointed
        finally:
            if flushing is not None and not flushing.done():  # failing: like a crash, safe to drop
                flushing.cancel()
                await asyncio.gather(flushing, return_exceptions=True)
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        return self.health

    async def _read(self, stream: str, pattern: str, filters: list[str], intake: Intake[Followed]) -> None:
        key_prefix = f"{stream}/"
        after: dict[int, int] = {}
        for part in self.parts.values():
            for key, seq in part.positions.items():
                if key.startswith(key_prefix):
                    tp = int(key[len(key_prefix) :])
                    after[tp] = min(after.get(tp, seq), seq)
        if len(self.parts) != sum(1 for p in self.parts.values() if any(k.startswith(key_prefix) for k in p.positions)):
            after = {}  # a partition has no position on this stream yet: read it from the start
        merge = self._merge

        def caught_up() -> None:
            if merge is not None:
                merge.caught_up(stream)
                intake.wake()

        records: AsyncIterator[Followed] = self.bus.follow(
            stream, after=after, pattern=pattern, tenant=self.config.tenant, rows=self._rows, caught_up=caught_up
        )
        # One broker-side filter covers the stream; several patterns are matched here.
        subjects = [nats_filter(f, self.config.tenant) for f in filters] if len(filters) > 1 else []
        async for record in records:
            if (
                subjects
                and not isinstance(record, Undecodable)
                and not any(subject_matches(f, record.subject) for f in subjects)
            ):
                continue
            if merge is not None:
                merge.yielded(stream)
            await intake.put(record)

    async def _collect(
        self, intake: Intake[Followed], stop: asyncio.Event, readers: list[asyncio.Task[None]]
    ) -> list[Followed]:
        """Up to ``batch_max`` records: whatever is there, lingering at most ``batch_wait_s``
        for more once there is one (the latency of a lone event)."""
        while not len(intake):
            _raise_failed(readers)
            if stop.is_set():
                return []
            await intake.wait(1, 0.05)  # idle: wake now and then to notice a stop
            if self._merge is not None and self._merge.held and not len(intake):
                return []  # a stream caught up, or time passed: the merge may release what it holds
        if len(intake) < self.config.batch_max and not stop.is_set():
            await intake.wait(self.config.batch_max, self.config.batch_wait_s)
        _raise_failed(readers)
        return intake.take(self.config.batch_max)

    def _fold(self, batch: list[Followed]) -> _Folded:
        """Step 2: fold the batch; its outputs and the checkpoints of the partitions it touched."""
        self.fault("read")
        outputs: list[Event] = []
        touched: set[int] = set()
        read: dict[str, int] = {}  # position key -> the batch's last seq (follow yields in order)
        position_keys = self._position_keys
        partition_for = self._partition_for
        key_of = self._key_of
        for record in batch:
            position_key = position_keys.get((record.stream, record.partition))
            if position_key is None:
                position_key = position_keys[(record.stream, record.partition)] = f"{record.stream}/{record.partition}"
            read[position_key] = record.seq
            if isinstance(record, Undecodable):
                if self.config.replica == 0:
                    outputs.append(self._undecodable(record))
                continue
            event = record.row if isinstance(record, RowRecord) else record.event
            key = key_of(event)
            p = partition_for.get(key)
            if p is None:
                p = partition_of(key, self.config.partitions)
                if len(partition_for) < 65_536:  # bounded for high-cardinality keys
                    partition_for[key] = p
            part = self.parts.get(p)
            if part is None or part.positions.get(position_key, 0) >= record.seq:
                continue
            try:
                if isinstance(record, RowRecord):
                    row = record.row
                    decisions, rejects = fold_row(
                        self.processor,  # type: ignore[arg-type]  # rows only come for a row processor
                        part,
                        row,
                        row.time.timestamp(),
                        row.values(),
                        self.config.seen_ids,
                    )
                else:
                    decisions, rejects = fold(self.processor, part, record.event, self.config.seen_ids)
            except Exception as exc:  # a processor bug must not stop the stream: dead-letter the input
                self.health.errors += 1
                self.health.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("processor %s failed on %s", self.processor.name, event.id)
                decisions, rejects = [], []
                outputs.append(self._rejected(record, event, f"processor error: {type(exc).__name__}: {exc}", 0))
            outputs.extend(decisions)
            for index, reject in enumerate(rejects):
                outputs.append(self._rejected(record, event, reject.reason, index, kind=reject.kind))
            part.positions[position_key] = record.seq
            touched.add(p)
            self.health.handled += 1
        group = self.config.group or self.processor.name
        checkpoints = [
            (
                checkpoint_key(group, p),
                encode_checkpoint(self.parts[p].to_checkpoint(self.processor, self.config.partitions)),
            )
            for p in sorted(touched)
        ]
        self.fault("folded")
        return _Folded(outputs, checkpoints, read)

    async def _flush(self, folded: _Folded, store: CheckpointStore) -> None:
        outputs = folded.outputs
        # Step 3: publish, acked by the broker.
        if outputs:
            await self.bus.publish_many(outputs)
        letters = sum(1 for e in outputs if e.type.startswith("dlq."))
        self.health.emitted += len(outputs) - letters
        self.health.dead_lettered += letters
        self.fault("published")
        # Step 4: checkpoint each touched partition (state + positions together).
        for i, (key, value) in enumerate(folded.checkpoints):
            await store.put(key, value)
            if i == 0:
                self.fault("checkpointing")
        self.fault("checkpointed")
        self.health.batches += 1
        if folded.checkpoints:
            self.health.last_checkpoint = time.time()
        for key, seq in folded.read.items():
            self.health.positions[key] = max(self.health.positions.get(key, 0), seq)

    def _rejected(
        self, record: Record | RowRecord, event: Event | Row, reason: str, index: int, kind: str = "rejected"
    ) -> Event:
        return rejection_letter(self.processor.name, record, event, reason, index, kind)

    def _undecodable(self, record: Undecodable) -> Event:
        return undecodable_letter(self.processor.name, record)


def _raise_failed(readers: list[asyncio.Task[None]]) -> None:
    for task in readers:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class _Folded:
    """A folded batch waiting for steps 3 and 4: its outputs, encoded checkpoints and read positions."""

    outputs: list[Event]
    checkpoints: list[tuple[str, bytes]]
    read: dict[str, int]


def rejection_letter(
    processor: str, record: Record | RowRecord, event: Event | Row, reason: str, index: int, kind: str = "rejected"
) -> Event:
    """The dead letter for input ``event`` that ``processor`` rejected (or failed on)."""
    return dead_letter(
        "late" if kind == "late" else "rejected",
        reason,
        raw=record.raw if isinstance(record, RowRecord) else encode(event),  # type: ignore[arg-type]
        stream=record.stream,
        broker_subject=record.subject,
        seq=record.seq,
        group=processor,
        deliveries=1,
        original_id=event.id,
        original_type=event.type,
        partition=record.partition,
        tenant=event.tenant,
        # Deterministic per input, so a re-run after a crash re-sends the same letter.
        letter_id=derived_id(f"{processor}/dlq", event.id, index),
    )


def undecodable_letter(processor: str, record: Undecodable) -> Event:
    """The dead letter for a stored message that is not a valid event."""
    return dead_letter(
        "undecodable",
        record.reason,
        raw=record.raw,
        stream=record.stream,
        broker_subject=record.subject,
        seq=record.seq,
        group=processor,
        deliveries=1,
        partition=record.partition,
    )
