"""Kafka consumer groups with the Bus's per-event settlement (no aiokafka here).

Kafka keeps one committed offset per partition; the Bus settles events one by
one. A ``Member`` bridges the two:

1. It fetches a batch and takes records in offset order. What its filter does
   not match is skipped (by key and ``type`` header when the producer set them,
   else by the decoded event); an undecodable record goes to the DLQ and the
   partition moves on; the rest is handed out as attempt 1.
2. ``ack`` settles a record, ``term`` dead-letters then settles it. ``nak``
   and an expired ack-wait hand it out again from memory (attempt + 1); after
   ``max_deliver`` attempts it goes to the DLQ.
3. It commits, per partition, the lowest offset not yet settled: after each
   fetched batch and at least every ``commit_interval_s`` in the background
   (one commit in flight at a time; the next batch is handed out meanwhile, and
   a failure is raised by the next ``next()``), then on revocation (after
   waiting up to ``ack_wait_s`` for deliveries still in the handler's hands, and
   handing out nothing more from those partitions) and on close, awaited.

So a rebalance neither loses nor re-hands committed work, and after a crash
the next owner resumes at the first unsettled record. Records after it that
were acked are handled again (at-least-once: Kafka redelivers by position,
not by message) and attempts count from 1 again in the new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

from schemas import Event, SchemaError
from streams.bus import PublishAck, StartAt
from streams.catalog import StreamSpec, nats_subject, subject_matches
from streams.config import BusConfig
from streams.deadletters import DeadLetterKind, dead_letter
from streams.errors import ConsumerError, StreamError
from streams.transports.kafka_ledger import (
    HEADER_DELETED,
    HEADER_ID,
    HEADER_TYPE,
    PartitionLedger,
    decode_record,
    fallback_subject,
    header_map,
    position,
    split_key,
)

log = logging.getLogger("spine.streams.kafka")

TP = tuple[str, int]  # (topic, partition); aiokafka's TopicPartition is such a tuple


class GroupClient(Protocol):
    """The group consumer a member drives (``kafka.GroupConsumer``; errors already translated)."""

    async def start(self, topics: list[str], member: Member) -> None: ...
    async def fetch(self, timeout_s: float, max_records: int) -> dict[TP, list[Any]]: ...
    async def committed(self, topic: str, partition: int) -> int | None: ...
    def seek(self, topic: str, partition: int, offset: int) -> None: ...
    async def commit(self, offsets: dict[TP, int]) -> bool: ...
    async def stop(self) -> None: ...


class GroupBus(Protocol):
    """What a member needs from its bus."""

    config: BusConfig

    async def partitions(self, topics: Iterable[str]) -> list[Any]: ...
    async def offsets(self, tps: list[Any], *, end: bool) -> dict[Any, int]: ...
    async def publish(self, event: Event) -> PublishAck: ...
    def group_client(self, group: str) -> GroupClient: ...


class _Slot:
    """One record a member holds until it is settled."""

    __slots__ = ("attempts", "due", "event", "ledger", "out", "record", "settled", "subject", "token")

    def __init__(self, ledger: PartitionLedger, record: Any, event: Event, subject: str) -> None:
        self.ledger = ledger
        self.record = record
        self.event = event
        self.subject = subject
        self.attempts = 0
        self.token = 0  # which hand-out is current: a stale nak or timer does nothing
        self.due = math.inf  # redeliver at this loop time unless settled
        self.out = False  # in the handler's hands
        self.settled = False


class KafkaDelivery:
    """A Kafka record handed to one group member."""

    __slots__ = ("_member", "_slot", "_token", "attempt", "event", "subject")

    def __init__(self, member: Member, slot: _Slot) -> None:
        self._member = member
        self._slot = slot
        self._token = slot.token
        self.event = slot.event
        self.subject = slot.subject
        self.attempt = slot.attempts

    @property
    def stream(self) -> str:
        return self._slot.ledger.stream

    @property
    def partition(self) -> int:
        return self._slot.ledger.partition

    @property
    def offset(self) -> int:
        return int(self._slot.record.offset)

    @property
    def seq(self) -> int:
        return position(self._slot.ledger.partition, self._slot.record.offset)

    async def ack(self) -> None:
        self._member.settle(self._slot)

    async def nak(self, delay: float | None = None) -> None:
        self._member.nak(self._slot, self._token, delay)

    async def term(self, reason: str) -> None:
        await self._member.term(self._slot, reason)


class Member:
    """One member of a consumer group on some topics; see the module docstring."""

    def __init__(self, bus: GroupBus, group: str, flt: str, specs: list[StreamSpec], start: StartAt) -> None:
        self.bus = bus
        self.group = group
        self.filter = flt
        self.start_at = start
        self.config = bus.config
        self.streams = {spec.kafka_topic: spec for spec in specs}
        self.client = bus.group_client(group)
        self.ledgers: dict[TP, PartitionLedger] = {}
        self.buffer: deque[tuple[PartitionLedger, Any]] = deque()  # fetched, not taken yet
        self.assigning = 0  # on_assigned calls under way
        self.holding: dict[_Slot, None] = {}  # unsettled, in hand-out order
        self.next_due = math.inf
        self.snapshot: dict[TP, int] = {}
        self.max_in_flight = max(1000, self.config.fetch_batch * 8)
        self.changed = asyncio.Event()
        self.waiting = 0  # tasks waiting on `changed`: settling wakes them only if any
        self._matches = functools.lru_cache(maxsize=4096)(functools.partial(subject_matches, flt))
        self.commit_lock = asyncio.Lock()
        self.committing: asyncio.Task[None] | None = None  # the background commit in flight
        self.last_commit = 0.0
        self.failure: StreamError | None = None
        self.closed = False
        self.ack_wait = self.config.ack_wait_s
        self.commit_interval = self.config.kafka.commit_interval_s

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        topics = list(self.streams)
        if self.start_at == "new":
            # "new" means after this call, not after the (slower) group join.
            ends = await self.bus.offsets(await self.bus.partitions(topics), end=True)
            self.snapshot = {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
        self.last_commit = asyncio.get_running_loop().time()
        await self.client.start(topics, self)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.committing is not None and not self.committing.done():
                await asyncio.wait([self.committing])  # before the final commit, never after it
            await self.commit()
        except StreamError as exc:
            log.warning(
                "group %s: final commit failed (%s); the next owner re-reads from the last one", self.group, exc
            )
        finally:
            for ledger in self.ledgers.values():
                ledger.active = False
            await self.client.stop()
            self._notify()

    def in_flight(self) -> dict[str, int]:
        """Unsettled records per stream (what NATS calls ack pending)."""
        counts: dict[str, int] = {}
        for slot in self.holding:
            counts[slot.ledger.stream] = counts.get(slot.ledger.stream, 0) + 1
        return counts

    # -- rebalance -----------------------------------------------------------------
    async def on_assigned(self, assigned: list[TP]) -> None:
        self.assigning += 1
        try:
            await self._assign(assigned)
        finally:
            self.assigning -= 1
            self._notify()

    async def _assign(self, assigned: list[TP]) -> None:
        try:
            starts: dict[TP, int] = {}
            fresh: list[TP] = []
            for tp in assigned:
                committed = await self.client.committed(*tp)
                if committed is None:
                    fresh.append(tp)
                else:
                    starts[tp] = committed
            if fresh:
                starts |= await self._first_positions(fresh)
                for tp in fresh:
                    self.client.seek(*tp, starts[tp])
            for tp in assigned:
                self.ledgers[tp] = PartitionLedger(
                    tp[0], tp[1], self.streams[tp[0]].name, starts[tp], None if tp in fresh else starts[tp]
                )
            if fresh:
                await self.commit()  # the group's start position is recorded: `lag` sees it from now on
        except StreamError as exc:
            self.failure = exc  # raised to the subscriber by next(); aiokafka would only log it

    async def _first_positions(self, fresh: list[TP]) -> dict[TP, int]:
        """Where a group with no commit starts: the snapshot for "new", the beginning for "all"."""
        out = {tp: self.snapshot[tp] for tp in fresh if self.start_at == "new" and tp in self.snapshot}
        rest = [tp for tp in await self.bus.partitions(self.streams) if (tp.topic, tp.partition) in fresh]
        rest = [tp for tp in rest if (tp.topic, tp.partition) not in out]
        if rest:
            found = await self.bus.offsets(rest, end=self.start_at == "new")
            out |= {(tp.topic, tp.partition): offset for tp, offset in found.items()}
        return out

    async def on_revoked(self, revoked: list[TP]) -> None:
        ledgers = [self.ledgers[tp] for tp in revoked if tp in self.ledgers]
        if not ledgers or self.closed:
            return
        for ledger in ledgers:
            ledger.active = False  # nothing more from these is handed out
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.config.ack_wait_s, 30.0)
        going = set(ledgers)
        while loop.time() < deadline and any(s.out and s.ledger in going and s.due > loop.time() for s in self.holding):
            await self._wait_change(deadline - loop.time())
        try:
            await self.commit(ledgers)
        except StreamError as exc:
            log.warning("group %s: commit on revocation failed (%s)", self.group, exc)
        for ledger in ledgers:
            self.ledgers.pop((ledger.topic, ledger.partition), None)
        for slot in [s for s in self.holding if s.ledger in going]:
            del self.holding[slot]

    # -- deliveries ----------------------------------------------------------------
    async def next(self) -> KafkaDelivery:
        loop = asyncio.get_running_loop()
        buffer = self.buffer
        while True:
            if self.failure is not None:
                raise self.failure
            if self.closed:
                raise ConsumerError(f"group {self.group}: the subscription is closed", hint="subscribe again")
            now = loop.time()
            if now - self.last_commit >= self.commit_interval:
                self._commit_soon()
            if now >= self.next_due:
                delivery = await self._redeliver(now)
                if delivery is not None:
                    return delivery
            while buffer:
                ledger, record = buffer.popleft()
                if not ledger.active or not ledger.take(record.offset):
                    continue  # revoked (the next owner has it), or taken already (a refetch after a seek)
                slot = self._admit(ledger, record)
                if slot is None:
                    continue
                if isinstance(slot, SchemaError):
                    await self._undecodable(ledger, record, slot)
                    continue
                ledger.hold(record.offset)
                self.holding[slot] = None
                return self._hand_out(slot, now)
            self._commit_soon()  # the fetched batch is done
            # A fetch from aiokafka's buffer does not yield: let the commit (and aiokafka's prefetch) start.
            await asyncio.sleep(0)
            wait = min(1.0, max(0.0, self.next_due - loop.time()))
            if len(self.holding) >= self.max_in_flight or self.assigning:
                # While partitions are being set up, records fetched for them would be dropped and re-read.
                await self._wait_change(max(wait, 0.05))
                continue
            for tp, records in (await self.client.fetch(wait, self.config.fetch_batch)).items():
                owner = self.ledgers.get(tp)
                if owner is not None and owner.active:
                    buffer.extend([(owner, record) for record in records])

    def _admit(self, ledger: PartitionLedger, record: Any) -> _Slot | SchemaError | None:
        """A slot for a record the filter wants; None for one it skips; the error if it cannot be read."""
        type_header: bytes | None = None
        for name, value in record.headers:
            if name == HEADER_TYPE:
                type_header = value
            elif name == HEADER_DELETED:
                return None  # a DLQ deletion marker
        if record.value is None:
            return None  # a tombstone: no event in it
        hint = _hint(record.key, type_header)
        if hint is not None and not self._matches(hint[0]):
            return None
        try:
            event = decode_record(record.value, type_header)
        except SchemaError as exc:
            return exc
        if hint is not None and hint[1] == (event.tenant, event.type, event.subject):
            subject = hint[0]  # the key and header said what the body says
        else:
            subject = _subject(event.tenant, event.type, event.subject)
            if not self._matches(subject):
                return None
        return _Slot(ledger, record, event, subject)

    async def _undecodable(self, ledger: PartitionLedger, record: Any, exc: SchemaError) -> None:
        type_header = next((value for name, value in record.headers if name == HEADER_TYPE), None)
        hint = _hint(record.key, type_header)
        subject = hint[0] if hint else fallback_subject(record.key, self.streams[ledger.topic])
        ledger.hold(record.offset)  # not committed past until the letter is stored
        await self._dead_letter("undecodable", str(exc), ledger, record, subject, 1, None)
        ledger.settle(record.offset)

    def _hand_out(self, slot: _Slot, now: float) -> KafkaDelivery:
        slot.attempts += 1
        slot.token += 1
        slot.out = True
        backoff = self.config.backoff_s
        slot.due = due = now + (backoff[min(slot.attempts - 1, len(backoff) - 1)] if backoff else self.ack_wait)
        self.next_due = min(self.next_due, due)
        return KafkaDelivery(self, slot)

    async def _redeliver(self, now: float) -> KafkaDelivery | None:
        """Hand out again the first record whose ack-wait expired or whose nak delay passed."""
        while now >= self.next_due:
            due: _Slot | None = None
            nearest = math.inf
            for slot in self.holding:
                if due is None and slot.due <= now and slot.ledger.active:
                    due = slot
                elif slot.ledger.active:
                    nearest = min(nearest, slot.due)
            self.next_due = nearest
            if due is None:
                return None
            if due.attempts >= self.config.max_deliver:
                reason = f"not acknowledged after {due.attempts} deliveries (max_deliver)"
                await self._dead_letter(
                    "max_deliver", reason, due.ledger, due.record, due.subject, due.attempts, due.event
                )
                self.settle(due)
                continue
            return self._hand_out(due, now)
        return None

    # -- settling ------------------------------------------------------------------
    def settle(self, slot: _Slot) -> None:
        if slot.settled:
            return
        slot.settled = True
        slot.out = False
        slot.ledger.settle(slot.record.offset)
        self.holding.pop(slot, None)
        self._notify()

    def nak(self, slot: _Slot, token: int, delay: float | None) -> None:
        if slot.settled or token != slot.token:
            return
        slot.out = False
        slot.due = asyncio.get_running_loop().time() + max(0.0, delay or 0.0)
        self.next_due = min(self.next_due, slot.due)
        self._notify()

    async def term(self, slot: _Slot, reason: str) -> None:
        if slot.settled:
            return
        await self._dead_letter("rejected", reason, slot.ledger, slot.record, slot.subject, slot.attempts, slot.event)
        self.settle(slot)

    async def _dead_letter(
        self,
        kind: DeadLetterKind,
        reason: str,
        ledger: PartitionLedger,
        record: Any,
        subject: str,
        deliveries: int,
        event: Event | None,
    ) -> None:
        headers = header_map(record.headers)
        key = split_key(record.key)
        letter = dead_letter(
            kind,
            reason,
            raw=record.value or b"",
            stream=ledger.stream,
            broker_subject=subject,
            seq=position(record.partition, record.offset),
            partition=record.partition,
            group=self.group,
            deliveries=deliveries,
            original_id=event.id if event else _text(headers.get(HEADER_ID)),
            original_type=event.type if event else _text(headers.get(HEADER_TYPE)),
            tenant=event.tenant if event else key[0] if key else None,
        )
        await self.bus.publish(letter)  # acked by the broker before the record is settled

    async def commit(self, ledgers: list[PartitionLedger] | None = None) -> None:
        """Commit the lowest unsettled offset of each (active, or the given) partition."""
        async with self.commit_lock:
            targets = ledgers if ledgers is not None else [x for x in self.ledgers.values() if x.active]
            offsets = {}
            for ledger in targets:
                offset = ledger.commit_due()
                if offset is not None:
                    offsets[ledger.topic, ledger.partition] = offset
            self.last_commit = asyncio.get_running_loop().time()
            if offsets and await self.client.commit(offsets):
                for ledger in targets:
                    ledger.committed = offsets.get((ledger.topic, ledger.partition), ledger.committed)

    def _commit_soon(self) -> None:
        """Commit in the background, unless a commit is in flight (the next one takes this one's work)."""
        if self.committing is None or self.committing.done():
            self.committing = asyncio.create_task(self._background_commit(), name=f"spine-commit-{self.group}")

    async def _background_commit(self) -> None:
        try:
            await self.commit()
        except StreamError as exc:
            self.failure = exc  # raised to the subscriber by next(), as an awaited commit's would be

    def _notify(self) -> None:
        if self.waiting:
            self.changed.set()
            self.changed = asyncio.Event()

    async def _wait_change(self, seconds: float) -> None:
        changed = self.changed
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.0, seconds))
        finally:
            self.waiting -= 1


@functools.lru_cache(maxsize=4096)
def _subject(tenant: str, type_name: str, key: str) -> str:
    """``nats_subject``, cached: a stream repeats a few keys, and escaping costs."""
    return nats_subject(tenant, type_name, key)


@functools.lru_cache(maxsize=4096)
def _hint(key: bytes | None, type_header: bytes | None) -> tuple[str, tuple[str, str, str]] | None:
    """What a record's key and ``type`` header say: its subject and (tenant, type, key)."""
    parsed = split_key(key)
    if parsed is None or not type_header:
        return None
    try:
        type_name = type_header.decode()
    except UnicodeDecodeError:
        return None
    return _subject(parsed[0], type_name, parsed[1]), (parsed[0], type_name, parsed[1])


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace")
