"""The bus: the ``Bus`` protocol, its transports, the stream catalog, the embedded broker.

import streams
async with streams.connect("nats://127.0.0.1:4222") as bus:
    await bus.publish(event)
    async for delivery in bus.subscribe("market.>", group="analytics"):
        ...
        await delivery.ack()
"""

from __future__ import annotations

from urllib.parse import urlparse

from streams.bus import Bus, Delivery, GroupLag, PublishAck, Record, StreamInfo
from streams.catalog import CATALOG, STREAMS
from streams.config import BusConfig, StreamSettings
from streams.errors import BrokerUnavailable, InvalidArgument, PublishError, StreamError, StreamNotFound

__all__ = [
    "CATALOG",
    "STREAMS",
    "BrokerUnavailable",
    "Bus",
    "BusConfig",
    "Delivery",
    "GroupLag",
    "InvalidArgument",
    "PublishAck",
    "PublishError",
    "Record",
    "StreamError",
    "StreamInfo",
    "StreamNotFound",
    "StreamSettings",
    "connect",
]


class _Connector:
    """``connect(url)`` result: awaitable, and an async context manager."""

    def __init__(self, url: str, config: BusConfig | None) -> None:
        self.url = url
        self.config = config
        self._bus: Bus | None = None

    async def _open(self) -> Bus:
        scheme = urlparse(self.url).scheme
        if scheme in ("nats", "tls"):
            from streams.transports.nats import NatsBus

            return await NatsBus(self.url, self.config).connect()
        if scheme == "memory":
            from streams.transports.memory import MemoryBus

            return MemoryBus(urlparse(self.url).netloc or None, self.config)
        if scheme == "kafka":
            from streams.transports.kafka import KafkaBus

            return await KafkaBus(self.url, self.config).connect()
        raise InvalidArgument(
            f"unsupported broker URL {self.url!r}",
            hint="use nats://host:4222, kafka://host:9092[,host2:9092] or memory://name",
        )

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._open().__await__()

    async def __aenter__(self) -> Bus:
        self._bus = await self._open()
        return self._bus

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            await self._bus.aclose()


def connect(url: str, config: BusConfig | None = None) -> _Connector:
    """Open a bus for ``url`` (``nats://``, ``kafka://h1:9092[,h2]``, ``memory://NAME``); see the module docstring."""
    return _Connector(url, config)
