"""Bookkeeping of the Kafka transport: positions, per-partition ack ledgers, dedup, keys.

No I/O and no aiokafka here (that stays in ``kafka.py``), so each rule is
tested without a broker. Kafka tracks one committed offset per partition, not
an ack per message; a ``PartitionLedger`` turns the Bus's per-event acks into
the offset that is safe to commit: the lowest one not yet settled.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import cast

from pydantic import ValidationError

from schemas import Event, decode
from schemas.envelope import TENANT_PATTERN
from schemas.registry import EVENT_TYPES
from streams.bus import PublishAck
from streams.catalog import StreamSpec, escape_token, nats_subject, unescape_token

# A Kafka position (partition, offset) is one int on the Bus: the partition in the
# high bits, offset + 1 in the low bits (1-based like NATS sequences, so 0 still
# means "nothing seen"). Within a partition positions grow with offsets; across
# partitions they order partition by partition, the order ``replay`` yields.
PARTITION_SHIFT = 40
_OFFSET_MASK = (1 << PARTITION_SHIFT) - 1

# Header names (DESIGN.md, Wire format) and the one Spine adds for DLQ deletions.
HEADER_ID = "id"
HEADER_TYPE = "type"
HEADER_TRACEPARENT = "traceparent"
HEADER_CONTENT_TYPE = "content-type"
CONTENT_TYPE = b"application/cloudevents+json"  # CloudEvents Kafka binding, structured mode
HEADER_DELETED = "spine-deleted"

_TENANT_RE = re.compile(TENANT_PATTERN)


def position(partition: int, offset: int) -> int:
    """The Bus ``seq`` of the Kafka record at ``offset`` in ``partition``."""
    return (partition << PARTITION_SHIFT) | (offset + 1)


def split_position(seq: int) -> tuple[int, int]:
    """``(partition, offset)`` of a Bus ``seq`` (offset -1 for a partition's "nothing seen")."""
    return seq >> PARTITION_SHIFT, (seq & _OFFSET_MASK) - 1


def split_subject(subject: str) -> tuple[str, str, str]:
    """``(tenant, type, key)`` of a broker subject ``spine.<tenant>.<type>.<key>``.

    The caller has checked the subject with ``stream_of_subject``; the key is the
    last token (escaped on the way in), the type everything between.
    """
    parts = subject.split(".")
    return parts[1], ".".join(parts[2:-1]), unescape_token(parts[-1])


def split_key(key: bytes | None) -> tuple[str, str] | None:
    """``(tenant, subject)`` of a record key ``<tenant>/<subject>``, if it is one."""
    if not key:
        return None
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    tenant, sep, subject = text.partition("/")
    if not sep or not _TENANT_RE.match(tenant):
        return None
    return tenant, subject


def header_map(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, bytes]:
    return dict(headers or ())


def subject_of_record(key: bytes | None, headers: dict[str, bytes]) -> str | None:
    """The broker subject a record stands for, from its key and ``type`` header.

    ``None`` when the producer did not set both (a third-party client may not);
    then only the decoded event can say.
    """
    return subject_of(key, headers.get(HEADER_TYPE))


def subject_of(key: bytes | None, type_name: bytes | None) -> str | None:
    """``subject_of_record`` from the key and the ``type`` header's value."""
    parsed = split_key(key)
    if parsed is None or not type_name:
        return None
    try:
        return nats_subject(parsed[0], type_name.decode(), parsed[1])
    except UnicodeDecodeError:
        return None


def fallback_subject(key: bytes | None, spec: StreamSpec) -> str:
    """A subject for a record nobody can read: its key's tenant, the stream's family."""
    parsed = split_key(key)
    tenant, subject = parsed if parsed is not None else ("default", "")
    return f"spine.{tenant}.{spec.families[0]}.{escape_token(subject)}"


def decode_record(value: bytes, type_header: bytes | None) -> Event:
    """``schemas.decode``, faster when the ``type`` header names the model.

    One pass of pydantic's JSON validation instead of orjson + validation of a
    dict. If the header is missing, unknown or wrong, or the body is invalid,
    ``decode`` runs and says what is wrong, so the result (or the error) is the same.
    """
    validate = _validator(type_header) if type_header else None
    if validate is not None:
        try:
            return validate(value)
        except ValidationError:
            pass
    return decode(value)


@functools.lru_cache(maxsize=256)
def _validator(type_header: bytes) -> Callable[[bytes], Event] | None:
    """The JSON validator of the model a ``type`` header names (what ``model_validate_json`` calls)."""
    cls = EVENT_TYPES.get(type_header.decode(errors="replace"))
    return None if cls is None else cast("Callable[[bytes], Event]", cls.__pydantic_validator__.validate_json)


class PartitionLedger:
    """What one member took from one partition, and which offset is safe to commit.

    Records are taken in offset order. Those handed to the handler stay
    *unsettled* until acked, termed or dead-lettered (a nak keeps them
    unsettled); everything else taken (filtered out, dead-lettered on receipt)
    is settled at once. The commit offset is the lowest unsettled offset, or the
    next one to take: after a crash the next owner resumes there, so nothing
    unsettled is lost, and acked records after a stuck one are handled again
    (at-least-once; Kafka's redelivery granularity is the partition).
    """

    __slots__ = ("active", "committed", "next_offset", "partition", "stream", "topic", "unsettled")

    def __init__(self, topic: str, partition: int, stream: str, next_offset: int, committed: int | None) -> None:
        self.topic = topic
        self.partition = partition
        self.stream = stream
        self.next_offset = next_offset
        self.committed = committed
        # offset -> None; dict order is offset order because offsets are taken in order.
        self.unsettled: dict[int, None] = {}
        self.active = True

    def take(self, offset: int) -> bool:
        """Move past ``offset``; False if it was taken already (a refetch after a seek)."""
        if offset < self.next_offset:
            return False
        self.next_offset = offset + 1
        return True

    def hold(self, offset: int) -> None:
        self.unsettled[offset] = None

    def settle(self, offset: int) -> None:
        self.unsettled.pop(offset, None)

    @property
    def commit_offset(self) -> int:
        return next(iter(self.unsettled), self.next_offset)

    def commit_due(self) -> int | None:
        """The offset to commit now, or None if the group has it already."""
        offset = self.commit_offset
        return None if offset == self.committed else offset


class RecentIds:
    """Ids this bus published lately, so a repeat within the window is not stored twice.

    Kafka has no broker-side dedup by id (the idempotent producer only drops its
    own retries), so the bus keeps the last ``capacity`` ids with their acks.
    It guards one process; consumers stay idempotent on id (DESIGN.md).
    """

    __slots__ = ("_ids", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[PublishAck, float]] = OrderedDict()

    def get(self, msg_id: str, window_s: float, now: float) -> PublishAck | None:
        seen = self._ids.get(msg_id)
        if seen is None or now - seen[1] >= window_s:
            return None
        return PublishAck(seen[0].stream, seen[0].seq, duplicate=True)

    def add(self, msg_id: str, ack: PublishAck, now: float) -> None:
        if self.capacity == 0:
            return
        self._ids[msg_id] = (ack, now)
        self._ids.move_to_end(msg_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)
