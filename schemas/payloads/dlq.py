"""Dead letters (``dlq.*``): an event a consumer could not decode or handle.

The original bytes are kept exactly (base64), with the reason and where they
came from, so ``spine dlq redrive`` can put them back unchanged.
"""

from __future__ import annotations

import base64

from pydantic import Field

from schemas.payloads.base import Count, NonEmpty, Payload


class DeadLetter(Payload):
    """Why an event was dead-lettered and the bytes to redrive."""

    reason: NonEmpty = Field(description="One line: what was wrong.")
    source_stream: NonEmpty
    source_subject: NonEmpty = Field(description="Broker subject/topic the bytes came from.")
    source_sequence: int | None = Field(default=None, description="Stream sequence / offset.")
    source_partition: int | None = None
    group: str | None = Field(default=None, description="Consumer group that gave up.")
    deliveries: Count = 0
    original_id: str | None = None
    original_type: str | None = None
    original_base64: str = Field(description="The exact original message bytes.")

    @property
    def original(self) -> bytes:
        return base64.b64decode(self.original_base64)

    @staticmethod
    def encode_original(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")
