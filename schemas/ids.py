"""Event ids: UUIDv7 for new events, UUIDv5 for derived ones.

New events get a time-ordered UUIDv7 (RFC 9562), monotonic within this
process. A processor's outputs get ``derived_id(processor, cause, index)``: a
UUIDv5 over those three values, so a redelivered input re-emits the same ids
and the broker (and every idempotent consumer) drops the duplicate.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid

# Fixed namespace for derived ids; changing it would change every derived id.
SPINE_NAMESPACE = uuid.UUID("6f0c2a0e-6b1e-4c5a-9f33-5a1de0e3b7a1")

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """A new UUIDv7 string: 48-bit Unix ms, then a 12-bit counter, then random.

    The counter keeps ids strictly increasing within a millisecond, so sorting
    ids sorts by creation order within this process.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave headroom
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


_NAMESPACE_BYTES = SPINE_NAMESPACE.bytes


def derived_id(processor: str, cause_id: str, index: int) -> str:
    """Deterministic id of output ``index`` that ``processor`` derived from ``cause_id``.

    ``uuid.uuid5(SPINE_NAMESPACE, name)`` computed without the UUID object (it
    runs for every decision): SHA-1 of namespace + name, version 5, RFC 4122
    variant. ``tests/test_schemas.py`` checks it against ``uuid.uuid5``.
    """
    name = f"{processor}\x1f{cause_id}\x1f{index}".encode()
    digest = hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()
    value = (int.from_bytes(digest[:16], "big") & _CLEAR_VERSION_VARIANT) | _V5_RFC4122
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_CLEAR_VERSION_VARIANT = ~((0xF << 76) | (0xC000 << 48)) & ((1 << 128) - 1)
_V5_RFC4122 = (5 << 76) | (0x8000 << 48)


def uuid7_time_ms(event_id: str) -> int:
    """The Unix millisecond timestamp embedded in a UUIDv7 string."""
    return uuid.UUID(event_id).int >> 80
