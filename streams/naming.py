"""Validation of names users pass to the bus (groups, patterns, tenants)."""

from __future__ import annotations

import re

from streams.errors import InvalidArgument

_GROUP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TENANT = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]{0,62})$")
_TOKEN = re.compile(r"^[^\s.*>]+$")


def check_group(group: str) -> str:
    if not _GROUP.match(group):
        raise InvalidArgument(
            f"invalid consumer group name {group!r}",
            hint="use 1-64 letters, digits, '-' or '_'",
        )
    return group


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise InvalidArgument(
            f"invalid tenant {tenant!r}", hint="lowercase letters, digits, '-' or '_' (or '*' for all)"
        )
    return tenant


def check_pattern(pattern: str) -> str:
    """A type-space pattern: dot-separated tokens, ``*`` for one, ``>`` last for the rest."""
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ">" and i == len(tokens) - 1:
            continue
        if token == "*" or _TOKEN.match(token):
            continue
        raise InvalidArgument(
            f"invalid pattern {pattern!r} (token {token!r})",
            hint="examples: 'market.>', 'llm.call', 'session.*.s-1', '>'",
        )
    return pattern
