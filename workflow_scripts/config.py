"""Validate the workflow configuration against ``schemas/config.schema.yaml`` and fill defaults.

Errors name the key (as a dotted path) and what was expected, and are raised before any job runs.

Two things happen besides validation:

* **Coercion.** ``snakemake --config 'training={"lr": 1e-4}'`` hands nested values over as strings
  (Snakemake parses them with YAML's base loader), and YAML 1.1 itself reads ``1e-4`` as a string.
  A string where the schema expects a number (or an integer, when the value is integral), a boolean
  or null is converted first, at any depth; a string that does not parse is left alone and fails
  validation with the usual message naming the key.
* **Canonical form.** Snakemake decides whether a job's params changed by comparing ``repr`` of
  each param value with the one recorded for its outputs, so ``{"lr": .., "seed": ..}`` and
  ``{"seed": .., "lr": ..}`` (or ``3`` and ``3.0``) would count as a change. The returned config
  therefore has every object's keys in one fixed order (the schema's property order, then any
  other keys sorted) and every ``number`` field as a float (every ``integer`` field as an int).
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

_NULL_WORDS = {"null", "Null", "NULL", "~", ""}
_BOOL_WORDS = {"true": True, "false": False}


class ConfigError(ValueError):
    """The configuration breaks the schema."""


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# --- schema navigation (local $ref, anyOf/oneOf/allOf branches) -------------------------------------


def _resolve(schema: Any, root: dict) -> dict:
    """``schema`` with local ``$ref`` s ('#/definitions/x', '#/$defs/x') followed."""
    if not isinstance(schema, dict):
        return {}
    for _ in range(32):  # a ref chain longer than this is a cycle
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        node: Any = root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                return schema
            node = node[part]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**node, **rest} if isinstance(node, dict) else rest
    return schema


def _branches(schema: Any, root: dict) -> list[dict]:
    """The schema and every schema it combines (anyOf / oneOf / allOf), refs resolved."""
    out, todo = [], [schema]
    while todo and len(out) < 256:
        node = _resolve(todo.pop(0), root)
        out.append(node)
        for key in ("allOf", "anyOf", "oneOf"):
            todo.extend(node.get(key, []) or [])
    return out


def _types(schema: Any, root: dict) -> set[str]:
    types: set[str] = set()
    for node in _branches(schema, root):
        declared = node.get("type")
        if isinstance(declared, str):
            types.add(declared)
        elif isinstance(declared, list):
            types.update(t for t in declared if isinstance(t, str))
    return types


def _property_schema(schema: Any, key: Any, root: dict) -> dict:
    """The schema of ``key`` in an object described by ``schema`` ({} when unknown)."""
    branches = _branches(schema, root)
    for node in branches:
        props = node.get("properties")
        if isinstance(props, dict) and key in props:
            return _resolve(props[key], root)
    for node in branches:
        for pattern, sub in (node.get("patternProperties") or {}).items():
            if isinstance(key, str) and re.search(pattern, key):
                return _resolve(sub, root)
    for node in branches:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            return _resolve(extra, root)
    return {}


def _property_order(schema: Any, root: dict) -> list:
    order: list = []
    for node in _branches(schema, root):
        props = node.get("properties")
        if isinstance(props, dict):
            order.extend(k for k in props if k not in order)
    return order


def _item_schema(schema: Any, index: int, root: dict) -> dict:
    for node in _branches(schema, root):
        prefix = node.get("prefixItems")
        if isinstance(prefix, list) and index < len(prefix):
            return _resolve(prefix[index], root)
        items = node.get("items")
        if isinstance(items, dict):
            return _resolve(items, root)
    return {}


# --- coercion of strings (command-line values) ------------------------------------------------------


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    number = _parse_float(text)
    if number is not None and number.is_integer():
        return int(number)
    return None


def _parse_float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _coerce_string(value: str, types: set[str]) -> Any:
    """``value`` as the type the schema expects, when it is unambiguous; else unchanged."""
    if not types or "string" in types:
        return value
    text = value.strip()
    if "integer" in types and (number := _parse_int(text)) is not None:
        return number
    if "number" in types and (number := _parse_float(text)) is not None:
        return number
    if "boolean" in types and text.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[text.lower()]
    if "null" in types and text in _NULL_WORDS:
        return None
    return value


def coerce_strings(value: Any, schema: Any, root: dict | None = None) -> Any:
    """A copy of ``value`` with strings converted where ``schema`` expects numbers, booleans or null."""
    root = schema if root is None else root
    if isinstance(value, str):
        return _coerce_string(value, _types(schema, root))
    if isinstance(value, dict):
        return {k: coerce_strings(v, _property_schema(schema, k, root), root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [coerce_strings(v, _item_schema(schema, i, root), root) for i, v in enumerate(value)]
    return value


# --- canonical form ---------------------------------------------------------------------------------


def canonical(value: Any, schema: Any, root: dict | None = None) -> Any:
    """Keys in the schema's property order (then the others, sorted); numbers as their schema type."""
    root = schema if root is None else root
    if isinstance(value, dict):
        order = [k for k in _property_order(schema, root) if k in value]
        known = set(order)
        order += sorted((k for k in value if k not in known), key=str)
        return {k: canonical(value[k], _property_schema(schema, k, root), root) for k in order}
    if isinstance(value, (list, tuple)):
        return [canonical(v, _item_schema(schema, i, root), root) for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    types = _types(schema, root)
    if isinstance(value, int) and "number" in types and "integer" not in types:
        try:
            return float(value)
        except OverflowError:
            return value
    if isinstance(value, float) and "integer" in types and "number" not in types and value.is_integer():
        return int(value)
    return value


# --- validation -------------------------------------------------------------------------------------


def _fill_defaults(instance: dict, schema: dict, root: dict | None = None) -> None:
    """Insert schema defaults for missing keys, recursively (objects only, local $refs followed)."""
    root = schema if root is None else root
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub, root)


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
    """Return a validated, canonical copy of ``config`` with every default filled in.

    Strings where the schema wants numbers (e.g. from ``--config``) are converted first; the result
    has a fixed key order and typed numbers, so equal configs give equal Snakemake params.
    Raises :class:`ConfigError` listing every violation (key path and expected type).
    """
    schema = load_schema()
    cfg = coerce_strings(copy.deepcopy(dict(config)), schema)
    _fill_defaults(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))
    if cfg["facts"]["source"] == "file" and not cfg["facts"]["path"]:
        raise ConfigError("config key 'facts.path': required (a JSON or Parquet file) when facts.source is 'file'")
    return canonical(cfg, schema)


def load_config_file(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return validate_config(yaml.safe_load(fh) or {})
