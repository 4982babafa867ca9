"""aiokafka's clients for the Kafka transport: error translation, start/stop, the group consumer.

Every aiokafka error becomes a ``streams.errors`` one here (``translate``), so
the bus (``kafka.py``) and the group member (``kafka_group.py``, which never
sees aiokafka) deal in Spine's errors only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import urlparse

import aiokafka.errors as kerr
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from streams.config import BusConfig
from streams.errors import (
    BrokerUnavailable,
    ConsumerError,
    InvalidArgument,
    PublishError,
    StreamError,
    StreamNotFound,
)
from streams.transports.kafka_group import Member

log = logging.getLogger("spine.streams.kafka")

TOPIC_EXISTS = 36  # Kafka's TOPIC_ALREADY_EXISTS error code
_CONNECTION_ERRORS = (
    kerr.KafkaConnectionError,
    kerr.NoBrokersAvailable,
    kerr.NodeNotReadyError,
    kerr.KafkaUnavailableError,
)


def translate(exc: BaseException, what: str) -> StreamError:
    """Map an aiokafka error onto Spine's tree (call as ``raise translate(e, ...) from e``)."""
    if isinstance(exc, StreamError):
        return exc
    if isinstance(exc, kerr.UnknownTopicOrPartitionError):
        return StreamNotFound(f"{what}: the topic does not exist", hint="run `spine streams apply`")
    if isinstance(exc, _CONNECTION_ERRORS):
        return BrokerUnavailable(
            f"{what}: no connection to Kafka ({exc})", hint="is the broker up? check the kafka:// URL"
        )
    if isinstance(exc, kerr.KafkaTimeoutError | kerr.RequestTimedOutError):
        return PublishError(f"{what}: the broker did not answer in time", hint="check the broker's health and load")
    if isinstance(
        exc,
        kerr.TopicAuthorizationFailedError | kerr.GroupAuthorizationFailedError | kerr.ClusterAuthorizationFailedError,
    ):
        return StreamError(f"{what}: not authorized ({type(exc).__name__})", hint="check the cluster's ACLs for Spine")
    if isinstance(exc, kerr.CommitFailedError | kerr.IllegalStateError | kerr.ConsumerStoppedError):
        return ConsumerError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, kerr.IncompatibleBrokerVersion):
        return StreamError(f"{what}: the broker does not support it ({exc})")
    if isinstance(exc, kerr.KafkaError):
        return StreamError(f"{what}: Kafka said {type(exc).__name__}: {exc}")
    return StreamError(f"{what}: {type(exc).__name__}: {exc}")


def bootstrap_servers(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092`` (port 9092 if left out)."""
    parsed = urlparse(url)
    hosts = [h.strip() for h in parsed.netloc.split(",") if h.strip()]
    hint = "Kafka URLs look like kafka://host:9092[,host2:9092]"
    if parsed.scheme != "kafka" or not hosts:
        raise InvalidArgument(f"not a Kafka URL: {url!r}", hint=hint)
    servers = []
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep or (":" in name and not name.endswith("]")):  # no port given (or a bare IPv6 address)
            name, port = host, "9092"
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgument(f"bad broker address {host!r} in {url!r}", hint=hint)
        servers.append(f"{name}:{port}")
    return ",".join(servers)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """aiokafka's rebalance callbacks, handed to the member as plain (topic, partition) tuples."""

    def __init__(self, member: Member) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.member.on_revoked([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.member.on_assigned([(tp.topic, tp.partition) for tp in assigned])


class GroupConsumer:
    """One aiokafka group consumer, its errors translated: what a ``Member`` drives."""

    def __init__(self, options: dict[str, Any], config: BusConfig, group: str) -> None:
        kafka = config.kafka
        self.group = group
        self.consumer = AIOKafkaConsumer(
            **options,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=config.fetch_batch,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            isolation_level="read_committed" if kafka.transactional_id else "read_uncommitted",
        )

    async def start(self, topics: list[str], member: Member) -> None:
        try:
            await start_client(self.consumer)
            self.consumer.subscribe(topics, listener=_Listener(member))
        except kerr.KafkaError as exc:
            raise translate(exc, f"joining group {self.group}") from exc

    async def fetch(self, timeout_s: float, max_records: int) -> dict[tuple[str, int], list[Any]]:
        try:
            batch = await self.consumer.getmany(timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records)
        except kerr.KafkaError as exc:
            raise translate(exc, f"fetching for group {self.group}") from exc
        return {(tp.topic, tp.partition): records for tp, records in batch.items()}

    async def committed(self, topic: str, partition: int) -> int | None:
        try:
            offset = await self.consumer.committed(TopicPartition(topic, partition))
        except kerr.KafkaError as exc:
            raise translate(exc, f"reading the offsets of group {self.group}") from exc
        return None if offset is None else int(offset)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.consumer.seek(TopicPartition(topic, partition), offset)

    async def commit(self, offsets: dict[tuple[str, int], int]) -> bool:
        """Commit; False if a rebalance took the partitions (the next owner re-reads from its commit)."""
        try:
            await self.consumer.commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})
        except (kerr.CommitFailedError, kerr.IllegalStateError, kerr.RebalanceInProgressError) as exc:
            log.info("group %s: commit not taken (%s); the partition is re-read from its last commit", self.group, exc)
            return False
        except kerr.KafkaError as exc:
            raise translate(exc, f"committing offsets of group {self.group}") from exc
        return True

    async def stop(self) -> None:
        await stop_client(self.consumer)


async def start_client(consumer: Any) -> None:
    await consumer.start()
    # Let aiokafka's helper task take its first step: one cancelled before it ever
    # ran re-raises CancelledError from stop() and leaves the sockets open.
    await asyncio.sleep(0)


async def stop_client(client: Any) -> None:
    """Stop an aiokafka client, quietly: it is going away either way."""
    try:
        await client.stop()
    except asyncio.CancelledError:
        # stop() can raise a CancelledError midway: a helper task cancelled before it
        # ran (see ``start_client``), or the coordination task of a member stopped from a
        # task being cancelled. Close what it skipped, then let a real cancel go on.
        for part in ("_fetcher", "_client"):
            inner = getattr(client, part, None)
            if inner is not None:
                with contextlib.suppress(Exception):
                    await inner.close()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except (kerr.KafkaError, OSError) as exc:
        log.debug("stopping %s: %s", type(client).__name__, exc)
