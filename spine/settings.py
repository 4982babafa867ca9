"""Settings: a config file (``SPINE_CONFIG``, TOML or YAML) plus ``SPINE_*`` variables.

Environment variables win over the file; nested keys use ``__``
(``SPINE_BUS__MAX_DELIVER=3``). Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connectors.archive.config import ArchiveConfig
from spine.errors import UsageError
from streams.config import DEFAULT_DATA_DIR, BusConfig


class SpineSettings(BaseSettings):
    """Everything configurable, in one object handed down to what needs it."""

    model_config = SettingsConfigDict(env_prefix="SPINE_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Embedded broker data, archive, state.")
    broker_url: str | None = Field(default=None, description="Unset: the embedded NATS broker.")
    broker_port: int | None = Field(default=None, ge=1, le=65535, description="Embedded broker port.")
    api_token: SecretStr | None = None
    bus: BusConfig = Field(default_factory=BusConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


class _FileSource(PydanticBaseSettingsSource):
    """The file named by ``SPINE_CONFIG`` (TOML or YAML), if any."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("SPINE_CONFIG")
        return load_config_file(Path(path)) if path else {}


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}", hint="check SPINE_CONFIG") from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid: {exc}".splitlines()[0]) from exc
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table/mapping at the top")
    return data


def load_settings(**overrides: Any) -> SpineSettings:
    """Settings from file + environment (+ overrides); errors name the key and value."""
    try:
        return SpineSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        secret = any(word in key for word in ("token", "secret", "password", "key"))
        shown = "***" if secret else repr(err.get("input"))
        raise UsageError(
            f"bad setting {key!r}: {err['msg']} (got {shown})",
            hint="see `spine --help`; env vars are SPINE_<KEY>, nested with __",
        ) from None
