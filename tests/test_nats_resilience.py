"""The NATS transport rides out a broker restart and says so."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import streams
from schemas import make_event
from streams import BusConfig
from streams.embedded import NatsServer, free_port

pytestmark = pytest.mark.nats


async def test_publish_and_consume_survive_a_broker_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    server = NatsServer(tmp_path, port)
    server.start()
    try:
        async with streams.connect(server.url, BusConfig(ack_wait_s=2)) as bus:
            first = make_event("market.tick", {"venue": "x", "symbol": "A", "price": 1.0}, tenant="restart")
            await bus.publish(first)
            with caplog.at_level(logging.WARNING, logger="spine.streams.nats"):
                server.stop()
                restart = asyncio.get_running_loop().run_in_executor(None, server.start)
                second = make_event("market.tick", {"venue": "x", "symbol": "A", "price": 2.0}, tenant="restart")
                ack = await bus.publish(second)  # retried with backoff until the broker is back
                await restart
            assert ack.seq == 2  # JetStream file storage kept the first event
            assert "lost the connection" in caplog.text
            got = []
            async for d in bus.subscribe("market.>", group="after-restart", tenant="restart", start="all"):
                got.append(d.event)
                await d.ack()
                if len(got) == 2:
                    break
            assert got == [first, second]
    finally:
        server.stop()
