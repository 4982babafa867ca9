"""Errors of the bus. Third-party broker errors are translated here, at the boundary.

    StreamError              (a SpineError)
    ├── BrokerUnavailable    cannot reach or start the broker
    ├── PublishError         the broker did not acknowledge a publish
    ├── StreamNotFound       a stream or consumer group does not exist
    └── ConsumerError        subscribing, fetching or acking failed

Transports raise these with ``raise ... from exc`` so the cause stays on the
chain for ``--debug`` while users see one line and a hint.
"""

from __future__ import annotations

from schemas.errors import SpineError


class StreamError(SpineError):
    """Something went wrong talking to the broker."""


class BrokerUnavailable(StreamError):
    """The broker cannot be reached (or the embedded one cannot be started)."""


class PublishError(StreamError):
    """A publish was not acknowledged by the broker."""


class StreamNotFound(StreamError):
    """A stream or consumer group does not exist."""

    exit_code = 2


class ConsumerError(StreamError):
    """Subscribing, fetching or acknowledging failed."""


class InvalidArgument(StreamError):
    """A bad name, pattern or position was passed to the bus."""

    exit_code = 2
