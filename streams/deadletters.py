"""Building dead letters, shared by every transport.

A dead letter keeps the exact original bytes, the reason, and the source
stream/subject/sequence. Its id is derived from the source position and the
group, so if the DLQ publish succeeds but the settle that follows is lost, the
second attempt is a duplicate the broker drops.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

from schemas import derived_id, utcnow
from schemas.envelope import TENANT_PATTERN, DeadLetterEvent, DeadLetterType
from schemas.payloads.dlq import DeadLetter

log = logging.getLogger("spine.streams.dlq")

DeadLetterKind = Literal["undecodable", "max_deliver", "rejected", "late"]

_TENANT_RE = re.compile(TENANT_PATTERN)

_TYPES: dict[DeadLetterKind, DeadLetterType] = {
    "undecodable": "dlq.undecodable",
    "max_deliver": "dlq.max_deliver",
    "rejected": "dlq.rejected",
    "late": "dlq.late",
}


def tenant_of(broker_subject: str) -> str:
    """The tenant token of ``spine.<tenant>....``, or ``default`` if it has none."""
    parts = broker_subject.split(".", 2)
    if len(parts) >= 2 and parts[0] == "spine" and _TENANT_RE.match(parts[1]):
        return parts[1]
    return "default"


def dead_letter(
    kind: DeadLetterKind,
    reason: str,
    *,
    raw: bytes,
    stream: str,
    broker_subject: str,
    seq: int | None,
    group: str | None,
    deliveries: int,
    original_id: str | None = None,
    original_type: str | None = None,
    partition: int | None = None,
    tenant: str | None = None,
    letter_id: str | None = None,
) -> DeadLetterEvent:
    """A ``dlq.<kind>`` event for the given original message (``letter_id``: its own id, if set)."""
    position = f"{stream}:{partition if partition is not None else ''}:{seq}"
    log.warning("dead-lettered %s seq=%s (%s): %s", stream, seq, kind, reason)
    return DeadLetterEvent(
        id=letter_id or derived_id(f"dlq/{group or ''}", position, 0),
        type=_TYPES[kind],
        dataschema=f"spine:{_TYPES[kind]}:1",  # type: ignore[arg-type]  # the validator checks it
        source="spine/streams",
        subject=stream,
        time=utcnow(),
        tenant=tenant or tenant_of(broker_subject),
        data=DeadLetter(
            reason=reason[:2000],
            source_stream=stream,
            source_subject=broker_subject,
            source_sequence=seq,
            source_partition=partition,
            group=group,
            deliveries=deliveries,
            original_id=original_id,
            original_type=original_type,
            original_base64=DeadLetter.encode_original(raw),
        ),
    )
