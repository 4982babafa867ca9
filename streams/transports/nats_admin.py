"""Streams and checkpoints of the NATS transport: provisioning, describe, lag, delete.

One JetStream stream per catalog entry, created on connect and updated by
``provision``; processor checkpoints live in a JetStream KV bucket. Each call
takes the bus (``JetStreamBus``) and reads its JetStream context when it runs.
"""

from __future__ import annotations

from typing import Any, Protocol

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from streams.bus import ApplyResult, GroupLag, StreamInfo, StreamLag
from streams.catalog import CATALOG, StreamSpec, stream_spec
from streams.config import BusConfig
from streams.errors import StreamNotFound
from streams.naming import check_group
from streams.transports.nats_clients import translate


class JetStreamBus(Protocol):
    """What these calls need from the bus."""

    config: BusConfig

    @property
    def js(self) -> JetStreamContext: ...


def _stream_config(spec: StreamSpec, config: BusConfig) -> api.StreamConfig:
    settings = config.stream(spec.name)
    return api.StreamConfig(
        name=spec.name,
        description=f"Spine {spec.name} (key: {spec.key})",
        subjects=spec.nats_subjects(),
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        max_age=settings.max_age_s,
        max_bytes=settings.max_bytes,
        num_replicas=settings.replicas,
        duplicate_window=settings.duplicate_window_s,
        max_msgs_per_subject=1 if spec.compacted else -1,
        allow_direct=True,
    )


async def ensure_streams(bus: JetStreamBus) -> None:
    """Create missing streams (never changes existing ones: that is `provision`)."""
    for spec in CATALOG:
        try:
            await bus.js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            try:
                await bus.js.add_stream(_stream_config(spec, bus.config))
            except nats.js.errors.APIError as exc:
                raise translate(exc, f"creating stream {spec.name}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, f"reading stream {spec.name}") from exc


async def provision(bus: JetStreamBus) -> list[ApplyResult]:
    results = []
    for spec in CATALOG:
        wanted = _stream_config(spec, bus.config)
        try:
            info = await bus.js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            await bus.js.add_stream(wanted)
            results.append(ApplyResult(spec.name, "created"))
            continue
        current = info.config
        fields = ("subjects", "max_age", "max_bytes", "num_replicas", "duplicate_window", "max_msgs_per_subject")
        if all(_same(getattr(current, f), getattr(wanted, f)) for f in fields):
            results.append(ApplyResult(spec.name, "unchanged"))
            continue
        try:
            await bus.js.update_stream(wanted)
        except nats.js.errors.APIError as exc:
            raise translate(exc, f"updating stream {spec.name}") from exc
        results.append(ApplyResult(spec.name, "updated"))
    return results


async def lag(bus: JetStreamBus, group: str) -> GroupLag:
    check_group(group)
    lags: dict[str, StreamLag] = {}
    for spec in CATALOG:
        try:
            info = await bus.js.consumer_info(spec.name, group)
        except nats.js.errors.NotFoundError:
            continue
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, f"reading group {group}") from exc
        lags[spec.name] = StreamLag(info.num_pending or 0, info.num_ack_pending or 0)
    if not lags:
        raise StreamNotFound(f"no consumer group {group!r}", hint="groups appear once a member subscribes")
    return GroupLag(group, lags)


async def describe(bus: JetStreamBus) -> list[StreamInfo]:
    out = []
    try:
        for spec in CATALOG:
            try:
                info = await bus.js.stream_info(spec.name)
            except nats.js.errors.NotFoundError:
                continue
            groups: dict[str, int] = {}
            for consumer in await bus.js.consumers_info(spec.name):
                if consumer.config.durable_name:
                    groups[consumer.name] = (consumer.num_pending or 0) + (consumer.num_ack_pending or 0)
            state = info.state
            out.append(
                StreamInfo(
                    spec.name,
                    tuple(info.config.subjects or ()),
                    state.messages,
                    state.bytes,
                    state.first_seq,
                    state.last_seq,
                    groups,
                )
            )
    except (nats.errors.Error, TimeoutError) as exc:
        raise translate(exc, "describing streams") from exc
    return out


async def delete(bus: JetStreamBus, stream: str, seq: int) -> None:
    spec = stream_spec(stream)
    try:
        await bus.js.delete_msg(spec.name, seq)
    except (nats.errors.Error, TimeoutError) as exc:
        raise translate(exc, f"deleting {spec.name} seq {seq}") from exc


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a or 0) - float(b or 0)) < 1e-3
    return bool(a == b)


_CHECKPOINT_BUCKET = "spine_checkpoints"


class NatsCheckpoints:
    """Checkpoints in a JetStream KV bucket (file storage, latest value per key)."""

    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self._kv = kv
        self._js = js

    async def get(self, key: str) -> bytes | None:
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, f"reading checkpoint {key}") from exc
        return entry.value

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self._kv.put(key, value)
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, f"writing checkpoint {key}") from exc

    async def keys(self, prefix: str) -> list[str]:
        """The keys, from the subjects of the bucket's stream (checkpoints are never deleted).

        Not nats-py's ``KeyValue.keys``: its watcher may see the end of the initial
        values before the first one arrives, and then reports no keys at all (seen on
        a loaded machine)."""
        subject_prefix = f"$KV.{_CHECKPOINT_BUCKET}."
        try:
            info = await self._js.stream_info(f"KV_{_CHECKPOINT_BUCKET}", subjects_filter=f"{subject_prefix}>")
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, "listing checkpoints") from exc
        keys = (subject[len(subject_prefix) :] for subject in (info.state.subjects or {}))
        return sorted(k for k in keys if k.startswith(prefix))


async def open_checkpoints(bus: JetStreamBus) -> NatsCheckpoints:
    """The checkpoint bucket, created on first use."""
    try:
        try:
            kv = await bus.js.key_value(_CHECKPOINT_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            kv = await bus.js.create_key_value(
                bucket=_CHECKPOINT_BUCKET,
                history=1,
                storage=api.StorageType.FILE,
                description="Spine processor checkpoints (state + input positions)",
            )
    except (nats.errors.Error, TimeoutError) as exc:
        raise translate(exc, "opening the checkpoint bucket") from exc
    return NatsCheckpoints(kv, bus.js)
