"""The processor model: pure, deterministic folds from events to decisions.

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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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


def materialize(processor_name: str, cause: Event, outputs: Sequence[Output]) -> list[Event]:
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
    rejected: list[tuple[Event, Reject]] = field(default_factory=list)
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
