"""The Bus on Kafka. With ``kafka_clients.py``, the only modules that import ``aiokafka``.

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
- A consumer group is a Kafka consumer group (``_Member``, in
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
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Self

import aiokafka.errors as kerr
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import murmur2

from schemas import Event, SchemaError, decode, encode
from streams.bus import (
    ApplyResult,
    CheckpointStore,
    GroupLag,
    PublishAck,
    Record,
    StartAt,
    StreamInfo,
    StreamLag,
    Undecodable,
)
from streams.catalog import (
    CATALOG,
    StreamSpec,
    kafka_key,
    nats_filter,
    nats_subject,
    stream_for_type,
    stream_of_subject,
    stream_spec,
    streams_for_pattern,
    subject_matches,
)
from streams.config import BusConfig, StreamSettings
from streams.errors import (
    BrokerUnavailable,
    InvalidArgument,
    PublishError,
    StreamError,
    StreamNotFound,
)
from streams.naming import check_group, check_pattern, check_tenant
from streams.transports.kafka_checkpoints import CHECKPOINT_TOPIC, KafkaCheckpoints
from streams.transports.kafka_clients import (
    TOPIC_EXISTS,
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
    fallback_subject,
    header_map,
    position,
    split_position,
    split_subject,
    subject_of_record,
)

log = logging.getLogger("spine.streams.kafka")

Headers = list[tuple[str, bytes]]


def topic_configs(spec: StreamSpec, settings: StreamSettings) -> dict[str, str]:
    """Kafka topic configs for a stream's settings (``max_bytes`` is shared by its partitions)."""
    return {
        "cleanup.policy": "compact" if spec.compacted else "delete",
        "retention.ms": str(int(settings.max_age_s * 1000)) if settings.max_age_s > 0 else "-1",
        "retention.bytes": str(max(1, settings.max_bytes // settings.partitions)) if settings.max_bytes > 0 else "-1",
    }


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
        self._partitions: dict[str, list[int]] = {}
        self._txn_lock = asyncio.Lock()
        self._reader_lock = asyncio.Lock()
        self._checkpoints: KafkaCheckpoints | None = None
        self._producer_partitions: dict[str, list[int]] = {}
        self._windows = {spec.name: self.config.stream(spec.name).duplicate_window_s for spec in CATALOG}
        self.members: set[Member] = set()  # closed with the bus
        self._consumers: set[Any] = set()  # of replay and follow: closed with the bus too
        self.topics = {spec.kafka_topic: spec for spec in CATALOG}

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
            await self._ensure_topics()
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
        # A reader its caller left suspended (a cancelled task) would never stop its consumer.
        for consumer in list(self._consumers):
            await stop_client(consumer)
        self._consumers.clear()
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

    # -- provisioning ----------------------------------------------------------------
    def _new_topic(self, spec: StreamSpec) -> Any:
        settings = self.config.stream(spec.name)
        return NewTopic(
            spec.kafka_topic, settings.partitions, settings.replicas, topic_configs=topic_configs(spec, settings)
        )

    async def _create_topics(self, specs: list[StreamSpec]) -> None:
        try:
            response = await self.admin.create_topics([self._new_topic(spec) for spec in specs])
        except kerr.KafkaError as exc:
            raise translate(exc, "creating topics") from exc
        for topic, code, message, *_ in response.topic_errors:
            if code not in (0, TOPIC_EXISTS):
                raise StreamError(f"creating topic {topic}: {kerr.for_code(code).__name__}: {message}")

    async def _ensure_topics(self) -> None:
        """Create missing topics (never changes existing ones: that is ``provision``)."""
        try:
            existing = set(await self.admin.list_topics())
        except kerr.KafkaError as exc:
            raise translate(exc, "listing topics") from exc
        missing = [spec for spec in CATALOG if spec.kafka_topic not in existing]
        if missing:
            await self._create_topics(missing)

    async def _topic_config(self, topic: str) -> dict[str, str]:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        (response,) = await self.admin.describe_configs([resource])
        return {entry[0]: entry[1] for res in response.resources for entry in res[4]}

    async def provision(self) -> list[ApplyResult]:
        results = []
        try:
            existing = set(await self.admin.list_topics())
            for spec in CATALOG:
                topic = spec.kafka_topic
                if topic not in existing:
                    await self._create_topics([spec])
                    results.append(ApplyResult(spec.name, "created"))
                    continue
                settings = self.config.stream(spec.name)
                (meta,) = await self.admin.describe_topics([topic])
                partitions = len(meta["partitions"])
                replicas = len(meta["partitions"][0]["replicas"]) if partitions else settings.replicas
                if replicas != settings.replicas:
                    raise StreamError(
                        f"{topic} has replication factor {replicas}, the settings say {settings.replicas}",
                        hint="Kafka changes replication by partition reassignment, which Spine leaves to you",
                    )
                if partitions > settings.partitions:
                    raise InvalidArgument(
                        f"{topic} has {partitions} partitions, the settings say {settings.partitions}",
                        hint="Kafka cannot remove partitions: raise the setting or recreate the topic",
                    )
                wanted = topic_configs(spec, settings)
                current = await self._topic_config(topic)
                if partitions == settings.partitions and all(current.get(k) == v for k, v in wanted.items()):
                    results.append(ApplyResult(spec.name, "unchanged"))
                    continue
                await self._update_topic(topic, wanted, current, partitions, settings.partitions)
                self._partitions.pop(topic, None)
                results.append(ApplyResult(spec.name, "updated"))
        except kerr.KafkaError as exc:
            raise translate(exc, "provisioning topics") from exc
        return results

    async def _update_topic(
        self, topic: str, wanted: dict[str, str], current: dict[str, str], partitions: int, target: int
    ) -> None:
        try:
            if any(current.get(k) != v for k, v in wanted.items()):
                resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=wanted)
                for response in await self.admin.alter_configs([resource]):
                    for code, message, *_ in response.resources:
                        if code:
                            raise StreamError(f"updating {topic}: {kerr.for_code(code).__name__}: {message}")
            if partitions < target:
                await self.admin.create_partitions({topic: NewPartitions(target)})
        except kerr.IncompatibleBrokerVersion as exc:
            raise StreamError(
                f"cannot update {topic} to the settings: the broker does not support it ({exc})",
                hint="this broker (e.g. the Tansu dev broker) cannot change topics: recreate them or keep the settings",
            ) from exc

    async def partitions(self, topics: Iterable[str]) -> list[Any]:
        """The ``TopicPartition``s of ``topics`` (cached; provisioning refreshes it)."""
        topics = list(topics)
        missing = [t for t in topics if t not in self._partitions]
        if missing:
            try:
                described = await self.admin.describe_topics(missing)
            except kerr.KafkaError as exc:
                raise translate(exc, "describing topics") from exc
            for meta in described:
                if meta["error_code"] or not meta["partitions"]:
                    raise StreamNotFound(f"topic {meta['topic']} does not exist", hint="run `spine streams apply`")
                self._partitions[meta["topic"]] = sorted(p["partition"] for p in meta["partitions"])
        return [TopicPartition(t, p) for t in topics for p in self._partitions[t]]

    async def offsets(self, tps: list[Any], *, end: bool) -> dict[Any, int]:
        """First offsets, or end offsets (high watermarks), of ``tps``."""
        try:
            if not end:
                return dict(await self.reader.beginning_offsets(tps))
            listed = dict(await self.reader.end_offsets(tps))
            return await self._high_watermarks(listed)
        except kerr.KafkaError as exc:
            raise translate(exc, "reading offsets") from exc

    async def _high_watermarks(self, listed: dict[Any, int]) -> dict[Any, int]:
        """The true end offsets: a fetch from the listed ends reports each high watermark.

        Tansu 0.6 answers ListOffsets(latest) with the last batch's base offset + 1,
        short of the end when that batch held several records. On Kafka both agree
        and this costs one empty fetch.
        """
        if not listed:
            return listed
        reader = self.reader
        async with self._reader_lock:
            reader.assign(list(listed))
            try:
                for tp, offset in listed.items():
                    reader.seek(tp, offset)
                deadline = asyncio.get_running_loop().time() + self.config.publish_timeout_s
                marks: dict[Any, int | None] = dict.fromkeys(listed)
                while any(m is None for m in marks.values()) and asyncio.get_running_loop().time() < deadline:
                    await reader.getmany(timeout_ms=20)  # the records are not wanted, only the marks
                    marks = {tp: reader.highwater(tp) for tp in listed}
            finally:
                reader.unsubscribe()
        return {tp: max(offset, marks[tp] or 0) for tp, offset in listed.items()}

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
        check_pattern(pattern)
        check_tenant(tenant)
        flt = nats_filter(pattern, tenant)
        tps = await self.partitions([spec.kafka_topic])
        first, last = await self.offsets(tps, end=False), await self.offsets(tps, end=True)
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
            try:
                found = await self.reader.offsets_for_times({tp: _ms(start) for tp in tps})
            except kerr.KafkaError as exc:
                raise translate(exc, "looking up offsets by time") from exc
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
        consumer = AIOKafkaConsumer(**self.client_options(), enable_auto_commit=False, max_poll_records=1000)
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
    ) -> AsyncIterator[Record | Undecodable]:
        spec = stream_spec(stream)
        flt = nats_filter(check_pattern(pattern), check_tenant(tenant))
        tps = await self.partitions([spec.kafka_topic])
        first = await self.offsets(tps, end=False)
        starts = {}
        for tp in tps:
            seen = (after or {}).get(tp.partition)
            if seen is not None and split_position(seen)[0] != tp.partition:
                raise InvalidArgument(f"follow {spec.name}: position {seen} is not in partition {tp.partition}")
            starts[tp] = first[tp] if seen is None else max(first[tp], split_position(seen)[1] + 1)
        consumer = AIOKafkaConsumer(**self.client_options(), enable_auto_commit=False, max_poll_records=1000)
        self._consumers.add(consumer)
        try:
            await start_client(consumer)
            consumer.assign(tps)
            for tp, offset in starts.items():
                consumer.seek(tp, offset)
            while True:
                for _, records in sorted((await consumer.getmany(timeout_ms=1000)).items()):
                    for rec in records:
                        item = self._follow_item(spec, flt, rec)
                        if item is not None:
                            yield item
        except kerr.KafkaError as exc:
            raise translate(exc, f"following {spec.name}") from exc
        finally:
            self._consumers.discard(consumer)
            await stop_client(consumer)

    def _follow_item(self, spec: StreamSpec, flt: str, rec: Any) -> Record | Undecodable | None:
        headers = header_map(rec.headers)
        if rec.value is None or HEADER_DELETED in headers:
            return None
        hinted = subject_of_record(rec.key, headers)
        if hinted is not None and not subject_matches(flt, hinted):
            return None
        seq = position(rec.partition, rec.offset)
        try:
            event = decode(rec.value)
        except SchemaError as exc:
            subject = hinted or fallback_subject(rec.key, spec)
            return Undecodable(spec.name, seq, subject, rec.value, str(exc), rec.partition)
        subject = nats_subject(event.tenant, event.type, event.subject)
        if subject != hinted and not subject_matches(flt, subject):
            return None
        return Record(spec.name, seq, subject, event, rec.partition)

    async def checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            topic = CHECKPOINT_TOPIC
            if topic not in set(await self.admin.list_topics()):
                configs = {"cleanup.policy": "compact", "retention.ms": "-1"}
                try:
                    response = await self.admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs)])
                except kerr.KafkaError as exc:
                    raise translate(exc, f"creating topic {topic}") from exc
                for name, code, message, *_ in response.topic_errors:
                    if code not in (0, TOPIC_EXISTS):
                        raise StreamError(f"creating topic {name}: {kerr.for_code(code).__name__}: {message}")
            self._checkpoints = KafkaCheckpoints(self, topic)
        return self._checkpoints

    async def read_partition(self, topic: str, partition: int, start: int) -> tuple[list[Any], int]:
        """Every record of one partition from ``start`` to its end now, and that end."""
        tp = TopicPartition(topic, partition)
        end = (await self.offsets([tp], end=True))[tp]
        if start >= end:
            return [], end
        records: list[Any] = []
        async for rec in self._read({(topic, partition): (start, end)}, None, None):
            records.append(rec)
        return records, end

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Store one record (acks=all); for checkpoints."""
        try:
            async with self._transaction():
                await self.producer.send_and_wait(topic, value, key=key)
        except kerr.KafkaError as exc:
            raise self._publish_error(exc, f"writing to {topic}") from exc

    async def _group_offsets(self, group: str, tps: list[Any]) -> dict[Any, int]:
        """Committed offsets of ``group`` (partitions without one left out)."""
        try:
            found = await self.admin.list_consumer_group_offsets(group, partitions=tps)
        except kerr.KafkaError as exc:
            raise translate(exc, f"reading the offsets of group {group}") from exc
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}

    async def lag(self, group: str) -> GroupLag:
        """Per stream: end offsets minus the group's commits; in-flight is known to its members only."""
        check_group(group)
        tps = await self.partitions(self.topics)
        committed = await self._group_offsets(group, tps)
        if not committed:
            raise StreamNotFound(f"no consumer group {group!r}", hint="groups appear once a member subscribes")
        last = await self.offsets(list(committed), end=True)
        in_flight: dict[str, int] = {}
        for member in self.members:
            if member.group == group:
                for stream, n in member.in_flight().items():
                    in_flight[stream] = in_flight.get(stream, 0) + n
        lags: dict[str, StreamLag] = {}
        for tp, offset in committed.items():
            stream = self.topics[tp.topic].name
            behind = max(0, last[tp] - offset) + (lags[stream].pending if stream in lags else 0)
            lags[stream] = StreamLag(behind, 0)
        return GroupLag(
            group,
            {
                name: StreamLag(max(0, lag.pending - in_flight.get(name, 0)), in_flight.get(name, 0))
                for name, lag in lags.items()
            },
        )

    async def describe(self) -> list[StreamInfo]:
        tps = await self.partitions(self.topics)
        first, last = await self.offsets(tps, end=False), await self.offsets(tps, end=True)
        try:
            groups = [g[0] for g in await self.admin.list_consumer_groups()]
        except kerr.KafkaError as exc:
            raise translate(exc, "listing consumer groups") from exc
        lag_by_topic: dict[str, dict[str, int]] = {topic: {} for topic in self.topics}
        for group in sorted(groups):
            for tp, offset in (await self._group_offsets(group, tps)).items():
                per_group = lag_by_topic[tp.topic]
                per_group[group] = per_group.get(group, 0) + max(0, last[tp] - offset)
        infos = []
        for topic, spec in self.topics.items():
            parts = [tp for tp in tps if tp.topic == topic]
            filled = [tp for tp in parts if last[tp] > first[tp]]
            infos.append(
                StreamInfo(
                    spec.name,
                    (topic,),
                    sum(last[tp] - first[tp] for tp in parts),
                    0,  # Kafka reports sizes per log dir only; not shown
                    position(filled[0].partition, first[filled[0]]) if filled else 0,
                    position(filled[-1].partition, last[filled[-1]] - 1) if filled else 0,
                    lag_by_topic[topic],
                )
            )
        return infos

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

    @classmethod
    def open(
        cls, filling: dict[tuple[str, int], _Filling], stream: str, topic: str, partition: int, producer: Any
    ) -> _Filling:
        filling[topic, partition] = batch = cls(stream, topic, partition, producer.create_batch())
        return batch

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


def _ms(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
