"""The catalog's topics on one Kafka cluster: provisioning, partitions, offsets, lag, describe.

``KafkaTopics`` works through the bus's admin client and offsets reader (the
bus starts and stops them) and caches each topic's partitions; ``provision``
refreshes that cache. With ``kafka.py``, ``kafka_clients.py`` and
``kafka_readers.py``, the only modules that import ``aiokafka``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

import aiokafka.errors as kerr
from aiokafka import TopicPartition
from aiokafka.admin import NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.bus import ApplyResult, GroupLag, StreamInfo, StreamLag
from streams.catalog import CATALOG, StreamSpec
from streams.config import BusConfig, StreamSettings
from streams.errors import InvalidArgument, StreamError, StreamNotFound
from streams.naming import check_group
from streams.transports.kafka_clients import TOPIC_EXISTS, translate
from streams.transports.kafka_group import Member
from streams.transports.kafka_ledger import position


def topic_configs(spec: StreamSpec, settings: StreamSettings) -> dict[str, str]:
    """Kafka topic configs for a stream's settings (``max_bytes`` is shared by its partitions)."""
    return {
        "cleanup.policy": "compact" if spec.compacted else "delete",
        "retention.ms": str(int(settings.max_age_s * 1000)) if settings.max_age_s > 0 else "-1",
        "retention.bytes": str(max(1, settings.max_bytes // settings.partitions)) if settings.max_bytes > 0 else "-1",
    }


class Clients(Protocol):
    """What ``KafkaTopics`` needs from its bus: the clients it started."""

    config: BusConfig

    @property
    def admin(self) -> Any: ...
    @property
    def reader(self) -> Any: ...


class KafkaTopics:
    """The catalog's topics through the bus's admin client and offsets reader."""

    def __init__(self, bus: Clients) -> None:
        self._bus = bus
        self.topics = {spec.kafka_topic: spec for spec in CATALOG}
        self._partitions: dict[str, list[int]] = {}
        self._reader_lock = asyncio.Lock()

    def _new_topic(self, spec: StreamSpec) -> Any:
        settings = self._bus.config.stream(spec.name)
        return NewTopic(
            spec.kafka_topic, settings.partitions, settings.replicas, topic_configs=topic_configs(spec, settings)
        )

    async def _create_topics(self, specs: list[StreamSpec]) -> None:
        await self._create([self._new_topic(spec) for spec in specs], "creating topics")

    async def _create(self, new: list[Any], what: str) -> None:
        try:
            response = await self._bus.admin.create_topics(new)
        except kerr.KafkaError as exc:
            raise translate(exc, what) from exc
        for topic, code, message, *_ in response.topic_errors:
            if code not in (0, TOPIC_EXISTS):
                raise StreamError(f"creating topic {topic}: {kerr.for_code(code).__name__}: {message}")

    async def ensure_compacted(self, topic: str) -> None:
        """Create ``topic`` with one compacted partition kept forever if it is missing (for checkpoints)."""
        if topic not in set(await self._bus.admin.list_topics()):
            configs = {"cleanup.policy": "compact", "retention.ms": "-1"}
            await self._create([NewTopic(topic, 1, 1, topic_configs=configs)], f"creating topic {topic}")

    async def ensure(self) -> None:
        """Create missing topics (never changes existing ones: that is ``provision``)."""
        try:
            existing = set(await self._bus.admin.list_topics())
        except kerr.KafkaError as exc:
            raise translate(exc, "listing topics") from exc
        missing = [spec for spec in CATALOG if spec.kafka_topic not in existing]
        if missing:
            await self._create_topics(missing)

    async def _topic_config(self, topic: str) -> dict[str, str]:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic)
        (response,) = await self._bus.admin.describe_configs([resource])
        return {entry[0]: entry[1] for res in response.resources for entry in res[4]}

    async def provision(self) -> list[ApplyResult]:
        results = []
        try:
            existing = set(await self._bus.admin.list_topics())
            for spec in CATALOG:
                topic = spec.kafka_topic
                if topic not in existing:
                    await self._create_topics([spec])
                    results.append(ApplyResult(spec.name, "created"))
                    continue
                settings = self._bus.config.stream(spec.name)
                (meta,) = await self._bus.admin.describe_topics([topic])
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
                for response in await self._bus.admin.alter_configs([resource]):
                    for code, message, *_ in response.resources:
                        if code:
                            raise StreamError(f"updating {topic}: {kerr.for_code(code).__name__}: {message}")
            if partitions < target:
                await self._bus.admin.create_partitions({topic: NewPartitions(target)})
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
                described = await self._bus.admin.describe_topics(missing)
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
                return dict(await self._bus.reader.beginning_offsets(tps))
            listed = dict(await self._bus.reader.end_offsets(tps))
            return await self._high_watermarks(listed)
        except kerr.KafkaError as exc:
            raise translate(exc, "reading offsets") from exc

    async def offsets_for_times(self, times: dict[Any, int]) -> Any:
        """Per partition, aiokafka's answer for the first record at or after its time (ms)."""
        try:
            return await self._bus.reader.offsets_for_times(times)
        except kerr.KafkaError as exc:
            raise translate(exc, "looking up offsets by time") from exc

    async def _high_watermarks(self, listed: dict[Any, int]) -> dict[Any, int]:
        """The true end offsets: a fetch from the listed ends reports each high watermark.

        Tansu 0.6 answers ListOffsets(latest) with the last batch's base offset + 1,
        short of the end when that batch held several records. On Kafka both agree
        and this costs one empty fetch.
        """
        if not listed:
            return listed
        reader = self._bus.reader
        async with self._reader_lock:
            reader.assign(list(listed))
            try:
                for tp, offset in listed.items():
                    reader.seek(tp, offset)
                deadline = asyncio.get_running_loop().time() + self._bus.config.publish_timeout_s
                marks: dict[Any, int | None] = dict.fromkeys(listed)
                while any(m is None for m in marks.values()) and asyncio.get_running_loop().time() < deadline:
                    await reader.getmany(timeout_ms=20)  # the records are not wanted, only the marks
                    marks = {tp: reader.highwater(tp) for tp in listed}
            finally:
                reader.unsubscribe()
        return {tp: max(offset, marks[tp] or 0) for tp, offset in listed.items()}

    async def _group_offsets(self, group: str, tps: list[Any]) -> dict[Any, int]:
        """Committed offsets of ``group`` (partitions without one left out)."""
        try:
            found = await self._bus.admin.list_consumer_group_offsets(group, partitions=tps)
        except kerr.KafkaError as exc:
            raise translate(exc, f"reading the offsets of group {group}") from exc
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}

    async def lag(self, group: str, members: Iterable[Member]) -> GroupLag:
        """Per stream: end offsets minus the group's commits; in-flight is known to its members only."""
        check_group(group)
        tps = await self.partitions(self.topics)
        committed = await self._group_offsets(group, tps)
        if not committed:
            raise StreamNotFound(f"no consumer group {group!r}", hint="groups appear once a member subscribes")
        last = await self.offsets(list(committed), end=True)
        in_flight: dict[str, int] = {}
        for member in members:
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
            groups = [g[0] for g in await self._bus.admin.list_consumer_groups()]
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
