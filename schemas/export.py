"""JSON Schema export: one draft 2020-12 file per event type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.registry import EVENT_TYPES, SCHEMA_VERSION


def json_schema(type_name: str) -> dict[str, Any]:
    """The JSON Schema of a whole event (envelope + data) of ``type_name``."""
    cls = EVENT_TYPES[type_name]
    schema = cls.model_json_schema(mode="validation")
    props = schema["properties"]
    # One class can carry several dlq.* types: pin this file to one of them.
    props["type"] = {"const": type_name, "title": "Type", "type": "string"}
    props["dataschema"] = {"const": f"spine:{type_name}:{SCHEMA_VERSION}", "title": "Dataschema", "type": "string"}
    for required in ("specversion", "id", "source", "type", "dataschema"):
        if required not in schema.setdefault("required", []):
            schema["required"].append(required)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"spine:{type_name}:{SCHEMA_VERSION}"
    schema["title"] = f"{type_name} (CloudEvents 1.0)"
    return schema


def export_json_schemas(directory: Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for type_name in sorted(EVENT_TYPES):
        path = directory / f"{type_name}.schema.json"
        path.write_text(json.dumps(json_schema(type_name), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
