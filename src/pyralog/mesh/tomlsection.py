"""Strict TOML tables: typed getters that name the file, table and key in every error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, table and key."""


class Section:
    """One table of the file: typed getters that name the key in every error, and a
    check that nothing unknown was left."""

    def __init__(self, path: str, label: str, table: Mapping[str, Any]) -> None:
        self.path, self.label, self.table = path, label, dict(table)
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.label} {key}: {message}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python, never what an integer key means
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join(_TOML_TYPES[k] for k in kinds)
            raise self.error(key, f"expected {expected}, got {show(value)}")
        return value

    def integer(self, key: str, low: int, high: int, default: int) -> int:
        value = self.get(key, int, default)
        if not low <= value <= high:
            raise self.error(key, f"expected {low}-{high}, got {value}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


_TOML_TYPES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "an array",
    bool: "true or false",
}


def show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
