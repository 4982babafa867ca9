"""Bus settings: consumer-group timing and per-stream retention.

Plain pydantic models; ``spine.settings`` nests them under the ``SPINE_``
environment/config file so every knob is a setting, not a constant.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StreamSettings(BaseModel):
    """Retention and replication of one stream."""

    model_config = ConfigDict(extra="forbid")

    max_age_s: float = Field(default=7 * 86400, ge=0, description="0 keeps forever.")
    max_bytes: int = Field(default=-1, description="-1 for no limit.")
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    partitions: int = Field(default=3, ge=1, description="Kafka partitions.")


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
    "DLQ": StreamSettings(max_age_s=30 * 86400),
}
