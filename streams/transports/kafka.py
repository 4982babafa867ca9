"""The Bus on Kafka: connection, publish, consumer groups, checkpoints, DLQ deletion.

Topics and offsets live in ``kafka_admin.py``, replay and follow in
``kafka_readers.py``; with those two and ``kafka_clients.py``, the only
modules that import ``aiokafka``.

- One topic per catalog stream (``spine.market`` ... ``spine.dlq``;
  ``spine.config`` compacted). Record key ``<tenant>/<subject>`` so per-key
  order holds; the value is the CloudEvents JSON; headers ``id``, ``type``,
  ``traceparent`` and ``content-type: application/cloudevents+json``.
- A Bus ``seq`` is ``partition << 40 | offset`` (``kafka_ledger.position``):
  unique per stream, growing within a partition.
- ``publish`` waits for ``acks=all``; ``publish_many`` pipelines sends, then
  awaits every ack. Kafka cannot drop a repeated id, so the bus drops repeats
  it published itself within the stream's duplicate window. The idempotent
  producer and transactions are settings (``BusConfig.kafka``); nothing
  relies on them alone.
- A consumer group is a Kafka consumer group (``Member``, in
  ``kafka_group.py``): commits are manual, up to the lowest unsettled record.
- ``delete`` works on the DLQ only: Kafka cannot remove one record, so it
  appends a deletion marker that ``replay`` and subscribers honour; the bytes
  stay in the topic until retention removes them.
- Every aiokafka error is translated to ``streams.errors`` (``kafka_clients.translate``),
  where the clients are started and stopped and the group consumer lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Self

import aiokafka.errors as kerr
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from schemas import Event, encode
from streams.bus import (
    ApplyResult,
    CheckpointStore,
    Followed,
    GroupLag,
    PublishAck,
    Record,
    StartAt,
    StreamInfo,
)
from streams.catalog import (
    CATALOG,
    StreamSpec,
    kafka_key,
    nats_filter,
    stream_for_type,
    stream_of_subject,
    stream_spec,
    streams_for_pattern,
)
from streams.config import BusConfig
from streams.errors import BrokerUnavailable, PublishError, StreamError, StreamNotFound
from streams.naming import check_group, check_pattern, check_tenant
from streams.rows import RowDecoder
from streams.transports.kafka_admin import KafkaTopics, topic_configs
from streams.transports.kafka_checkpoints import CHECKPOINT_TOPIC, KafkaCheckpoints
from streams.transports.kafka_clients import (
    GroupConsumer,
    bootstrap_servers,
    start_client,
    stop_client,
    translate,
)
from streams.transports.kafka_group import KafkaDelivery, Member
from streams.transports.kafka_ledger import (
    CONTENT_TYPE,
    HEADER_CONTENT_TYPE,
    HEADER_DELETED,
    HEADER_ID,
    HEADER_TRACEPARENT,
    HEADER_TYPE,
    RecentIds,
    position,
    split_position,
    split_subject,
)
from streams.transports.kafka_readers import KafkaReaders

__all__ = ["KafkaBus", "bootstrap_servers", "topic_configs"]  # topic_configs lives in kafka_admin.py

log = logging.getLogger("spine.streams.kafka")

Headers = list[tuple[str, bytes]]


def _headers(event: Event) -> Headers:
    headers = [(HEADER_ID, event.id.encode()), (HEADER_TYPE, event.type.encode()), (HEADER_CONTENT_TYPE, CONTENT_TYPE)]
    if event.traceparent:
        headers.append((HEADER_TRACEPARENT, event.traceparent.encode()))
    return headers


class KafkaBus:
    """The Bus over one Kafka cluster: a producer, an admin client, an offsets reader."""

    def __init__(self, url: str, config: BusConfig | None = None) -> None:
        self.url = url
        self.bootstrap = bootstrap_servers(url)
        self.config = config or BusConfig()
        self._producer: Any = None
        self._admin: Any = None
        self._reader: Any = None
        self._recent = RecentIds(self.config.kafka.dedup_ids)
        self._txn_lock = asyncio.Lock()
        self._checkpoints: KafkaCheckpoints | None = None
        self._producer_partitions: dict[str, list[int]] = {}
        self._windows = {spec.name: self.config.stream(spec.name).duplicate_window_s for spec in CATALOG}
        self.members: set[Member] = set()  # closed with the bus
        self._topics = KafkaTopics(self)
        self._readers = KafkaReaders(self._topics, self.client_options())  # their consumers: closed with the bus too

    # -- lifecycle -----------------------------------------------------------------
    def client_options(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap, "client_id": "spine"}

    async def connect(self) -> Self:
        kafka = self.config.kafka
        delay = 0.2
        for attempt in range(1, self.config.connect_attempts + 1):
            try:
                self._producer = AIOKafkaProducer(
                    **self.client_options(),
                    acks="all",
                    enable_idempotence=kafka.idempotence or kafka.transactional_id is not None,
                    transactional_id=kafka.transactional_id,
                    linger_ms=kafka.linger_ms,
                    max_batch_size=kafka.max_batch_bytes,
                    compression_type=None if kafka.compression == "none" else kafka.compression,
                    request_timeout_ms=int(self.config.publish_timeout_s * 1000),
                )
                await self._producer.start()
                self._admin = AIOKafkaAdminClient(**self.client_options())
                await self._admin.start()
                # Short fetch waits: `offsets` fetches only to read high watermarks (Tansu mishandles 0).
                self._reader = AIOKafkaConsumer(**self.client_options(), enable_auto_commit=False, fetch_max_wait_ms=10)
                await start_client(self._reader)
                break
            except (kerr.KafkaError, OSError) as exc:
                await self._stop_clients()
                if isinstance(exc, kerr.UnknownError) and (kafka.idempotence or kafka.transactional_id):
                    raise self._producer_refused(exc, f"connecting to {self.url}") from exc
                if attempt == self.config.connect_attempts:
                    raise BrokerUnavailable(
                        f"cannot connect to {self.url} after {attempt} attempts ({type(exc).__name__})",
                        hint="start one with `spine broker start --kafka` or set SPINE_BROKER_URL",
                    ) from exc
                log.warning("connect to %s failed (%s); retrying in %.1fs", self.url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        try:
            await self._topics.ensure()
        except BaseException:
            await self._stop_clients()
            raise
        return self

    async def __aenter__(self) -> Self:
        if self._producer is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for member in list(self.members):
            await member.close()
        await self._readers.aclose()
        await self._stop_clients()

    async def _stop_clients(self) -> None:
        for name in ("_producer", "_reader"):
            client = getattr(self, name)
            setattr(self, name, None)
            if client is not None:
                await stop_client(client)
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(kerr.KafkaError, OSError):
                await admin.close()

    def _need(self, client: Any) -> Any:
        if client is None:
            raise BrokerUnavailable("the bus is not connected", hint="use `async with streams.connect(url) as bus:`")
        return client

    @property
    def admin(self) -> Any:
        return self._need(self._admin)

    @property
    def reader(self) -> Any:
        return self._need(self._reader)

    # -- provisioning, partitions, offsets (kafka_admin.py) ---------------------------
    async def provision(self) -> list[ApplyResult]:
        return await self._topics.provision()

    async def partitions(self, topics: Iterable[str]) -> list[Any]:
        """The ``TopicPartition``s of ``topics`` (cached; provisioning refreshes it)."""
        return await self._topics.partitions(topics)

    async def offsets(self, tps: list[Any], *, end: bool) -> dict[Any, int]:
        """First offsets, or end offsets (high watermarks), of ``tps``."""
        return await self._topics.offsets(tps, end=end)

    # -- publish -------------------------------------------------------------------
    @property
    def producer(self) -> Any:
        return self._need(self._producer)

    def _producer_refused(self, exc: BaseException, what: str) -> StreamError:
        return PublishError(
            f"{what}: the broker refused the idempotent/transactional producer ({type(exc).__name__})",
            hint="for brokers without InitProducerId (the Tansu dev broker) set SPINE_BUS__KAFKA__IDEMPOTENCE=false",
        )

    def _publish_error(self, exc: BaseException, what: str) -> StreamError:
        kafka = self.config.kafka
        if isinstance(exc, kerr.UnknownError) and (kafka.idempotence or kafka.transactional_id):
            return self._producer_refused(exc, what)
        return translate(exc, what)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """One transaction per publish call when ``transactional_id`` is set."""
        if self.config.kafka.transactional_id is None:
            yield
            return
        async with self._txn_lock, self.producer.transaction():
            yield

    async def publish(self, event: Event) -> PublishAck:
        spec = stream_for_type(event.type)
        key = kafka_key(event.tenant, event.subject)
        return await self._publish_one(spec, encode(event), key, _headers(event), event.id)

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> PublishAck:
        if not data:
            raise PublishError("refusing to publish an empty message", hint="pass the event bytes")
        spec = stream_spec(stream_of_subject(subject))
        tenant, type_name, key = split_subject(subject)
        headers = [(HEADER_TYPE, type_name.encode()), (HEADER_CONTENT_TYPE, CONTENT_TYPE)]
        if msg_id:
            headers.insert(0, (HEADER_ID, msg_id.encode()))
        return await self._publish_one(spec, data, kafka_key(tenant, key), headers, msg_id)

    async def _publish_one(
        self, spec: StreamSpec, value: bytes, key: bytes, headers: Headers, msg_id: str | None
    ) -> PublishAck:
        now = time.monotonic()
        if msg_id is not None:
            seen = self._recent.get(msg_id, self._windows[spec.name], now)
            if seen is not None:
                return seen
        try:
            async with self._transaction():
                meta = await self.producer.send_and_wait(spec.kafka_topic, value, key=key, headers=headers)
        except kerr.KafkaError as exc:
            raise self._publish_error(exc, f"publish to {spec.kafka_topic}") from exc
        ack = PublishAck(spec.name, position(meta.partition, meta.offset))
        if msg_id is not None:
            self._recent.add(msg_id, ack, now)
        return ack

    async def publish_many(self, events: Iterable[Event]) -> list[PublishAck]:
        """Fill one producer batch per partition, send each when full, and await every ack.

        At most ``publish_window`` events wait for acks at a time. Batches skip
        aiokafka's per-message futures and partitioner calls: the partition is the
        default partitioner's (murmur2 of the key), cached per key, so per-key
        order matches any other client's.
        """
        producer = self.producer
        acks: list[PublishAck | None] = []
        repeats: list[tuple[int, int]] = []  # (index, index of the first event with that id)
        first: dict[str, int] = {}
        filling: dict[tuple[str, int], _Filling] = {}
        sent: list[_Sent] = []
        waiting = 0
        now = time.monotonic()
        try:
            async with self._transaction():
                for event in events:
                    index = len(acks)
                    acks.append(None)
                    spec = stream_for_type(event.type)
                    seen = self._recent.get(event.id, self._windows[spec.name], now)
                    if seen is not None:
                        acks[index] = seen
                        continue
                    if event.id in first:
                        repeats.append((index, first[event.id]))
                        continue
                    first[event.id] = index
                    key = kafka_key(event.tenant, event.subject)
                    topic = spec.kafka_topic
                    partition = await self._partition(topic, key)
                    batch = filling.get((topic, partition))
                    if batch is None:
                        batch = filling[topic, partition] = _Filling(
                            spec.name, topic, partition, producer.create_batch()
                        )
                    value, headers = encode(event), _headers(event)
                    if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                        sent.append(await batch.send(producer))
                        batch = filling[topic, partition] = _Filling(
                            spec.name, topic, partition, producer.create_batch()
                        )
                        if batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
                            raise PublishError(
                                f"event {event.id} ({len(value)} bytes) does not fit in one producer batch",
                                hint="raise SPINE_BUS__KAFKA__MAX_BATCH_BYTES",
                            )
                    batch.entries.append((index, event.id))
                    waiting += 1
                    if waiting >= self.config.publish_window:
                        sent += [await b.send(producer) for b in filling.values()]
                        filling.clear()
                        await self._settle(sent, acks, now)
                        sent, waiting = [], 0
                sent += [await b.send(producer) for b in filling.values()]
                await self._settle(sent, acks, now)
        except kerr.KafkaError as exc:
            raise self._publish_error(exc, "batched publish") from exc
        for index, original in repeats:
            ack = acks[original]
            assert ack is not None
            acks[index] = PublishAck(ack.stream, ack.seq, duplicate=True)
        return [ack for ack in acks if ack is not None]

    async def _partition(self, topic: str, key: bytes) -> int:
        partitions = self._producer_partitions.get(topic)
        if partitions is None:
            partitions = sorted(await self.producer.partitions_for(topic))
            self._producer_partitions[topic] = partitions
        return _partition_of(key, tuple(partitions))

    async def _settle(self, sent: list[_Sent], acks: list[PublishAck | None], now: float) -> None:
        results = await asyncio.gather(*(s.future for s in sent), return_exceptions=True)
        failure: BaseException | None = None
        for batch, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                failure = failure or result
                continue
            for i, (index, msg_id) in enumerate(batch.entries):
                acks[index] = ack = PublishAck(batch.stream, position(batch.partition, result.offset + i))
                self._recent.add(msg_id, ack, now)  # even if another batch failed: a retry skips these
        if failure is not None:
            raise failure

    # -- consume -------------------------------------------------------------------
    async def subscribe(
        self,
        pattern: str,
        *,
        group: str,
        tenant: str = "*",
        start: StartAt = "new",
    ) -> AsyncIterator[KafkaDelivery]:
        check_group(group)
        check_pattern(pattern)
        check_tenant(tenant)
        member = Member(self, group, nats_filter(pattern, tenant), streams_for_pattern(pattern), start)
        self.members.add(member)
        try:
            await member.start()
            while True:
                yield await member.next()
        finally:
            self.members.discard(member)
            await member.close()

    def group_client(self, group: str) -> GroupConsumer:
        return GroupConsumer(self.client_options(), self.config, group)

    # -- replay, follow (kafka_readers.py), checkpoints, lag, admin --------------------
    def replay(
        self,
        stream: str,
        *,
        start: int | datetime | None = None,
        end: int | datetime | None = None,
        pattern: str = ">",
        tenant: str = "*",
    ) -> AsyncIterator[Record]:
        return self._readers.replay(stream, start=start, end=end, pattern=pattern, tenant=tenant)

    def follow(
        self,
        stream: str,
        *,
        after: Mapping[int, int] | None = None,
        pattern: str = ">",
        tenant: str = "*",
        rows: RowDecoder | None = None,
        caught_up: Callable[[], None] | None = None,
    ) -> AsyncIterator[Followed]:
        return self._readers.follow(stream, after=after, pattern=pattern, tenant=tenant, rows=rows, caught_up=caught_up)

    async def checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            await self._topics.ensure_compacted(CHECKPOINT_TOPIC)
            self._checkpoints = KafkaCheckpoints(self, CHECKPOINT_TOPIC)
        return self._checkpoints

    async def read_partition(self, topic: str, partition: int, start: int) -> tuple[list[Any], int]:
        """Every record of one partition from ``start`` to its end now, and that end."""
        return await self._readers.read_partition(topic, partition, start)

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Store one record (acks=all); for checkpoints."""
        try:
            async with self._transaction():
                await self.producer.send_and_wait(topic, value, key=key)
        except kerr.KafkaError as exc:
            raise self._publish_error(exc, f"writing to {topic}") from exc

    async def lag(self, group: str) -> GroupLag:
        """Per stream: end offsets minus the group's commits; in-flight is known to its members only."""
        return await self._topics.lag(group, self.members)

    async def describe(self) -> list[StreamInfo]:
        return await self._topics.describe()

    async def delete(self, stream: str, seq: int) -> None:
        """Mark a dead letter deleted (Kafka cannot remove one record; see the module docstring)."""
        spec = stream_spec(stream)
        if spec.name != "DLQ":
            raise StreamError(
                f"Kafka cannot delete one record from {spec.kafka_topic}",
                hint="records leave a Kafka topic by retention (retention.ms) or compaction only",
            )
        partition, offset = split_position(seq)
        tps = [tp for tp in await self.partitions([spec.kafka_topic]) if tp.partition == partition]
        if not tps or not (
            (await self.offsets(tps, end=False))[tps[0]] <= offset < (await self.offsets(tps, end=True))[tps[0]]
        ):
            raise StreamNotFound(f"{spec.name} has no record at position {seq}")
        headers = [(HEADER_DELETED, str(seq).encode())]
        try:
            await self.producer.send_and_wait(
                spec.kafka_topic, None, key=HEADER_DELETED.encode(), partition=partition, headers=headers
            )
        except kerr.KafkaError as exc:
            raise self._publish_error(exc, f"marking {spec.name} position {seq} deleted") from exc


@functools.lru_cache(maxsize=65536)
def _partition_of(key: bytes, partitions: tuple[int, ...]) -> int:
    """aiokafka's (and the Java client's) default partitioner for a non-null key."""
    return partitions[(int(murmur2(key)) & 0x7FFFFFFF) % len(partitions)]


class _Filling:
    """A producer batch being filled for one partition, and which events it holds."""

    __slots__ = ("builder", "entries", "partition", "stream", "topic")

    def __init__(self, stream: str, topic: str, partition: int, builder: Any) -> None:
        self.stream = stream
        self.topic = topic
        self.partition = partition
        self.builder = builder
        self.entries: list[tuple[int, str]] = []  # (index in the call, event id)

    async def send(self, producer: Any) -> _Sent:
        future = await producer.send_batch(self.builder, self.topic, partition=self.partition)
        return _Sent(self.stream, self.partition, self.entries, future)


class _Sent:
    __slots__ = ("entries", "future", "partition", "stream")

    def __init__(self, stream: str, partition: int, entries: list[tuple[int, str]], future: Any) -> None:
        self.stream = stream
        self.partition = partition
        self.entries = entries
        self.future = future
