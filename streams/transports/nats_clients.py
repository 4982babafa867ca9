"""nats-py's clients for the NATS transport, minus their per-message costs.

Error translation (``translate``), the pull loop of a group member or reader
(``Puller``), the ack inbox of one ``publish_many`` (``AckInbox``), and the
positions read off a message's ack subject. With ``nats.py`` and
``nats_admin.py``, the only modules that import ``nats``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, Self, cast

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from schemas import Event
from streams.bus import PublishAck
from streams.errors import BrokerUnavailable, PublishError, StreamError, StreamNotFound


def translate(exc: Exception, what: str) -> StreamError:
    """Map a nats-py error onto Spine's tree (call as ``raise translate(e, ...) from e``)."""
    if isinstance(exc, nats.js.errors.NotFoundError):
        return StreamNotFound(f"{what}: not found ({exc.description or exc})")
    if isinstance(exc, nats.errors.NoServersError | nats.errors.ConnectionClosedError):
        return BrokerUnavailable(f"{what}: no connection to NATS", hint="is the broker running? `spine broker status`")
    if isinstance(exc, nats.errors.TimeoutError | nats.errors.NoRespondersError):
        return PublishError(f"{what}: the broker did not answer in time", hint="check `spine broker status`")
    if isinstance(exc, nats.js.errors.APIError):
        return StreamError(f"{what}: JetStream said {exc.description or exc} (code {exc.err_code})")
    return StreamError(f"{what}: {type(exc).__name__}: {exc}")


def seq_and_deliveries(msg: Msg) -> tuple[int, int]:
    """(stream sequence, delivery count) of a JetStream message.

    ``msg.metadata`` also builds a datetime and two dataclasses (about 10 us, a
    tenth of a delivery's whole cost), so the common v1 ack subject
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>``
    is read directly; any other form goes through nats-py.
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[4])
    meta = msg.metadata
    return meta.sequence.stream, meta.num_delivered


def stream_and_consumer_seq(msg: Msg) -> tuple[int, int]:
    """(stream sequence, consumer sequence) of a JetStream message, from its ack subject when it can."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[6])
    meta = msg.metadata
    return meta.sequence.stream, meta.sequence.consumer


def pending_of(msg: Msg) -> int:
    """How many messages the consumer had left to deliver after ``msg``."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[8])
    return int(msg.metadata.num_pending)


class AckInbox:
    """The acks of one ``publish_many``: nats-py's ``publish_async``, minus its per-message costs.

    For every message ``publish_async`` draws random bytes for a token, builds a
    future with a done callback and parses the ack with the stdlib ``json`` and
    a dataclass: more than encoding the event costs. Here publish ``i`` replies
    to ``<inbox>.<i>`` and the inbox callback writes its ack into a list.
    """

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._sub: Subscription | None = None
        self._acks: list[PublishAck | None] = []  # by publish index
        self.waiting: dict[int, Event] = {}  # sent, no ack yet
        self.failed: dict[int, Event] = {}  # to retry alone (an error reply, or no reply in time)
        self.progress = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    def expect(self, event: Event) -> str:
        """Register the next publish; returns its reply subject."""
        index = len(self._acks)
        self._acks.append(None)
        self.waiting[index] = event
        return f"{self._prefix}{index}"

    def settle(self, index: int, ack: PublishAck) -> None:
        self._acks[index] = ack

    def acks(self) -> list[PublishAck]:
        if self.waiting or self.failed:
            raise AssertionError("publish_many returned with unsettled publishes")
        return cast("list[PublishAck]", self._acks)  # every slot is settled

    async def _on_ack(self, msg: Msg) -> None:
        index = int(msg.subject[len(self._prefix) :])
        event = self.waiting.pop(index, None)
        if event is None:
            return  # a late ack of a publish that was retried
        ack = _pub_ack(msg)
        if ack is None:
            self.failed[index] = event
        else:
            self._acks[index] = ack
        self.progress.set()


def _pub_ack(msg: Msg) -> PublishAck | None:
    """The broker's ack, or None for an error reply (no stream, a JetStream error)."""
    if msg.headers and msg.headers.get(api.Header.STATUS):
        return None
    try:
        doc = orjson.loads(msg.data)
        return PublishAck(doc["stream"], doc["seq"], bool(doc.get("duplicate")))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None  # {"error": {...}} has no stream


class Puller:
    """One group member's pull requests to a durable consumer: nats-py's fetch, minus its per-message tasks.

    ``PullSubscription.fetch`` waits for each message with ``next_msg``, which
    starts two asyncio tasks per message (about 40 us, as much as the rest of a
    delivery). Here the inbox callback appends to a deque and wakes ``fetch``
    once per batch. The protocol is nats-py's: a ``no_wait`` request first
    (whatever is there now), and only if that brings nothing, one that lingers
    until the batch fills or it expires. Each request has its own reply
    subject, so a late status of an abandoned request is ignored, while its
    late messages are kept for the next fetch (they count as delivered and
    would otherwise sit out ``ack_wait``).
    """

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._msgs: deque[Msg] = deque()
        self._requests = 0
        self._reply = ""
        self._want = 0
        self._ended: Msg | None = None  # the status that ended the current request
        self._wake = asyncio.Event()

    async def start(self) -> Self:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        return self

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if not status:
            self._msgs.append(msg)
            if len(self._msgs) >= self._want:
                self._wake.set()
        elif msg.subject == self._reply and status != api.StatusCode.CONTROL_MESSAGE:
            self._ended = msg
            self._wake.set()

    async def fetch(self, batch: int, wait_s: float, idle: Callable[[], None] | None = None) -> list[Msg]:
        """Up to ``batch`` messages; ``[]`` if none arrived within ``wait_s`` seconds.

        ``idle`` is called when the consumer had nothing to deliver, before the wait."""
        if not self._msgs:
            deadline = asyncio.get_running_loop().time() + wait_s
            await self._request(batch, deadline, no_wait=True)
            if not self._msgs:
                if idle is not None:
                    idle()
                await self._request(batch, deadline, no_wait=False)
        return [self._msgs.popleft() for _ in range(min(batch, len(self._msgs)))]

    def _take_ended(self) -> Msg | None:
        ended, self._ended = self._ended, None
        return ended

    async def _request(self, batch: int, deadline: float, *, no_wait: bool) -> None:
        """Ask for ``batch`` messages; return once they are here, the request ends, or at ``deadline``."""
        expires = int((deadline - asyncio.get_running_loop().time()) * 1e9) - 100_000
        if expires <= 0:
            return
        self._requests += 1
        self._reply = f"{self._inbox}.{self._requests}"
        self._want = batch
        self._ended = None
        self._wake.clear()
        request: dict[str, Any] = {"batch": batch}
        if no_wait:
            # Without "expires": the server answers at once (404) when it has nothing,
            # where with one it would hold the request until then.
            request["no_wait"] = True
        else:
            request["expires"] = expires
            # Lingering: hand over the first message at once (the request keeps
            # delivering the rest into the deque for the next fetch), so a lone
            # event is not held until the batch fills or the request expires.
            self._want = 1
        await self._nc.publish(self._next, orjson.dumps(request), reply=self._reply)
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                return
            ended = self._take_ended()
            if ended is None:
                return  # the batch is here
            status = (ended.headers or {}).get(api.Header.STATUS)
            if status in (api.StatusCode.NO_MESSAGES, api.StatusCode.REQUEST_TIMEOUT):
                return  # the server has nothing more for this request
            if status != api.StatusCode.CONFLICT:
                raise nats.js.errors.APIError.from_msg(ended)
            # 409 (leadership change, max waiting, ...) is transient, as in nats-py: keep waiting.
            if len(self._msgs) >= self._want:
                return
            self._wake.clear()
