"""Spine's event models, ids and codec. Imports nothing else of Spine's.

from schemas import make_event, encode, decode
event = make_event("market.tick", {"venue": "x", "symbol": "BTC-USD", "price": 1.0},
                   subject="BTC-USD")
assert decode(encode(event)) == event
"""

from schemas.codec import decode, encode, validate_event
from schemas.envelope import Envelope, utcnow
from schemas.errors import SchemaError, SpineError
from schemas.ids import derived_id, uuid7
from schemas.registry import EVENT_ADAPTER, EVENT_TYPES, Event, event_class, make_event, payload_class

__all__ = [
    "EVENT_ADAPTER",
    "EVENT_TYPES",
    "Envelope",
    "Event",
    "SchemaError",
    "SpineError",
    "decode",
    "derived_id",
    "encode",
    "event_class",
    "make_event",
    "payload_class",
    "utcnow",
    "uuid7",
    "validate_event",
]
