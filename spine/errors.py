"""Errors of the composition root (CLI input and config files)."""

from __future__ import annotations

from schemas.errors import SpineError


class UsageError(SpineError):
    """Bad input on the command line or in a config file (exit code 2)."""

    exit_code = 2
