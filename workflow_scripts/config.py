"""Validate the workflow configuration against ``schemas/config.schema.yaml`` and fill defaults.

Errors name the key (as a dotted path) and what was expected, and are raised before any job runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration breaks the schema."""


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _fill_defaults(instance: dict, schema: dict) -> None:
    """Insert schema defaults for missing keys, recursively (objects only)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "<top level>"
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"config key '{path}': expected {expected}, got {error.instance!r} ({type(error.instance).__name__})"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"'{path}'" if error.absolute_path else "the top level"
        return f"config key(s) {extra} not allowed at {where}; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"config key '{path}': expected one of {error.validator_value}, got {error.instance!r}"
    return f"config key '{path}': {error.message}"


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return a validated copy of ``config`` with every default filled in.

    Raises :class:`ConfigError` listing every violation (key path and expected type).
    """
    schema = load_schema()
    cfg = copy.deepcopy(dict(config))
    _fill_defaults(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    if cfg["facts"]["source"] == "file" and not cfg["facts"]["path"]:
        raise ConfigError("config key 'facts.path': required (a JSON or Parquet file) when facts.source is 'file'")
    return cfg


def load_config_file(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return validate_config(yaml.safe_load(fh) or {})
