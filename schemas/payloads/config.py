"""Reference data that processors fold in (``config.provider``), hot-reloaded."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.payloads.base import NonEmpty, NonNegative, Payload


class ProviderConfig(Payload):
    """A deployment (provider + model + endpoint) and its routing knobs.

    The envelope subject is the config key (``deployment``); the latest event
    per key wins (the Kafka topic is compacted). ``enabled=False`` removes it.
    """

    deployment: NonEmpty = Field(description="Unique name, e.g. 'openai/gpt-4o@eastus'.")
    model_group: NonEmpty = Field(description="Alias callers ask for, e.g. 'gpt-4o'.")
    provider: NonEmpty
    model: NonEmpty
    endpoint: str | None = Field(default=None, description="Base URL; never carries credentials.")
    weight: float = Field(default=1.0, ge=0)
    priority: int = Field(default=0, description="Order in a fallback chain (lower first).")
    enabled: bool = True
    rpm_limit: int | None = Field(default=None, gt=0)
    tpm_limit: int | None = Field(default=None, gt=0)
    input_cost_per_1k: NonNegative | None = None
    output_cost_per_1k: NonNegative | None = None
    budget_usd: NonNegative | None = None
    budget_period: Literal["day", "week", "month"] | None = None
