"""Replay and follow on Kafka: reads of a stream's records by position or time.

Each read runs a consumer of its own, without a group and without commits;
``KafkaReaders`` stops any a caller left suspended when the bus closes. The
DLQ's deletion markers (see ``kafka.py``) hide the letters they delete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiokafka.errors as kerr
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import SchemaError, decode
from streams.bus import Followed, Record, RowRecord, Undecodable, decoded
from streams.catalog import StreamSpec, nats_filter, nats_subject, stream_spec, subject_matches
from streams.errors import InvalidArgument
from streams.naming import check_pattern, check_tenant
from streams.ordering import TimeOrder
from streams.rows import RowDecoder
from streams.transports.kafka_admin import KafkaTopics
from streams.transports.kafka_clients import start_client, stop_client, translate
from streams.transports.kafka_ledger import (
    HEADER_DELETED,
    HEADER_TYPE,
    fallback_subject,
    header_map,
    position,
    split_position,
    subject_of,
)

log = logging.getLogger("spine.streams.kafka")


class KafkaReaders:
    """Replay and follow over one cluster; each read has a consumer of its own, closed with the bus."""

    def __init__(self, topics: KafkaTopics, client_options: dict[str, Any]) -> None:
        self._topics = topics
        self._options = client_options
        self._consumers: set[Any] = set()  # of running reads

    async def aclose(self) -> None:
        # A reader its caller left suspended (a cancelled task) would never stop its consumer.
        for consumer in list(self._consumers):
            await stop_client(consumer)
        self._consumers.clear()

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
        check_pattern(pattern)
        check_tenant(tenant)
        flt = nats_filter(pattern, tenant)
        tps = await self._topics.partitions([spec.kafka_topic])
        first, last = await self._topics.offsets(tps, end=False), await self._topics.offsets(tps, end=True)
        ranges = await self._ranges(tps, first, last, start, end)
        start_ms = _ms(start) if isinstance(start, datetime) else None
        end_ms = _ms(end) if isinstance(end, datetime) else None
        if spec.name == "DLQ":
            # Deletion markers come after the letters they delete: read to the end first.
            kept = [r async for r in self._read(ranges, end_ms, start_ms, scan_to=last)]
            deleted = {int(h[HEADER_DELETED]) for r in kept if HEADER_DELETED in (h := header_map(r.headers))}
            records: AsyncIterator[Any] = _aiter(r for r in kept if position(r.partition, r.offset) not in deleted)
        else:
            records = self._read(ranges, end_ms, start_ms)
        async for rec in records:
            if rec.value is None or rec.offset >= ranges[(rec.topic, rec.partition)][1]:
                continue
            try:
                event = decode(rec.value)
            except SchemaError as exc:
                log.warning(
                    "replay %s: skipped undecodable record %d/%d: %s", spec.name, rec.partition, rec.offset, exc
                )
                continue
            subject = nats_subject(event.tenant, event.type, event.subject)
            if subject_matches(flt, subject):
                yield Record(spec.name, position(rec.partition, rec.offset), subject, event, rec.partition)

    async def _ranges(
        self,
        tps: list[Any],
        first: dict[Any, int],
        last: dict[Any, int],
        start: int | datetime | None,
        end: int | datetime | None,
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """Per partition, the offsets ``[lo, hi)`` to read."""
        ranges = {(tp.topic, tp.partition): (first[tp], last[tp]) for tp in tps}
        if isinstance(start, int):
            if start < 1:
                raise InvalidArgument(f"replay start position must be >= 1, got {start}")
            p0, o0 = split_position(start)
            for (topic, p), (lo, hi) in ranges.items():
                ranges[topic, p] = (hi if p < p0 else max(lo, o0) if p == p0 else lo, hi)
        elif isinstance(start, datetime):
            found = await self._topics.offsets_for_times({tp: _ms(start) for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                lo, hi = ranges[tp.topic, tp.partition]
                # No record at or after the time: Kafka answers None, Tansu (0, timestamp -1).
                ranges[tp.topic, tp.partition] = (hit.offset if hit is not None and hit.timestamp >= 0 else hi, hi)
        if isinstance(end, int):
            p1, o1 = split_position(end)
            for (topic, p), (lo, hi) in ranges.items():
                ranges[topic, p] = (lo, lo if p > p1 else min(hi, o1 + 1) if p == p1 else hi)
        return ranges

    async def _read(
        self,
        ranges: dict[tuple[str, int], tuple[int, int]],
        end_ms: int | None,
        start_ms: int | None,
        scan_to: dict[Any, int] | None = None,
    ) -> AsyncIterator[Any]:
        """Records of each partition's range, partition by partition, with a consumer of its own."""
        consumer = AIOKafkaConsumer(**self._options, enable_auto_commit=False, max_poll_records=1000)
        self._consumers.add(consumer)
        try:
            await start_client(consumer)
            for (topic, p), (lo, hi) in sorted(ranges.items()):
                tp = TopicPartition(topic, p)
                stop = scan_to[tp] if scan_to is not None else hi
                if lo >= stop:
                    continue
                consumer.assign([tp])
                consumer.seek(tp, lo)
                idle = 0
                while await consumer.position(tp) < stop and idle < 5:
                    batch = (await consumer.getmany(tp, timeout_ms=1000)).get(tp, [])
                    idle = 0 if batch else idle + 1
                    for rec in batch:
                        if rec.offset >= stop or (end_ms is not None and rec.timestamp > end_ms):
                            idle = 5  # past the range: next partition
                            break
                        if start_ms is None or rec.timestamp >= start_ms:
                            yield rec
        except kerr.KafkaError as exc:
            raise translate(exc, "reading records") from exc
        finally:
            self._consumers.discard(consumer)
            await stop_client(consumer)

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
        flt = nats_filter(check_pattern(pattern), check_tenant(tenant))
        tps = await self._topics.partitions([spec.kafka_topic])
        first = await self._topics.offsets(tps, end=False)
        starts = {}
        for tp in tps:
            seen = (after or {}).get(tp.partition)
            if seen is not None and split_position(seen)[0] != tp.partition:
                raise InvalidArgument(f"follow {spec.name}: position {seen} is not in partition {tp.partition}")
            starts[tp] = first[tp] if seen is None else max(first[tp], split_position(seen)[1] + 1)
        consumer = AIOKafkaConsumer(**self._options, enable_auto_commit=False, max_poll_records=1000)
        self._consumers.add(consumer)
        try:
            await start_client(consumer)
            consumer.assign(tps)
            for tp, offset in starts.items():
                consumer.seek(tp, offset)
            topic = spec.kafka_topic
            subjects = _Subjects(flt)
            merge = TimeMerge(
                {tp.partition: offset for tp, offset in starts.items()},
                lambda p: consumer.highwater(TopicPartition(topic, p)),
            )
            while True:
                fetched = await consumer.getmany(timeout_ms=100 if merge.pending else 1000)
                for records in fetched.values():
                    for rec in records:
                        item = self._follow_item(spec, subjects, rec, rows)
                        if item is None:
                            pass
                        elif isinstance(item, Undecodable):
                            yield item  # no event time to order it by; the runner dead-letters it
                        else:
                            merge.push(item)
                for tp in tps:  # past transaction markers and filtered records too
                    merge.fetched(tp.partition, await consumer.position(tp))
                for item in merge.release(time.monotonic()):
                    yield item
                if caught_up is not None and merge.drained():
                    caught_up()
        except kerr.KafkaError as exc:
            raise translate(exc, f"following {spec.name}") from exc
        finally:
            self._consumers.discard(consumer)
            await stop_client(consumer)

    def _follow_item(self, spec: StreamSpec, subjects: _Subjects, rec: Any, rows: RowDecoder | None) -> Followed | None:
        type_header = None
        for name, value in rec.headers or ():  # a few headers: a scan costs less than a dict
            if name == HEADER_TYPE:
                type_header = value
            elif name == HEADER_DELETED:
                return None
        if rec.value is None:
            return None
        hinted = subjects.hinted(rec.key, type_header)
        if hinted is not None and not subjects.matches(hinted):
            return None
        seq = position(rec.partition, rec.offset)
        try:
            item = decoded(spec.name, seq, hinted or "", rec.value, rows, rec.partition)
        except SchemaError as exc:
            subject = hinted or fallback_subject(rec.key, spec)
            return Undecodable(spec.name, seq, subject, rec.value, str(exc), rec.partition)
        envelope = item.row if isinstance(item, RowRecord) else item.event
        subject = subjects.of(envelope.tenant, envelope.type, envelope.subject)
        if subject != hinted:  # the key and headers did not say, or said otherwise (a third-party producer)
            if not subjects.matches(subject):
                return None
            item = replace(item, subject=subject)
        return item

    async def read_partition(self, topic: str, partition: int, start: int) -> tuple[list[Any], int]:
        """Every record of one partition from ``start`` to its end now, and that end."""
        tp = TopicPartition(topic, partition)
        end = (await self._topics.offsets([tp], end=True))[tp]
        if start >= end:
            return [], end
        records: list[Any] = []
        async for rec in self._read({(topic, partition): (start, end)}, None, None):
            records.append(rec)
        return records, end


def _ms(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


class TimeMerge:
    """Merges a topic's partitions into event-time order for ``follow``.

    A partition read alone is in order, but the fetcher hands partitions over
    in chunks of thousands of records: read back to back, a processor with a
    watermark would see one partition hours ahead of another and reject the
    other's events as late (a live run would differ from its replay from the
    archive, which is in event-time order). So records wait in a buffer per
    partition (``streams.ordering.TimeOrder``) and go while every partition
    either has a record buffered or has nothing more on the broker (its next
    offset is at its high watermark, as Kafka Streams waits only for
    partitions with lag). A partition that reports lag but brings nothing for
    ``max_wait_s`` is not waited for any longer. Ties go to the lower partition.
    """

    def __init__(
        self, starts: Mapping[int, int], highwater: Callable[[int], int | None], max_wait_s: float = 5.0
    ) -> None:
        self._next = dict(starts)  # partition -> offset after the last record fetched
        self._highwater = highwater
        self._order = TimeOrder(
            starts,
            source_of=_partition_of,
            rank=int,
            behind=self._may_hold_more,
            max_wait_s=max_wait_s,
            what="a partition",
        )
        self.push = self._order.push  # delegated as they are: no extra call per record
        self.release = self._order.release
        self.drained = self._order.drained

    @property
    def pending(self) -> int:
        return self._order.held

    def fetched(self, partition: int, next_offset: int) -> None:
        self._next[partition] = next_offset

    def _may_hold_more(self, partition: int) -> bool:
        """Whether the broker holds records of ``partition`` not fetched yet."""
        end = self._highwater(partition)
        return end is None or self._next[partition] < end


def _partition_of(record: Record | RowRecord) -> int:
    return record.partition


class _Subjects:
    """The broker subjects one ``follow`` meets, and whether its filter takes them.

    A topic's keys repeat (a tenant's providers and models, a venue's symbols),
    so each is worked out once; the caches are dropped when they grow past
    ``limit`` (a stream keyed by something unbounded, like session ids).
    """

    def __init__(self, flt: str, limit: int = 65_536) -> None:
        self._flt = flt
        self._limit = limit
        self._hinted: dict[tuple[bytes | None, bytes | None], str | None] = {}
        self._of: dict[tuple[str, str, str], str] = {}
        self._matches: dict[str, bool] = {}

    def hinted(self, key: bytes | None, type_header: bytes | None) -> str | None:
        """What the record's key and ``type`` header say its subject is (``kafka_ledger.subject_of``)."""
        cache_key = (key, type_header)
        try:
            return self._hinted[cache_key]
        except KeyError:
            subject = self._hinted[cache_key] = subject_of(key, type_header)
            self._bound(self._hinted)
            return subject

    def of(self, tenant: str, type_name: str, subject: str) -> str:
        cache_key = (tenant, type_name, subject)
        try:
            return self._of[cache_key]
        except KeyError:
            nats = self._of[cache_key] = nats_subject(tenant, type_name, subject)
            self._bound(self._of)
            return nats

    def matches(self, subject: str) -> bool:
        try:
            return self._matches[subject]
        except KeyError:
            ok = self._matches[subject] = subject_matches(self._flt, subject)
            self._bound(self._matches)
            return ok

    def _bound(self, cache: dict[Any, Any]) -> None:
        if len(cache) > self._limit:
            cache.clear()
