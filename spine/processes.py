"""Building processors with their reference data: the composition root's job.

Processors take plain values (price tables, rules, policies). This module
reads the processors config file (``[cost]``, ``[supervisor]``, ... tables),
fills in what only the edges can provide (litellm's price table, from
``connectors.prices``), and builds the processor through the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processors import registry
from spine.errors import UsageError
from spine.settings import SpineSettings, load_config_file
from streams.processing import Processor


def processor_config(name: str, path: Path | None) -> dict[str, Any]:
    """The ``[name]`` table of the processors config file, or {} (defaults)."""
    if path is None:
        return {}
    doc = load_config_file(path)
    section = doc.get(name, {})
    if not isinstance(section, dict):
        raise UsageError(f"[{name}] in {path} must be a table")
    return dict(section)


def build_processor(name: str, settings: SpineSettings, config: dict[str, Any] | None = None) -> Processor[Any]:
    """Processor ``name`` with its config, prices filled in for ``cost``.

    ``cost`` prices with the installed litellm's table unless the config names
    a ``price_version`` (a replay pricing exactly as a past run did).
    """
    config = dict(config or {})
    if name == "cost" and "prices" not in config:
        from connectors.prices import litellm_price_table, price_table_version

        version = config.pop("price_version", None)
        table = price_table_version(settings.data_dir, version) if version else litellm_price_table(settings.data_dir)
        config["prices"] = table.model_dump()
    try:
        return registry.build(name, config)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError: name the key and value
        raise UsageError(
            f"bad [{name}] config: {_first_error(exc)}", hint="see the Processors section of the README"
        ) from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"])
        return f"{key}: {first['msg']} (got {first.get('input')!r})"
    return str(exc)
