"""An in-process broker with the same contract as NATS JetStream.

Not a mock: streams with sequences and a duplicate window, wildcard filters,
durable consumer groups whose members share the work, ack-wait redelivery,
``nak`` with delay, max-deliver and undecodable messages moved to the DLQ,
replay by sequence or time, lag. It runs in one process and keeps nothing on
disk; ``memory://NAME`` URLs with the same name share one broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time as _time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Self

from schemas import Event, SchemaError, decode, encode
from streams.bus import (
    ApplyResult,
    CheckpointStore,
    Followed,
    GroupLag,
    PublishAck,
    Record,
    StartAt,
    StreamInfo,
    StreamLag,
    follow_item,
)
from streams.catalog import (
    CATALOG,
    STREAMS,
    StreamSpec,
    nats_filter,
    nats_subject,
    stream_for_type,
    stream_of_subject,
    stream_spec,
    streams_for_pattern,
    subject_matches,
)
from streams.config import BusConfig
from streams.deadletters import DeadLetterKind, dead_letter
from streams.errors import PublishError, StreamNotFound
from streams.naming import check_group, check_pattern, check_tenant
from streams.rows import RowDecoder

log = logging.getLogger("spine.streams.memory")


@dataclass(slots=True)
class _Message:
    seq: int
    subject: str
    data: bytes
    stored_at: float  # wall clock seconds


@dataclass(slots=True)
class _Pending:
    attempts: int
    due: float  # loop time when it may be redelivered


@dataclass(slots=True)
class _Group:
    name: str
    filter: str
    next_seq: int
    pending: dict[int, _Pending] = field(default_factory=dict)


@dataclass(slots=True)
class _Stream:
    spec: StreamSpec
    messages: dict[int, _Message] = field(default_factory=dict)
    last_seq: int = 0
    bytes: int = 0
    dedup: dict[str, tuple[int, float]] = field(default_factory=dict)
    groups: dict[str, _Group] = field(default_factory=dict)


class MemoryBroker:
    """The shared state behind one ``memory://NAME``."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.streams: dict[str, _Stream] = {spec.name: _Stream(spec) for spec in CATALOG}
        self.changed = asyncio.Event()
        self.checkpoints = MemoryCheckpoints()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def store(self, stream_name: str, subject: str, data: bytes, msg_id: str | None) -> PublishAck:
        stream = self.streams[stream_name]
        now = _time.time()
        window = self.config.stream(stream_name).duplicate_window_s
        if msg_id is not None:
            seen = stream.dedup.get(msg_id)
            if seen is not None and now - seen[1] < window:
                return PublishAck(stream_name, seen[0], duplicate=True)
        stream.last_seq += 1
        seq = stream.last_seq
        stream.messages[seq] = _Message(seq, subject, data, now)
        stream.bytes += len(data)
        if msg_id is not None:
            stream.dedup[msg_id] = (seq, now)
            if len(stream.dedup) > 100_000:  # forget ids older than the window
                stream.dedup = {k: v for k, v in stream.dedup.items() if now - v[1] < window}
        self.notify()
        return PublishAck(stream_name, seq)


class MemoryCheckpoints:
    """Checkpoints kept in the memory broker (gone with the process)."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def put(self, key: str, value: bytes) -> None:
        self.values[key] = value

    async def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.values if k.startswith(prefix))


_BROKERS: dict[str, MemoryBroker] = {}
_anonymous = itertools.count()


class MemoryDelivery:
    """A delivery from the memory broker."""

    __slots__ = ("_bus", "_group", "_msg", "_settled", "attempt", "event", "seq", "stream", "subject")

    def __init__(self, bus: MemoryBus, stream: str, group: _Group, msg: _Message, event: Event, attempt: int) -> None:
        self._bus = bus
        self._group = group
        self._msg = msg
        self._settled = False
        self.event = event
        self.stream = stream
        self.seq = msg.seq
        self.subject = msg.subject
        self.attempt = attempt

    async def ack(self) -> None:
        self._group.pending.pop(self.seq, None)
        self._settled = True

    async def nak(self, delay: float | None = None) -> None:
        pending = self._group.pending.get(self.seq)
        if pending is not None:
            pending.due = asyncio.get_running_loop().time() + (delay or 0.0)
            self._bus.broker.notify()
        self._settled = True

    async def term(self, reason: str) -> None:
        await self._bus._dead_letter("rejected", reason, self.stream, self._group, self._msg, self.attempt, self.event)
        self._settled = True


class MemoryBus:
    """The Bus over a ``MemoryBroker``."""

    def __init__(self, name: str | None = None, config: BusConfig | None = None) -> None:
        self.config = config or BusConfig()
        key = name or f"anonymous-{next(_anonymous)}"
        broker = _BROKERS.get(key) if name else None
        if broker is None:
            broker = MemoryBroker(self.config)
            if name:
                _BROKERS[key] = broker
        self.broker = broker
        self.url = f"memory://{name or ''}"

    # -- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        return None

    # -- publish -------------------------------------------------------------------
    async def publish(self, event: Event) -> PublishAck:
        spec = stream_for_type(event.type)
        subject = nats_subject(event.tenant, event.type, event.subject)
        return self.broker.store(spec.name, subject, encode(event), event.id)

    async def publish_many(self, events: Iterable[Event]) -> list[PublishAck]:
        return [await self.publish(event) for event in events]

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> PublishAck:
        if not data:
            raise PublishError("refusing to publish an empty message", hint="pass the event bytes")
        return self.broker.store(stream_of_subject(subject), subject, data, msg_id)

    # -- consume -------------------------------------------------------------------
    def _group(self, stream: _Stream, group: str, flt: str, start: StartAt) -> _Group:
        existing = stream.groups.get(group)
        if existing is None:
            first = 1 if start == "all" else stream.last_seq + 1
            existing = stream.groups[group] = _Group(group, flt, first)
        else:
            existing.filter = flt
        return existing

    async def subscribe(
        self,
        pattern: str,
        *,
        group: str,
        tenant: str = "*",
        start: StartAt = "new",
    ) -> AsyncIterator[MemoryDelivery]:
        check_group(group)
        flt = nats_filter(pattern, tenant)
        targets = [
            (spec.name, self._group(self.broker.streams[spec.name], group, flt, start))
            for spec in streams_for_pattern(pattern)
        ]
        loop = asyncio.get_running_loop()
        while True:
            produced = False
            for name, grp in targets:
                delivery = await self._next(name, grp, loop.time())
                if delivery is not None:
                    produced = True
                    yield delivery
            if produced:
                continue
            changed = self.broker.changed
            wait = self._next_due(targets, loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=wait)

    def _next_due(self, targets: list[tuple[str, _Group]], now: float) -> float:
        dues = [p.due for _, g in targets for p in g.pending.values()]
        return max(0.001, min(dues) - now) if dues else 1.0

    async def _next(self, name: str, grp: _Group, now: float) -> MemoryDelivery | None:
        stream = self.broker.streams[name]
        # Redeliveries first: unacked past ack-wait, or nak'd.
        for seq, pending in list(grp.pending.items()):
            if pending.due > now:
                continue
            msg = stream.messages.get(seq)
            if msg is None:
                del grp.pending[seq]
                continue
            if pending.attempts >= self.config.max_deliver:
                del grp.pending[seq]
                reason = f"not acknowledged after {pending.attempts} deliveries (max_deliver)"
                await self._dead_letter("max_deliver", reason, name, grp, msg, pending.attempts, None)
                continue
            pending.attempts += 1
            pending.due = now + self._ack_wait(pending.attempts)
            delivery = await self._deliver(name, grp, msg, pending.attempts)
            if delivery is not None:
                return delivery
        while grp.next_seq <= stream.last_seq:
            msg = stream.messages.get(grp.next_seq)
            grp.next_seq += 1
            if msg is None or not subject_matches(grp.filter, msg.subject):
                continue
            grp.pending[msg.seq] = _Pending(1, now + self._ack_wait(1))
            delivery = await self._deliver(name, grp, msg, 1)
            if delivery is not None:
                return delivery
        return None

    def _ack_wait(self, attempt: int) -> float:
        backoff = self.config.backoff_s
        if backoff:
            return backoff[min(attempt - 1, len(backoff) - 1)]
        return self.config.ack_wait_s

    async def _deliver(self, name: str, grp: _Group, msg: _Message, attempt: int) -> MemoryDelivery | None:
        try:
            event = decode(msg.data)
        except SchemaError as exc:
            grp.pending.pop(msg.seq, None)
            await self._dead_letter("undecodable", str(exc), name, grp, msg, attempt, None)
            return None
        return MemoryDelivery(self, name, grp, msg, event, attempt)

    async def _dead_letter(
        self,
        kind: DeadLetterKind,
        reason: str,
        stream: str,
        grp: _Group,
        msg: _Message,
        attempt: int,
        event: Event | None,
    ) -> None:
        if event is None:
            with contextlib.suppress(SchemaError):
                event = decode(msg.data)
        letter = dead_letter(
            kind,
            reason,
            raw=msg.data,
            stream=stream,
            broker_subject=msg.subject,
            seq=msg.seq,
            group=grp.name,
            deliveries=attempt,
            original_id=event.id if event else None,
            original_type=event.type if event else None,
        )
        await self.publish(letter)
        grp.pending.pop(msg.seq, None)

    # -- replay, lag, admin ----------------------------------------------------------
    async def replay(
        self,
        stream: str,
        *,
        start: int | datetime | None = None,
        end: int | datetime | None = None,
        pattern: str = ">",
        tenant: str = "*",
    ) -> AsyncIterator[Record]:
        spec = stream_spec(stream)
        st = self.broker.streams[spec.name]
        flt = nats_filter(pattern, tenant)
        stop = st.last_seq
        for seq in range(1, stop + 1):
            msg = st.messages.get(seq)
            if msg is None or not subject_matches(flt, msg.subject):
                continue
            if not _after_start(msg, start) or _past_end(msg, end):
                continue
            try:
                event = decode(msg.data)
            except SchemaError as exc:
                log.warning("replay %s: skipped undecodable seq %d: %s", spec.name, seq, exc)
                continue
            yield Record(spec.name, seq, msg.subject, event)

    async def follow(
        self,
        stream: str,
        *,
        after: Mapping[int, int] | None = None,
        pattern: str = ">",
        tenant: str = "*",
        rows: RowDecoder | None = None,
        caught_up: Callable[[], None] | None = None,
    ) -> AsyncIterator[Followed]:
        spec = stream_spec(stream)
        st = self.broker.streams[spec.name]
        flt = nats_filter(check_pattern(pattern), check_tenant(tenant))
        seq = (after or {}).get(0, 0)
        while True:
            while seq < st.last_seq:
                seq += 1
                msg = st.messages.get(seq)
                if msg is None or not subject_matches(flt, msg.subject):
                    continue
                yield follow_item(spec.name, seq, msg.subject, msg.data, rows)
            changed = self.broker.changed
            if seq >= st.last_seq:
                if caught_up is not None:
                    caught_up()
                await changed.wait()

    async def checkpoints(self) -> CheckpointStore:
        return self.broker.checkpoints

    async def lag(self, group: str) -> GroupLag:
        check_group(group)
        lags: dict[str, StreamLag] = {}
        for name, st in self.broker.streams.items():
            grp = st.groups.get(group)
            if grp is None:
                continue
            waiting = sum(
                1
                for seq in range(grp.next_seq, st.last_seq + 1)
                if (m := st.messages.get(seq)) is not None and subject_matches(grp.filter, m.subject)
            )
            lags[name] = StreamLag(waiting, len(grp.pending))
        if not lags:
            raise StreamNotFound(f"no consumer group {group!r}", hint="groups appear once a member subscribes")
        return GroupLag(group, lags)

    async def provision(self) -> list[ApplyResult]:
        return [ApplyResult(name, "unchanged") for name in STREAMS]

    async def describe(self) -> list[StreamInfo]:
        infos = []
        for name, st in self.broker.streams.items():
            groups = {g: (await self.lag(g)).streams[name].total for g in st.groups}
            first = min(st.messages) if st.messages else 0
            infos.append(
                StreamInfo(name, tuple(st.spec.nats_subjects()), len(st.messages), st.bytes, first, st.last_seq, groups)
            )
        return infos

    async def delete(self, stream: str, seq: int) -> None:
        st = self.broker.streams[stream_spec(stream).name]
        msg = st.messages.pop(seq, None)
        if msg is None:
            raise StreamNotFound(f"{stream} has no message with sequence {seq}")
        st.bytes -= len(msg.data)


def _after_start(msg: _Message, start: int | datetime | None) -> bool:
    if start is None:
        return True
    if isinstance(start, datetime):
        return msg.stored_at >= start.astimezone(UTC).timestamp()
    return msg.seq >= start


def _past_end(msg: _Message, end: int | datetime | None) -> bool:
    if end is None:
        return False
    if isinstance(end, datetime):
        return msg.stored_at > end.astimezone(UTC).timestamp()
    return msg.seq > end
