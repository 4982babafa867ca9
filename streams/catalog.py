"""The stream catalog (DESIGN.md, Streams) and how events map onto it.

Each event family lives in one stream. On NATS an event goes to the subject
``spine.<tenant>.<type>.<subject>`` (the subject key escaped into one token);
on Kafka to the stream's topic with key ``<tenant>/<subject>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from streams.errors import InvalidArgument, StreamNotFound


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One stream: its families (type prefixes), NATS subjects and Kafka topic."""

    name: str
    families: tuple[str, ...]
    kafka_topic: str
    key: str
    compacted: bool = False

    def nats_subjects(self) -> list[str]:
        return [f"spine.*.{family}.>" for family in self.families]


CATALOG: tuple[StreamSpec, ...] = (
    StreamSpec("MARKET", ("market",), "spine.market", "symbol"),
    StreamSpec("SESSIONS", ("session", "node"), "spine.sessions", "session/node id"),
    StreamSpec("LLM", ("llm",), "spine.llm", "provider/model"),
    StreamSpec("CONFIG", ("config",), "spine.config", "config key", compacted=True),
    StreamSpec("DECISIONS", ("decision",), "spine.decisions", "decision key"),
    StreamSpec("DLQ", ("dlq",), "spine.dlq", "source stream"),
)

STREAMS: dict[str, StreamSpec] = {spec.name: spec for spec in CATALOG}

# Event-time order across streams (replays, the runner's merge): equal times go
# by stream in this order (reference data before inputs before decisions), then
# by position.
STREAM_ORDER = ("CONFIG", "MARKET", "SESSIONS", "LLM", "DECISIONS", "DLQ")
_BY_FAMILY: dict[str, StreamSpec] = {family: spec for spec in CATALOG for family in spec.families}

StreamName = Literal["MARKET", "SESSIONS", "LLM", "CONFIG", "DECISIONS", "DLQ"]


def stream_for_type(type_name: str) -> StreamSpec:
    """The stream that holds events of ``type_name`` (by its family prefix)."""
    family = type_name.split(".", 1)[0]
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise StreamNotFound(
            f"no stream holds events of type {type_name!r}",
            hint="families: " + ", ".join(sorted(_BY_FAMILY)),
        ) from None


def stream_spec(name: str) -> StreamSpec:
    """A stream by name (case-insensitive)."""
    try:
        return STREAMS[name.upper()]
    except KeyError:
        raise StreamNotFound(f"unknown stream {name!r}", hint="streams: " + ", ".join(STREAMS)) from None


def streams_for_pattern(pattern: str) -> list[StreamSpec]:
    """The streams a type-space pattern (``market.>``, ``*.tick.*``, ``>``) can touch.

    A wildcard family touches every stream except the DLQ, which a subscriber
    must name on purpose (``dlq.>``).
    """
    family = pattern.split(".", 1)[0]
    if family in ("*", ">"):
        return [spec for spec in CATALOG if spec.name != "DLQ"]
    return [stream_for_type(family)]


# Characters that cannot appear inside one NATS subject token.
_ESCAPES = {"%": "%25", ".": "%2E", "*": "%2A", ">": "%3E", " ": "%20", "\t": "%09", "\n": "%0A", "\r": "%0D"}


_NEEDS_ESCAPE = re.compile("[" + re.escape("".join(_ESCAPES)) + "]")
_ESCAPE_TABLE = str.maketrans(_ESCAPES)


def escape_token(value: str) -> str:
    """Escape a key into a single NATS subject token (reversible)."""
    if not value:
        return "%"  # never produced by escaping a non-empty value
    if _NEEDS_ESCAPE.search(value) is None:  # the common case, on every record: one C scan
        return value
    return value.translate(_ESCAPE_TABLE)


def unescape_token(token: str) -> str:
    if token == "%":
        return ""
    if "%" not in token:
        return token
    for raw, escaped in sorted(_ESCAPES.items(), key=lambda kv: kv[0] == "%"):
        token = token.replace(escaped, raw)
    return token


def nats_subject(tenant: str, type_name: str, subject: str) -> str:
    """``spine.<tenant>.<type>.<subject>`` with the subject key escaped."""
    return f"spine.{tenant}.{type_name}.{escape_token(subject)}"


def nats_filter(pattern: str, tenant: str = "*") -> str:
    """The NATS filter subject for a type-space pattern within ``tenant``.

    A pattern names ``<family>.<name>.<key>``; a shorter one means every key:
    ``llm.call`` is ``llm.call.*`` and ``market`` is ``market.>``.
    """
    tokens = pattern.split(".")
    if tokens[-1] != ">":
        if len(tokens) == 1:
            pattern += ".>"
        elif len(tokens) == 2:
            pattern += ".*"
    return f"spine.{tenant}.{pattern}"


def kafka_key(tenant: str, subject: str) -> bytes:
    return f"{tenant}/{subject}".encode()


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens):
            return False
        if p != "*" and p != s_tokens[i]:
            return False
    return len(p_tokens) == len(s_tokens)


def stream_of_subject(subject: str) -> str:
    """The stream that stores a broker subject ``spine.<tenant>.<family>.<name>.<key>``."""
    parts = subject.split(".", 3)
    if len(parts) < 4 or parts[0] != "spine":
        raise InvalidArgument(
            f"subject {subject!r} is outside Spine's namespace",
            hint="subjects look like spine.<tenant>.<type>.<key>",
        )
    return stream_for_type(parts[2]).name
