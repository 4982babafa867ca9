"""The Bus contract on NATS JetStream (a real nats-server from the wheel)."""

from __future__ import annotations

import pytest

import streams
from streams import Bus
from streams.embedded import NatsServer
from tests.contracts.bus_contract import CONTRACT_CONFIG, BusContract, Connect

pytestmark = pytest.mark.nats


class TestNatsBus(BusContract):
    @pytest.fixture
    def connect(self, nats_server: NatsServer) -> Connect:
        async def make() -> Bus:
            return await streams.connect(nats_server.url, CONTRACT_CONFIG)

        return make
