"""Runner checkpoints on Kafka: a compacted topic, latest value per key.

The store reads the topic to its end before every ``get`` and ``keys``, so it
sees what other processes wrote, and keeps the values in memory (checkpoints
are few: one per processor partition). A ``put`` is acked by the broker
(acks=all) before it returns. No aiokafka here: the bus does the I/O.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

CHECKPOINT_TOPIC = "spine.checkpoints"


class _Io(Protocol):
    async def read_partition(self, topic: str, partition: int, start: int) -> tuple[list[Any], int]: ...
    async def send(self, topic: str, key: bytes, value: bytes | None) -> None: ...


class KafkaCheckpoints:
    """A ``CheckpointStore`` over one single-partition compacted topic."""

    def __init__(self, io: _Io, topic: str = CHECKPOINT_TOPIC) -> None:
        self._io = io
        self.topic = topic
        self._values: dict[str, bytes] = {}
        self._next = 0
        self._lock = asyncio.Lock()

    async def _catch_up(self) -> None:
        async with self._lock:
            records, end = await self._io.read_partition(self.topic, 0, self._next)
            for rec in records:
                if rec.key is None:
                    continue
                key = rec.key.decode()
                if rec.value is None:
                    self._values.pop(key, None)  # a tombstone
                else:
                    self._values[key] = rec.value
            self._next = max(self._next, end)

    async def get(self, key: str) -> bytes | None:
        await self._catch_up()
        return self._values.get(key)

    async def put(self, key: str, value: bytes) -> None:
        await self._io.send(self.topic, key.encode(), value)
        self._values[key] = value

    async def keys(self, prefix: str) -> list[str]:
        await self._catch_up()
        return sorted(k for k in self._values if k.startswith(prefix))
