"""Processors by name: what ``spine replay run NAME`` (and the runner's CLI) build.

Each processor module registers a factory that takes the processor's plain
config (a dict from a TOML/YAML/JSON file, or ``None`` for its defaults) and
returns a ready ``Processor``::

    registry.register("cost", lambda config: CostProcessor.from_config(config or {}))
    processor = registry.build("cost", {"price_version": "2026-11-01"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from processors.base import Processor
from schemas.errors import SpineError

Factory = Callable[[dict[str, Any] | None], Processor[Any]]

_FACTORIES: dict[str, Factory] = {}

# The processors that ship with Spine: "module:function", imported on first use.
_BUILTINS: dict[str, str] = {
    "cost": "processors.cost:build",
    "supervisor": "processors.supervisor:build",
    "routing": "processors.routing:build",
    "alerting": "processors.alerting:build",
    "scaling": "processors.scaling:build",
}


def _builtin(name: str) -> Factory | None:
    target = _BUILTINS.get(name)
    if target is None:
        return None
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None
    factory: Factory | None = getattr(module, function, None)
    return factory


class UnknownProcessor(SpineError):
    """No processor is registered under the name asked for."""

    exit_code = 2


def register(name: str, factory: Factory, *, replace: bool = False) -> None:
    """Make ``factory`` buildable as ``name``; a second registration needs ``replace=True``."""
    if name in _FACTORIES and not replace:
        raise ValueError(f"a processor named {name!r} is already registered")
    _FACTORIES[name] = factory


def unregister(name: str) -> None:
    _FACTORIES.pop(name, None)


def names() -> list[str]:
    """Registered processor names, sorted."""
    return sorted(set(_FACTORIES) | {n for n in _BUILTINS if _builtin(n) is not None})


def build(name: str, config: dict[str, Any] | None = None) -> Processor[Any]:
    """A new processor ``name`` built from ``config``."""
    factory = _FACTORIES.get(name) or _builtin(name)
    if factory is None:
        known = ", ".join(names()) or "none registered yet"
        raise UnknownProcessor(f"unknown processor {name!r}; known: {known}", hint="see `spine replay run --help`")
    return factory(config)
