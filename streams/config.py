"""Bus settings: consumer-group timing and per-stream retention.

Plain pydantic models; ``spine.settings`` nests them under the ``SPINE_``
environment/config file so every knob is a setting, not a constant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_DATA_DIR = Path(".spine")  # embedded brokers, archive, state: relative to the working directory


class StreamSettings(BaseModel):
    """Retention and replication of one stream."""

    model_config = ConfigDict(extra="forbid")

    max_age_s: float = Field(default=7 * 86400, ge=0, description="0 keeps forever.")
    max_bytes: int = Field(default=-1, description="-1 for no limit.")
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    partitions: int = Field(default=3, ge=1, description="Kafka partitions.")


class KafkaSettings(BaseModel):
    """Producer and consumer-group knobs of the Kafka transport (ignored by NATS)."""

    model_config = ConfigDict(extra="forbid")

    idempotence: bool = Field(
        default=True,
        description="Idempotent producer. Needs InitProducerId, which the Tansu dev broker refuses: set false there.",
    )
    transactional_id: str | None = Field(
        default=None, description="Publish each call in one transaction (needs broker support; unset: none)."
    )
    linger_ms: int = Field(default=0, ge=0, description="Wait this long to fill a producer batch.")
    max_batch_bytes: int = Field(default=1 << 18, ge=1024, description="Producer batch size per partition.")
    compression: Literal["none", "gzip"] = "none"
    session_timeout_ms: int = Field(default=10_000, ge=500, description="A silent member leaves the group after this.")
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    commit_interval_s: float = Field(
        default=1.0, gt=0, description="Acked offsets are committed at least this often (and on rebalance, close)."
    )
    dedup_ids: int = Field(
        default=100_000, ge=0, description="Event ids a bus remembers to drop repeats within the duplicate window."
    )


class BusConfig(BaseModel):
    """How consumer groups behave and how streams are provisioned."""

    model_config = ConfigDict(extra="forbid")

    ack_wait_s: float = Field(default=30.0, gt=0, description="Redeliver an unacked event after this.")
    max_deliver: int = Field(default=5, ge=1, description="Handling attempts before the DLQ.")
    backoff_s: list[float] = Field(
        default_factory=list, description="Redelivery delays per attempt (NATS); empty: ack_wait."
    )
    fetch_batch: int = Field(default=256, ge=1, le=10_000)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    publish_window: int = Field(default=2048, ge=1, description="Unacked async publishes in flight.")
    connect_attempts: int = Field(default=5, ge=1)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    streams: dict[str, StreamSettings] = Field(
        default_factory=dict,
        description="Per-stream overrides by name (MARKET, ..., DLQ); unset fields keep the defaults.",
    )

    def stream(self, name: str) -> StreamSettings:
        """Settings of stream ``name``: its defaults, overridden by what was set."""
        base = _STREAM_DEFAULTS.get(name.upper(), StreamSettings())
        for key, override in self.streams.items():
            if key.upper() == name.upper():  # env variables arrive lower-cased
                return base.model_copy(update=override.model_dump(exclude_unset=True))
        return base


# Decisions are read by idempotent consumers for longer: a wider dedup window helps them.
_STREAM_DEFAULTS = {
    "DECISIONS": StreamSettings(duplicate_window_s=3600.0, max_age_s=30 * 86400),
    # One partition: dead letters keep one order, and their Kafka positions stay small numbers.
    "DLQ": StreamSettings(max_age_s=30 * 86400, partitions=1),
}
