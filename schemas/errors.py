"""The root of Spine's exception tree, and the schema errors.

Every package adds a small tree under ``SpineError``::

    SpineError                      (schemas.errors)
    ├── SchemaError                 an event failed to decode or validate
    ├── streams.errors.StreamError  broker, transport and consumer failures
    │   ├── BrokerUnavailable
    │   ├── PublishError
    │   ├── StreamNotFound
    │   └── ConsumerError
    └── spine.errors.UsageError     bad input on the CLI or in a config file

``exit_code`` is what the CLI exits with: 2 for bad input, 1 for a runtime
failure. ``hint`` is the one line that tells the user what to do next.
"""

from __future__ import annotations


class SpineError(Exception):
    """Root of every error Spine raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class SchemaError(SpineError):
    """An event or payload is not valid: names the offending field.

    ``field`` is a dotted path (``data.price``) or ``None`` when the input is
    not JSON at all.
    """

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field
