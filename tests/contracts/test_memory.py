"""The Bus contract on the in-memory transport."""

from __future__ import annotations

import uuid

import pytest

from streams import Bus
from streams.transports.memory import MemoryBus
from tests.contracts.bus_contract import CONTRACT_CONFIG, BusContract, Connect


class TestMemoryBus(BusContract):
    @pytest.fixture
    def connect(self) -> Connect:
        name = f"contract-{uuid.uuid4().hex}"

        async def make() -> Bus:
            return MemoryBus(name, CONTRACT_CONFIG)

        return make
