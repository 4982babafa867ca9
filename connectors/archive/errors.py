"""Errors of the DuckDB archive.

    SpineError                   (schemas.errors)
    └── ArchiveError             the archive cannot do what was asked
        ├── ArchiveNotFound      no archive file yet (exit 2)
        ├── ArchiveLocked        another process holds the file and serves no queries
        └── QueryError           a query is invalid or not read-only (exit 2)

DuckDB's exceptions are translated here, at the boundary, so users see one
line and a hint; the cause stays on the chain for ``--debug``.
"""

from __future__ import annotations

from schemas.errors import SpineError


class ArchiveError(SpineError):
    """The archive could not be opened, written or queried."""


class ArchiveNotFound(ArchiveError):
    """There is no archive at the given path yet."""

    exit_code = 2


class ArchiveLocked(ArchiveError):
    """Another process holds the archive file and does not serve queries."""


class QueryError(ArchiveError):
    """A query failed to parse or bind, or tried to write through a read-only path."""

    exit_code = 2
