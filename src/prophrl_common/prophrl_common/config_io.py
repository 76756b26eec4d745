"""Strict YAML loading: one clear error naming the file and the problem."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file is missing, malformed or inconsistent."""


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def dataclass_from_mapping(cls: type[T], data: dict[str, Any], source: str, complete: bool = False,
                           added_later: tuple[str, ...] = ()) -> T:
    """Build a (frozen) dataclass from a mapping; unknown, missing or mistyped keys are errors.

    A key is missing when the field has no default, or, with ``complete``, whenever it is absent: a
    saved config (a checkpoint's) must state every field, never fall back to today's defaults. The fields
    ``added_later`` are the exception: configs saved before they existed lack them and get the default
    (the behaviour those configs were saved with).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{source}: {name}")
        elif (complete and name not in added_later) or (field.default is dataclasses.MISSING
                                                         and field.default_factory is dataclasses.MISSING):
            raise ConfigError(f"{source}: missing required key '{name}'"
                              + (" (a saved config must be complete)" if complete else ""))
    return cls(**kwargs)


def require_finite_numbers(config, source: str) -> None:
    """ConfigError naming the first float field (or float in a tuple field) of a dataclass that is NaN / inf."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(f"{source}: {field.name} must be a finite number, got {value!r}")


def dataclass_to_json(obj) -> str:
    return json.dumps(dataclasses.asdict(obj), indent=2, sort_keys=True)


def dataclass_from_json_file(cls: type[T], path: str | Path, what: str, added_later: tuple[str, ...] = ()) -> T:
    """Read a config saved with dataclass_to_json: every field must be there (no silent defaults) but those
    `added_later`; the class's validate(source) runs on it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {what} must be a JSON object")
    return dataclass_from_mapping(cls, data, str(path), complete=True, added_later=added_later).validate(str(path))
