"""The processor model and its pure runtime, shared by the runner and replays.

Lives in ``streams`` because the runner (``streams.runner``) hosts processors
and imports point downward only; ``processors.base`` re-exports it for the
processors themselves. Pure code: no I/O, no clocks, no broker imports.

A processor owns a state type and folds events into it::

    outputs = processor.handle(state, event)

``handle`` reads only the event (its envelope ``time`` is the clock), the
state and the plain reference data the processor was built with. It may
mutate ``state`` in place: the runner owns the state, checkpoints it with the
input positions it reflects, and restores the last checkpoint after a failure.
It returns what it decided:

- ``Emit(type, data, subject)``: a decision event. ``materialize`` turns it
  into a full event whose id is ``derived_id(processor.name, cause.id, i)``,
  whose ``causationid`` is the input id, whose ``correlationid`` is carried
  through, and whose ``time`` is the input's event time. A redelivered input
  therefore re-emits byte-identical events and the broker drops them.
- ``Reject(kind, reason)``: the input goes to the DLQ (``late``: behind the
  watermark; ``rejected``: e.g. an illegal session transition).

No I/O, no clocks, no broker imports: ``run_pure`` runs any processor over a
list of events with nothing else, which is how replays and tests run them.

Cheap decoding inside: events are validated once, at the edge (the runner's
decode, the archive sink). A processor that reads one event type through a
few scalar payload fields may also declare ``row_input`` and implement
``handle_row(state, cause, ts, values)``; its ``handle`` must be exactly
``handle_row`` over the event's envelope, ``time.timestamp()`` and those
fields (the cost processor's ``handle`` is that one line). Replays then feed
it straight from the archive's typed columns without building an event per
input (``run_partitioned_rows``); the decisions and their ids are the same.

Partitioned state and the pure fold both the runner and replays use.

A processor's state is split into ``partitions`` by a key of each event
(``processor.partition_key(event)`` if it defines one, else the tenant). The
split is a pure function of the key (CRC-32), so a live runner, N replicas of
it, and a replay from the archive all fold each partition's events in the same
order into the same state, and derive the same decision ids.

Each partition also remembers the ids of its most recent inputs, so an event
stored twice (a producer retry outside the broker's duplicate window) is
folded once.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypeVar

from schemas import Event, SchemaError, derived_id, make_event
from schemas.payloads.base import Payload

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Emit:
    """A decision to publish: ``type`` with payload ``data`` under ordering key ``subject``."""

    type: str
    data: Payload
    subject: str


@dataclass(frozen=True, slots=True)
class Reject:
    """Send the input event to the DLQ with ``reason``."""

    kind: Literal["late", "rejected"]
    reason: str


Output = Emit | Reject


class Cause(Protocol):
    """What materializing a decision reads of its input: an ``Event``, or an archived
    row's envelope in a replay (``handle_row``)."""

    @property
    def id(self) -> str: ...

    @property
    def time(self) -> datetime: ...

    @property
    def tenant(self) -> str: ...

    @property
    def traceparent(self) -> str | None: ...

    @property
    def correlationid(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class RowInput:
    """A processor folds events of ``type`` from the payload ``fields`` alone (see the module docstring)."""

    type: str
    fields: tuple[str, ...]


class Processor(Protocol[S]):
    """What the runner hosts. ``name`` names its consumer group and seeds its output ids."""

    name: str
    inputs: tuple[str, ...]  # type-space patterns, e.g. ("llm.call", "decision.budget")

    def initial_state(self) -> S: ...

    def handle(self, state: S, event: Event) -> Sequence[Output]: ...

    def snapshot(self, state: S) -> dict[str, Any]:
        """A JSON-ready copy of ``state`` (the runner encodes and stores it)."""
        ...

    def restore(self, snapshot: dict[str, Any]) -> S: ...


class RowProcessor(Processor[S], Protocol[S]):
    """A processor that can also fold archived rows (``row_input``, ``handle_row``).

    Its ``partition_key``, if it has one, must read only the ``Cause`` attributes."""

    row_input: RowInput

    def handle_row(self, state: S, cause: Cause, ts: float, values: Sequence[Any]) -> Sequence[Output]: ...


def materialize(processor_name: str, cause: Cause, outputs: Sequence[Output]) -> list[Event]:
    """The decision events for ``outputs`` of ``cause``, with deterministic ids."""
    events: list[Event] = []
    for index, output in enumerate(outputs):
        if not isinstance(output, Emit):
            continue
        try:
            events.append(
                make_event(
                    output.type,
                    output.data,
                    subject=output.subject,
                    id=derived_id(processor_name, cause.id, index),
                    source=f"processors/{processor_name}",
                    time=cause.time,
                    tenant=cause.tenant,
                    traceparent=cause.traceparent,
                    causationid=cause.id,
                    correlationid=cause.correlationid or cause.id,
                )
            )
        except SchemaError as exc:  # a processor bug, not bad input: say which processor
            raise SchemaError(f"processor {processor_name} emitted an invalid {output.type}: {exc.message}") from exc
    return events


@dataclass(slots=True)
class PureRun(Generic[S]):
    """The result of ``run_pure``."""

    state: S
    decisions: list[Event] = field(default_factory=list)
    rejected: list[tuple[Cause, Reject]] = field(default_factory=list)
    handled: int = 0


def run_pure(processor: Processor[S], events: Iterable[Event], state: S | None = None) -> PureRun[S]:
    """Fold ``events`` through ``processor`` with no broker: replays, backtests, tests."""
    run = PureRun(state if state is not None else processor.initial_state())
    for event in events:
        outputs = processor.handle(run.state, event)
        run.handled += 1
        if outputs:
            run.decisions.extend(materialize(processor.name, event, outputs))
            run.rejected.extend((event, o) for o in outputs if isinstance(o, Reject))
    return run


DEFAULT_PARTITIONS = 8
DEFAULT_SEEN_IDS = 4096


def key_function(processor: Processor[Any]) -> Callable[[Event | Cause], str]:
    """How ``processor`` keys its inputs: its ``partition_key``, else the tenant."""
    keyer = getattr(processor, "partition_key", None)
    if keyer is None:
        return _tenant_of
    return lambda event: str(keyer(event))


def _tenant_of(event: Event | Cause) -> str:
    return event.tenant


def partition_key(processor: Processor[Any], event: Event | Cause) -> str:
    """One event's key (loops take ``key_function`` once instead)."""
    return key_function(processor)(event)


def partition_of(key: str, partitions: int) -> int:
    """Stable partition of ``key`` (CRC-32; the same in every process and version)."""
    return zlib.crc32(key.encode()) % partitions


def owned_partitions(replica: int, replicas: int, partitions: int) -> list[int]:
    """The partitions replica ``replica`` of ``replicas`` owns (round robin)."""
    return [p for p in range(partitions) if p % replicas == replica]


@dataclass(slots=True)
class Partition(Generic[S]):
    """One partition's state, input positions and recently seen input ids."""

    index: int
    state: S
    positions: dict[str, int] = field(default_factory=dict)  # "<stream>/<partition>" -> last seq
    seen: deque[str] = field(default_factory=deque)
    seen_set: set[str] = field(default_factory=set)
    handled: int = 0

    def remember(self, event_id: str, limit: int) -> bool:
        """Record ``event_id``; False if it was seen already (a duplicate input)."""
        if event_id in self.seen_set:
            return False
        self.seen.append(event_id)
        self.seen_set.add(event_id)
        while len(self.seen) > limit:
            self.seen_set.discard(self.seen.popleft())
        return True

    def to_checkpoint(self, processor: Processor[S], partitions: int) -> dict[str, Any]:
        return {
            "v": 1,
            "processor": processor.name,
            "partition": self.index,
            "partitions": partitions,
            "positions": self.positions,
            "seen": list(self.seen),
            "handled": self.handled,
            "state": processor.snapshot(self.state),
        }

    @classmethod
    def from_checkpoint(cls, processor: Processor[S], doc: dict[str, Any]) -> Partition[S]:
        seen = deque(doc.get("seen", []))
        return cls(
            index=int(doc["partition"]),
            state=processor.restore(doc["state"]),
            positions={k: int(v) for k, v in doc.get("positions", {}).items()},
            seen=seen,
            seen_set=set(seen),
            handled=int(doc.get("handled", 0)),
        )


def fold(
    processor: Processor[S], part: Partition[S], event: Event, seen_limit: int = DEFAULT_SEEN_IDS
) -> tuple[list[Event], list[Reject]]:
    """Fold one event into its partition: the decision events and the rejections."""
    if not part.remember(event.id, seen_limit):
        return _NOTHING
    return _outcome(processor, part, event, processor.handle(part.state, event))


def fold_row(
    processor: RowProcessor[S],
    part: Partition[S],
    cause: Cause,
    ts: float,
    values: Sequence[Any],
    seen_limit: int = DEFAULT_SEEN_IDS,
) -> tuple[list[Event], list[Reject]]:
    """``fold`` for an archived row: the same dedup, count and decisions as its event's."""
    if not part.remember(cause.id, seen_limit):
        return _NOTHING
    return _outcome(processor, part, cause, processor.handle_row(part.state, cause, ts, values))


_NOTHING: tuple[list[Event], list[Reject]] = ([], [])  # shared, never mutated: most inputs decide nothing


def _outcome(
    processor: Processor[S], part: Partition[S], cause: Cause, outputs: Sequence[Output]
) -> tuple[list[Event], list[Reject]]:
    part.handled += 1
    if not outputs:
        return _NOTHING
    decisions = materialize(processor.name, cause, outputs)
    return decisions, [o for o in outputs if isinstance(o, Reject)]


def run_partitioned(
    processor: Processor[S],
    events: Iterable[Event],
    partitions: int = DEFAULT_PARTITIONS,
) -> tuple[dict[int, Partition[S]], PureRun[None]]:
    """Fold ``events`` exactly as the runner would (same partitions, same dedup), with no broker."""
    parts: dict[int, Partition[S]] = {}
    by_key: dict[str, Partition[S]] = {}
    run: PureRun[None] = PureRun(None)
    key_of = key_function(processor)
    for event in events:
        key = key_of(event)
        part = by_key.get(key) or _partition(processor, parts, by_key, key, partitions)
        decisions, rejects = fold(processor, part, event)
        run.handled += 1
        if decisions or rejects:
            run.decisions.extend(decisions)
            run.rejected.extend((event, r) for r in rejects)
    return parts, run


def run_partitioned_rows(
    processor: RowProcessor[S],
    rows: Iterable[tuple[Cause, float, Sequence[Any]]],
    partitions: int = DEFAULT_PARTITIONS,
) -> tuple[dict[int, Partition[S]], PureRun[None]]:
    """``run_partitioned`` over archived rows (cause, event time in epoch seconds, field values)."""
    parts: dict[int, Partition[S]] = {}
    by_key: dict[str, Partition[S]] = {}
    run: PureRun[None] = PureRun(None)
    key_of = key_function(processor)
    for cause, ts, values in rows:
        key = key_of(cause)
        part = by_key.get(key) or _partition(processor, parts, by_key, key, partitions)
        decisions, rejects = fold_row(processor, part, cause, ts, values)
        run.handled += 1
        if decisions or rejects:
            run.decisions.extend(decisions)
            run.rejected.extend((cause, r) for r in rejects)
    return parts, run


def _partition(
    processor: Processor[S],
    parts: dict[int, Partition[S]],
    by_key: dict[str, Partition[S]],
    key: str,
    partitions: int,
) -> Partition[S]:
    p = partition_of(key, partitions)
    part = parts.get(p)
    if part is None:
        part = parts[p] = Partition(p, processor.initial_state())
    if len(by_key) < 65_536:  # a cache of key -> partition, bounded for high-cardinality keys
        by_key[key] = part
    return part
