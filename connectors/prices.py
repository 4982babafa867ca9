"""litellm's model price map as a versioned ``PriceTable`` (the only litellm import for pricing).

litellm imports slowly (seconds), so the table is extracted once per litellm
version and cached as JSON under ``<data_dir>/prices/<version>.json``; later
runs, and replays that must price exactly as the live run did, load the file.
litellm runs with ``LITELLM_LOCAL_MODEL_COST_MAP=True``: the map shipped in
the wheel, never a download.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from processors.cost import ModelPrice, PriceTable
from schemas.errors import SpineError


def _litellm_version() -> str:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError as exc:
        raise SpineError("litellm is not installed", hint="pip install litellm") from exc


def extract_prices(model_cost: dict[str, Any]) -> dict[str, ModelPrice]:
    """Token prices from litellm's ``model_cost`` map (entries without both prices are skipped)."""
    prices = {}
    for key, entry in model_cost.items():
        if not isinstance(entry, dict):
            continue
        inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if not isinstance(inp, int | float) or not isinstance(out, int | float):
            continue
        cache = entry.get("cache_read_input_token_cost")
        prices[key] = ModelPrice(input=inp, output=out, cache_read=cache if isinstance(cache, int | float) else None)
    return prices


def litellm_price_table(data_dir: Path) -> PriceTable:
    """The price table of the installed litellm, from the cache or extracted once."""
    version = _litellm_version()
    cache_dir = Path(data_dir) / "prices"
    for cached in sorted(cache_dir.glob(f"litellm-{version}-*.json")):
        return load_price_table(cached)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # noqa: TID251 - the one place pricing imports it, lazily

    prices = extract_prices(litellm.model_cost)
    digest = hashlib.sha256(
        json.dumps({k: v.model_dump() for k, v in sorted(prices.items())}, sort_keys=True).encode()
    ).hexdigest()[:10]
    table = PriceTable(version=f"litellm-{version}-{digest}", prices=prices)
    save_price_table(table, cache_dir)
    return table


def save_price_table(table: PriceTable, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{table.version}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(table.model_dump_json())
    tmp.replace(path)
    return path


def load_price_table(path: Path) -> PriceTable:
    return PriceTable.model_validate_json(Path(path).read_text())


def price_table_version(data_dir: Path, version: str) -> PriceTable:
    """A price table by version (for replays), from ``<data_dir>/prices``."""
    path = Path(data_dir) / "prices" / f"{version}.json"
    if not path.exists():
        raise SpineError(
            f"price table {version!r} is not in {path.parent}",
            hint="replays price with the table the live run recorded; copy its prices/ directory here",
        )
    return load_price_table(path)
