"""The Bus protocol: what every transport (memory, NATS, Kafka) provides.

It stays small, like httpx's transport: publish, publish_many, subscribe,
replay, lag and aclose, plus the ``Delivery`` a subscriber acks. Patterns are
in *type space*: ``market.tick.BTC-USD``, ``session.>``, ``*.>`` (``*`` one
token, ``>`` the rest); the tenant is a separate argument.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, Self, runtime_checkable

from schemas import Event, SchemaError, decode

if TYPE_CHECKING:
    from streams.rows import Row, RowDecoder

StartAt = Literal["new", "all"]


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The broker's acknowledgement: where the event landed."""

    stream: str
    seq: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Record:
    """A stored event read back by ``replay`` or ``follow``: no ack needed.

    ``seq`` orders records within (``stream``, ``partition``); NATS and memory
    streams have one partition (0), Kafka topics several.
    """

    stream: str
    seq: int
    subject: str
    event: Event
    partition: int = 0

    @property
    def time(self) -> datetime:
        return self.event.time


@dataclass(frozen=True, slots=True)
class RowRecord:
    """A stored event ``follow`` decoded for a row processor (``rows=``): the envelope a
    decision needs and the fields it reads (``streams.rows``), with the message's bytes."""

    stream: str
    seq: int
    subject: str
    row: Row
    raw: bytes
    partition: int = 0

    @property
    def time(self) -> datetime:
        return self.row.time


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A stored message that is not a valid event (``follow`` yields it for the DLQ)."""

    stream: str
    seq: int
    subject: str
    raw: bytes
    reason: str
    partition: int = 0


class CheckpointStore(Protocol):
    """Durable key -> bytes for runner checkpoints (NATS: a KV bucket)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes) -> None: ...

    async def keys(self, prefix: str) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class StreamLag:
    pending: int
    ack_pending: int

    @property
    def total(self) -> int:
        return self.pending + self.ack_pending


@dataclass(frozen=True, slots=True)
class GroupLag:
    """How far behind a consumer group is, per stream it reads."""

    group: str
    streams: dict[str, StreamLag] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.streams.values())

    @property
    def ack_pending(self) -> int:
        return sum(s.ack_pending for s in self.streams.values())

    @property
    def total(self) -> int:
        return self.pending + self.ack_pending


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What ``spine streams list`` shows."""

    name: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    groups: dict[str, int]  # group -> lag (pending + ack pending)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    stream: str
    action: Literal["created", "updated", "unchanged"]


class Delivery(Protocol):
    """One event handed to one member of a consumer group.

    Exactly one of ``ack``, ``nak`` or ``term`` settles it; an unsettled
    delivery is redelivered after ``ack_wait``.
    """

    @property
    def event(self) -> Event: ...
    @property
    def stream(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def subject(self) -> str: ...
    @property
    def attempt(self) -> int:
        """1 on first delivery, 2 on the first redelivery, ..."""
        ...

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...
    async def term(self, reason: str) -> None:
        """Give up on the event: it moves to the DLQ with ``reason``."""
        ...


@runtime_checkable
class Bus(Protocol):
    """An event bus. Use as ``async with streams.connect(url) as bus:``."""

    async def publish(self, event: Event) -> PublishAck: ...

    async def publish_many(self, events: Iterable[Event]) -> list[PublishAck]: ...

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> PublishAck:
        """Publish bytes as they are to a broker subject (redrive, interop tests)."""
        ...

    def subscribe(
        self,
        pattern: str,
        *,
        group: str,
        tenant: str = "*",
        start: StartAt = "new",
    ) -> AsyncIterator[Delivery]: ...

    def replay(
        self,
        stream: str,
        *,
        start: int | datetime | None = None,
        end: int | datetime | None = None,
        pattern: str = ">",
        tenant: str = "*",
    ) -> AsyncIterator[Record]: ...

    def follow(
        self,
        stream: str,
        *,
        after: Mapping[int, int] | None = None,
        pattern: str = ">",
        tenant: str = "*",
        rows: RowDecoder | None = None,
        caught_up: Callable[[], None] | None = None,
    ) -> AsyncIterator[Record | RowRecord | Undecodable]:
        """Every stored message after the positions ``after`` (partition -> last seq
        seen; missing partitions start at the beginning), in order per partition,
        then new ones as they come. A stream of several partitions (Kafka) comes
        merged into event-time order across them.

        With ``rows``, the events it can decode come as ``RowRecord``s
        (``streams.rows``: the runner of a row processor); the others as usual.
        ``caught_up`` is called whenever the reader has yielded everything the
        stream held when it last looked, before it waits for more (the runner
        merges several streams by event time with it).

        No group and no acks: the reader keeps its own position (the processor
        runner checkpoints it with its state). Never ends by itself.
        """
        ...

    async def checkpoints(self) -> CheckpointStore: ...

    async def lag(self, group: str) -> GroupLag: ...

    async def provision(self) -> list[ApplyResult]: ...

    async def describe(self) -> list[StreamInfo]: ...

    async def delete(self, stream: str, seq: int) -> None: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...


Followed = Record | RowRecord | Undecodable  # what ``Bus.follow`` yields


def decoded(
    stream: str, seq: int, subject: str, raw: bytes, rows: RowDecoder | None, partition: int = 0
) -> Record | RowRecord:
    """A stored message as a ``RowRecord`` when ``rows`` can take it, else as a ``Record``;
    ``SchemaError`` (the full schema's reason) when it is not a valid event."""
    if rows is not None:
        try:
            return RowRecord(stream, seq, subject, rows.decode(raw), raw, partition)
        except SchemaError:
            pass  # the full decode decides, and says why
    return Record(stream, seq, subject, decode(raw), partition)


def follow_item(
    stream: str, seq: int, subject: str, raw: bytes, rows: RowDecoder | None, partition: int = 0
) -> Followed:
    """What ``follow`` yields for one stored message (see ``Bus.follow``)."""
    try:
        return decoded(stream, seq, subject, raw, rows, partition)
    except SchemaError as exc:
        return Undecodable(stream, seq, subject, raw, str(exc), partition)
