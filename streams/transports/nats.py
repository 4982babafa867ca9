"""The Bus on NATS JetStream: connection, publish, consumer groups, replay and follow.

With ``nats_clients.py`` (error translation, the pull loop, the publish ack
inbox) and ``nats_admin.py`` (streams, lag, describe, checkpoints), the only
modules that import ``nats``.

- Subjects ``spine.<tenant>.<type>.<key>``; one JetStream stream per catalog
  entry; ``Nats-Msg-Id`` = event id so the broker drops duplicates within the
  stream's duplicate window.
- ``publish`` waits for the JetStream ack; ``publish_many`` pipelines async
  publishes (a sliding window of unacked ones) and returns every ack.
- A consumer group is a durable pull consumer per stream, fetched in batches
  by ``Puller`` (one wake-up per batch, not per message). The server's
  ``max_deliver`` is one more than ours: the extra delivery is the one this
  client turns into a ``dlq.max_deliver`` dead letter, then terms. Undecodable
  payloads are dead-lettered on receipt and never reach the handler.
- Every nats-py error is translated to ``streams.errors`` (``nats_clients.translate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Self

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

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
    follow_item,
)
from streams.catalog import (
    StreamSpec,
    nats_filter,
    nats_subject,
    stream_of_subject,
    stream_spec,
    streams_for_pattern,
)
from streams.config import BusConfig
from streams.deadletters import DeadLetterKind, dead_letter
from streams.errors import BrokerUnavailable, ConsumerError, InvalidArgument, PublishError
from streams.naming import check_group, check_pattern, check_tenant
from streams.rows import RowDecoder
from streams.transports import nats_admin
from streams.transports.nats_admin import NatsCheckpoints
from streams.transports.nats_clients import (
    AckInbox,
    Puller,
    pending_of,
    seq_and_deliveries,
    stream_and_consumer_seq,
    translate,
)

log = logging.getLogger("spine.streams.nats")

_FETCH_WAIT_S = 2.0
_RETRYABLE = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionReconnectingError)


@functools.lru_cache(maxsize=4096)
def _subject(tenant: str, type_name: str, key: str) -> str:
    """``nats_subject``, cached: a batch repeats a few keys (symbols, models), and escaping costs."""
    return nats_subject(tenant, type_name, key)


def _headers(event: Event) -> dict[str, str]:
    headers = {"Nats-Msg-Id": event.id, "ce-type": event.type}
    if event.traceparent:
        headers["traceparent"] = event.traceparent
    return headers


class NatsDelivery:
    """A JetStream message handed to one group member."""

    __slots__ = ("_bus", "_group", "_msg", "attempt", "event", "seq", "stream", "subject")

    def __init__(self, bus: NatsBus, group: str, msg: Msg, event: Event, stream: str, seq: int, attempt: int) -> None:
        self._bus = bus
        self._group = group
        self._msg = msg
        self.event = event
        self.stream = stream
        self.seq = seq
        self.subject = msg.subject
        self.attempt = attempt

    async def ack(self) -> None:
        try:
            await self._msg.ack()
        except nats.errors.Error as exc:
            raise ConsumerError(f"ack of {self.stream} seq {self.seq} failed: {exc}") from exc

    async def nak(self, delay: float | None = None) -> None:
        try:
            await self._msg.nak(delay=delay)
        except nats.errors.Error as exc:
            raise ConsumerError(f"nak of {self.stream} seq {self.seq} failed: {exc}") from exc

    async def term(self, reason: str) -> None:
        await self._bus._dead_letter("rejected", reason, self._msg, self.stream, self._group, self.event)


class NatsBus:
    """The Bus over one NATS connection."""

    def __init__(self, url: str, config: BusConfig | None = None) -> None:
        self.url = url
        self.config = config or BusConfig()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._closing = False
        self._checkpoints: NatsCheckpoints | None = None
        self._connected = False

    # -- lifecycle -----------------------------------------------------------------
    async def connect(self) -> Self:
        delay = 0.2
        for attempt in range(1, self.config.connect_attempts + 1):
            try:
                self._nc = await nats.connect(
                    self.url,
                    name="spine",
                    connect_timeout=2,
                    # Fail fast on the first connect (our loop retries with backoff and a
                    # clear error); once connected, reconnect forever (enabled below).
                    allow_reconnect=False,
                    max_reconnect_attempts=1,  # nats-py also retries inside the first connect
                    reconnect_time_wait=0.5,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                    error_cb=self._on_error,
                )
                break
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                if attempt == self.config.connect_attempts:
                    raise BrokerUnavailable(
                        f"cannot connect to {self.url} after {attempt} attempts ({type(exc).__name__})",
                        hint="start one with `spine broker start` or set SPINE_BROKER_URL",
                    ) from exc
                log.warning("connect to %s failed (%s); retrying in %.1fs", self.url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        assert self._nc is not None
        self._nc.options["allow_reconnect"] = True
        self._nc.options["max_reconnect_attempts"] = -1
        self._connected = True
        self._js = self._nc.jetstream(timeout=self.config.publish_timeout_s)
        await nats_admin.ensure_streams(self)
        return self

    async def _on_disconnect(self) -> None:
        if not self._closing:
            log.warning("lost the connection to %s; reconnecting", self.url)

    async def _on_reconnect(self) -> None:
        log.warning("reconnected to %s", self.url)

    async def _on_error(self, exc: Exception) -> None:
        if self._connected and not self._closing:
            log.warning("NATS connection error: %s", exc)

    async def __aenter__(self) -> Self:
        if self._nc is None:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error, asyncio.CancelledError):
                await self._nc.drain()
        self._nc = None
        self._js = None

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BrokerUnavailable("the bus is not connected", hint="use `async with streams.connect(url) as bus:`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerUnavailable("the bus is not connected", hint="use `async with streams.connect(url) as bus:`")
        return self._js

    # -- provisioning ----------------------------------------------------------------
    async def provision(self) -> list[ApplyResult]:
        return await nats_admin.provision(self)

    # -- publish -------------------------------------------------------------------
    async def publish(self, event: Event) -> PublishAck:
        subject = nats_subject(event.tenant, event.type, event.subject)
        return await self._publish(subject, encode(event), _headers(event))

    async def publish_raw(self, subject: str, data: bytes, *, msg_id: str | None = None) -> PublishAck:
        if not data:
            raise PublishError("refusing to publish an empty message", hint="pass the event bytes")
        stream_of_subject(subject)
        return await self._publish(subject, data, {"Nats-Msg-Id": msg_id} if msg_id else None)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> PublishAck:
        # A retry is safe: the Nats-Msg-Id makes a second copy a duplicate.
        delay = 0.1
        for attempt in range(1, 6):
            try:
                ack = await self.js.publish(subject, data, headers=headers)
                return PublishAck(ack.stream, ack.seq, bool(ack.duplicate))
            except _RETRYABLE as exc:
                if attempt == 5:
                    raise translate(exc, f"publish to {subject}") from exc
                await asyncio.sleep(delay)
                delay *= 2
            except nats.js.errors.NoStreamResponseError as exc:
                raise PublishError(f"no stream stores {subject}", hint="run `spine streams apply`") from exc
            except (nats.errors.Error, TimeoutError) as exc:
                raise translate(exc, f"publish to {subject}") from exc
        raise AssertionError("unreachable")

    async def publish_many(self, events: Iterable[Event]) -> list[PublishAck]:
        """Pipeline publishes, at most ``publish_window`` unacked at a time; return every ack in order.

        The window slides (each publish waits only for room, not for a whole
        window to drain). A publish whose ack is an error, or that gets no ack
        within ``publish_timeout_s`` (lost across a reconnect), is retried
        alone with ``publish``: the ``Nats-Msg-Id`` makes that safe.
        """
        nc = self.nc
        window = self.config.publish_window
        try:
            async with AckInbox(nc) as inbox:
                for event in events:
                    reply = inbox.expect(event)
                    await nc.publish(
                        _subject(event.tenant, event.type, event.subject),
                        encode(event),
                        reply=reply,
                        headers=_headers(event),
                    )
                    if len(inbox.waiting) >= window:
                        await self._settle(inbox, window - 1)
                await self._settle(inbox, 0)
        except nats.errors.Error as exc:
            raise translate(exc, "batched publish") from exc
        return inbox.acks()

    async def _settle(self, inbox: AckInbox, most: int) -> None:
        """Wait until at most ``most`` publishes are unacked, retrying failed and overdue ones alone."""
        while True:
            while inbox.failed:
                index, event = inbox.failed.popitem()
                inbox.settle(index, await self.publish(event))
            if len(inbox.waiting) <= most:
                return
            inbox.progress.clear()
            try:
                async with asyncio.timeout(self.config.publish_timeout_s):
                    await inbox.progress.wait()
            except TimeoutError:
                log.warning(
                    "no ack for %d publishes in %.0fs; retrying them", len(inbox.waiting), self.config.publish_timeout_s
                )
                inbox.failed.update(inbox.waiting)
                inbox.waiting.clear()

    # -- consume -------------------------------------------------------------------
    async def _bind(self, spec: StreamSpec, group: str, flt: str, start: StartAt) -> Puller:
        cfg = api.ConsumerConfig(
            durable_name=group,
            name=group,
            description=f"Spine consumer group {group}",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.config.ack_wait_s,
            max_deliver=self.config.max_deliver + 1,
            backoff=list(self.config.backoff_s) or None,
            filter_subject=flt,
            deliver_policy=api.DeliverPolicy.ALL if start == "all" else api.DeliverPolicy.NEW,
            max_ack_pending=max(1000, self.config.fetch_batch * 8),
        )
        try:
            try:
                existing = await self.js.consumer_info(spec.name, group)
                cfg.deliver_policy = existing.config.deliver_policy  # cannot change on update
                cfg.opt_start_seq = existing.config.opt_start_seq
                cfg.opt_start_time = existing.config.opt_start_time
            except nats.js.errors.NotFoundError:
                pass
            await self.js.add_consumer(spec.name, config=cfg)
            return await Puller(self.nc, spec.name, group).start()
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, f"joining group {group} on {spec.name}") from exc

    async def subscribe(
        self,
        pattern: str,
        *,
        group: str,
        tenant: str = "*",
        start: StartAt = "new",
    ) -> AsyncIterator[NatsDelivery]:
        check_group(group)
        check_pattern(pattern)
        check_tenant(tenant)
        flt = nats_filter(pattern, tenant)
        specs = streams_for_pattern(pattern)
        subs = [(spec.name, await self._bind(spec, group, flt, start)) for spec in specs]
        try:
            if len(subs) == 1:
                name, sub = subs[0]
                while True:
                    for delivery in await self._fetch(name, group, sub):
                        yield delivery
            else:
                async for delivery in self._merge(subs, group):
                    yield delivery
        finally:
            for _, sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _merge(self, subs: list[tuple[str, Puller]], group: str) -> AsyncIterator[NatsDelivery]:
        queue: asyncio.Queue[list[NatsDelivery] | BaseException] = asyncio.Queue(maxsize=len(subs))

        async def pull(name: str, sub: Puller) -> None:
            try:
                while True:
                    batch = await self._fetch(name, group, sub)
                    if batch:
                        await queue.put(batch)
            except Exception as exc:  # handed to the consumer, not lost in a task
                await queue.put(exc)

        tasks = [asyncio.create_task(pull(name, sub)) for name, sub in subs]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                for delivery in item:
                    yield delivery
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch(self, stream: str, group: str, sub: Puller) -> list[NatsDelivery]:
        try:
            msgs = await sub.fetch(self.config.fetch_batch, _FETCH_WAIT_S)
        except (nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError) as exc:
            log.warning("fetch from %s paused: %s; retrying", stream, exc)
            await asyncio.sleep(0.5)
            return []
        except nats.errors.Error as exc:
            raise translate(exc, f"fetching {stream} for group {group}") from exc
        out: list[NatsDelivery] = []
        max_deliver = self.config.max_deliver
        for msg in msgs:
            seq, attempt = seq_and_deliveries(msg)
            if attempt > max_deliver:
                reason = f"not acknowledged after {attempt - 1} deliveries (max_deliver)"
                await self._dead_letter("max_deliver", reason, msg, stream, group, None, attempt - 1)
                continue
            try:
                event = decode(msg.data)
            except SchemaError as exc:
                await self._dead_letter("undecodable", str(exc), msg, stream, group, None)
                continue
            out.append(NatsDelivery(self, group, msg, event, stream, seq, attempt))
        return out

    async def _dead_letter(
        self,
        kind: DeadLetterKind,
        reason: str,
        msg: Msg,
        stream: str,
        group: str,
        event: Event | None,
        deliveries: int | None = None,
    ) -> None:
        meta = msg.metadata
        letter = dead_letter(
            kind,
            reason,
            raw=msg.data,
            stream=stream,
            broker_subject=msg.subject,
            seq=meta.sequence.stream,
            group=group,
            deliveries=deliveries if deliveries is not None else meta.num_delivered,
            original_id=event.id if event else (msg.headers or {}).get("Nats-Msg-Id"),
            original_type=event.type if event else (msg.headers or {}).get("ce-type"),
        )
        await self.publish(letter)  # acked by the broker before we let go of the original
        try:
            await msg.term()
        except nats.errors.Error as exc:
            raise ConsumerError(f"term of {stream} seq {meta.sequence.stream} failed: {exc}") from exc

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
        try:
            info = await self.js.stream_info(spec.name)
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, f"reading stream {spec.name}") from exc
        stop = info.state.last_seq
        if isinstance(end, int):
            stop = min(stop, end)
        if info.state.messages == 0 or stop < max(1, start if isinstance(start, int) else 1):
            return
        cfg = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            filter_subject=nats_filter(pattern, tenant),
            inactive_threshold=30.0,
            mem_storage=True,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        if isinstance(start, int):
            if start < 1:
                raise InvalidArgument(f"replay start sequence must be >= 1, got {start}")
            cfg.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = start
        elif isinstance(start, datetime):
            cfg.deliver_policy = api.DeliverPolicy.BY_START_TIME
            cfg.opt_start_time = start.astimezone(UTC)
        try:
            sub = await self.js.pull_subscribe(cfg.filter_subject or ">", stream=spec.name, config=cfg)
        except (nats.errors.Error, TimeoutError) as exc:
            raise translate(exc, f"replaying {spec.name}") from exc
        end_ts = end.astimezone(UTC) if isinstance(end, datetime) else None
        try:
            while True:
                try:
                    msgs = await sub.fetch(self.config.fetch_batch, timeout=_FETCH_WAIT_S)
                except TimeoutError:  # nats' TimeoutError, or asyncio's that fetch() also raises
                    return  # nothing left that matches
                for msg in msgs:
                    meta = msg.metadata
                    seq = meta.sequence.stream
                    if seq > stop or (end_ts is not None and meta.timestamp > end_ts):
                        return
                    try:
                        event = decode(msg.data)
                    except SchemaError as exc:
                        log.warning("replay %s: skipped undecodable seq %d: %s", spec.name, seq, exc)
                    else:
                        yield Record(spec.name, seq, msg.subject, event)
                    if seq >= stop or meta.num_pending == 0:
                        return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

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
        position = (after or {}).get(0, 0)
        reader: Puller | None = None
        name = ""
        delivered = 0  # consumer sequence of the last message: a jump means a lost message
        try:
            while True:
                if reader is None:  # (re)open an ordered, ack-less reader at our own position
                    name = f"spine-follow-{uuid.uuid4().hex[:16]}"
                    cfg = api.ConsumerConfig(
                        name=name,
                        ack_policy=api.AckPolicy.NONE,
                        filter_subject=flt,
                        inactive_threshold=60.0,
                        mem_storage=True,
                        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=position + 1,
                    )
                    try:
                        await self.js.add_consumer(spec.name, config=cfg)
                        reader = await Puller(self.nc, spec.name, name).start()
                    except (nats.errors.Error, TimeoutError) as exc:
                        raise translate(exc, f"following {spec.name}") from exc
                    delivered = 0
                try:
                    msgs = await reader.fetch(self.config.fetch_batch, _FETCH_WAIT_S, caught_up)
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                    log.warning("follow %s: %s; reopening at seq %d", spec.name, exc, position + 1)
                    await self._close_reader(spec.name, name, reader)
                    reader = None
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    seq, consumer_seq = stream_and_consumer_seq(msg)
                    if consumer_seq != delivered + 1:  # a message went missing: reopen after the last one we have
                        log.warning("follow %s: gap after seq %d; reopening", spec.name, position)
                        await self._close_reader(spec.name, name, reader)
                        reader = None
                        break
                    delivered = consumer_seq
                    if seq <= position:
                        continue
                    position = seq
                    yield follow_item(spec.name, seq, msg.subject, msg.data, rows)
                if caught_up is not None and msgs and reader is not None and pending_of(msgs[-1]) == 0:
                    caught_up()
        finally:
            if reader is not None:
                await self._close_reader(spec.name, name, reader)

    async def _close_reader(self, stream: str, name: str, reader: Puller) -> None:
        with contextlib.suppress(Exception):
            await reader.unsubscribe()
        with contextlib.suppress(Exception):
            await self.js.delete_consumer(stream, name)

    async def checkpoints(self) -> CheckpointStore:
        if self._checkpoints is None:
            self._checkpoints = await nats_admin.open_checkpoints(self)
        return self._checkpoints

    async def lag(self, group: str) -> GroupLag:
        return await nats_admin.lag(self, group)

    async def describe(self) -> list[StreamInfo]:
        return await nats_admin.describe(self)

    async def delete(self, stream: str, seq: int) -> None:
        await nats_admin.delete(self, stream, seq)
