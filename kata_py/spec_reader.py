"""Typed, path-aware reading of one JSON object of an OCI config.json.

`Node` wraps a decoded JSON object and the JSON path that leads to it
(`linux.resources.memory`), hands out values only after checking their JSON
type, and raises `ConfigError` messages that name the file and the full path:
`config.json: linux.resources.memory.limit must be an integer, not "abc"`.

It owns the OCI extensibility rule (runtime-spec config.md, "Extensibility":
"Runtimes MAY log unknown properties but MUST otherwise ignore them"): every
key a parser did not read is logged at debug level by `Node.finish`, never an
error. It knows nothing about which fields exist; spec.py and spec_linux.py do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from types import MappingProxyType

from kata_py.errors import ConfigError

log = logging.getLogger(__name__)

FILE = "config.json"
FIX_HINT = "fix it in the bundle's config.json (see the OCI runtime-spec, config.md)"
UNSUPPORTED_HINT = "remove it from config.json; kata-py runs every container in a VM"

_JSON_NAMES = {bool: "a boolean", int: "an integer", str: "a string",
               list: "an array", dict: "an object"}


def show(value: object) -> str:
    """A JSON rendering of a bad value for an error message, cut to 60 chars."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def invalid(path: str, problem: str, hint: str = FIX_HINT) -> ConfigError:
    return ConfigError(f"{FILE}: {path} {problem}", hint)


def unsupported(path: str, hint: str = UNSUPPORTED_HINT) -> ConfigError:
    return ConfigError(f"{FILE}: {path} is not supported by kata-py", hint)


def _is(value: object, kind: type) -> bool:
    # JSON booleans decode to bool, a subclass of int: here they are not integers.
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


class Node:
    """One JSON object at `path`; typed getters mark the keys they read."""

    def __init__(self, data: Mapping[str, object], path: str) -> None:
        self._data = data
        self.path = path
        self._read: set[str] = set()

    @classmethod
    def of(cls, value: object, path: str) -> Node:
        if not isinstance(value, dict):
            raise invalid(path or "the document", f"must be an object, not {show(value)}")
        return cls(value, path)

    def at(self, key: str) -> str:
        """The JSON path of `key` inside this object."""
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def raw(self, key: str, kind: type) -> object:
        """The value of `key` checked against `kind`, or None when absent or null."""
        self._read.add(key)
        value = self._data.get(key)
        if value is not None and not _is(value, kind):
            raise invalid(self.at(key), f"must be {_JSON_NAMES[kind]}, not {show(value)}")
        return value

    def string(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self.raw(key, str)
        if value is None:
            if required:
                raise invalid(self.at(key), "is missing")
            return default
        assert isinstance(value, str)
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.raw(key, bool)
        return default if value is None else bool(value)

    def optional_boolean(self, key: str) -> bool | None:
        value = self.raw(key, bool)
        return None if value is None else bool(value)

    def integer(self, key: str, *, minimum: int | None = None,
                maximum: int | None = None) -> int | None:
        value = self.raw(key, int)
        if value is None:
            return None
        assert isinstance(value, int)
        check_range(self.at(key), value, minimum, maximum)
        return value

    def required_integer(self, key: str, *, minimum: int | None = None,
                         maximum: int | None = None) -> int:
        value = self.integer(key, minimum=minimum, maximum=maximum)
        if value is None:
            raise invalid(self.at(key), "is missing")
        return value

    def child(self, key: str) -> Node | None:
        value = self.raw(key, dict)
        return None if value is None else Node.of(value, self.at(key))

    def children(self, key: str) -> list[Node]:
        return [Node.of(item, f"{self.at(key)}[{i}]")
                for i, item in enumerate(self._array(key))]

    def strings(self, key: str) -> tuple[str, ...]:
        items = self._array(key)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise invalid(f"{self.at(key)}[{i}]", f"must be a string, not {show(item)}")
        return tuple(str(item) for item in items)

    def integers(self, key: str, *, minimum: int | None = None,
                 maximum: int | None = None) -> tuple[int, ...]:
        items = self._array(key)
        out: list[int] = []
        for i, item in enumerate(items):
            path = f"{self.at(key)}[{i}]"
            if not _is(item, int):
                raise invalid(path, f"must be an integer, not {show(item)}")
            assert isinstance(item, int)
            check_range(path, item, minimum, maximum)
            out.append(item)
        return tuple(out)

    def string_map(self, key: str) -> Mapping[str, str]:
        value = self.raw(key, dict)
        if value is None:
            return MappingProxyType({})
        assert isinstance(value, dict)
        for name, item in value.items():
            if not isinstance(item, str):
                raise invalid(f"{self.at(key)}[{json.dumps(name)}]",
                              f"must be a string, not {show(item)}")
        return MappingProxyType(dict(value))

    def reject(self, key: str, hint: str = UNSUPPORTED_HINT) -> None:
        """Fail when `key`, a known property kata-py cannot honour, is set."""
        self._read.add(key)
        if self.has(key):
            raise unsupported(self.at(key), hint)

    def ignore(self, *keys: str) -> None:
        """Known properties kata-py accepts and deliberately does not use."""
        for key in keys:
            self._read.add(key)
            if self.has(key):
                log.debug("%s: ignoring %s (no effect in a VM sandbox)", FILE, self.at(key))

    def finish(self) -> None:
        """Log the properties nobody read: unknown ones are ignored, per the spec."""
        for key in self._data:
            if key not in self._read:
                log.debug("%s: ignoring unknown property %s", FILE, self.at(key))

    def _array(self, key: str) -> list[object]:
        value = self.raw(key, list)
        if value is None:
            return []
        assert isinstance(value, list)
        return value


UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_range(path: str, value: int, minimum: int | None, maximum: int | None) -> None:
    if minimum is not None and value < minimum:
        raise invalid(path, f"must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise invalid(path, f"must be at most {maximum}, not {value}")


def require_absolute(path: str, value: str) -> None:
    if not value.startswith("/"):
        raise invalid(path, f"must be an absolute path, not {show(value)}")


def require_choice(path: str, value: str, choices: frozenset[str], what: str,
                   hint: str = "") -> None:
    if value not in choices:
        raise invalid(path, f"{show(value)} is not a known {what}",
                      hint or f"use one of {', '.join(sorted(choices))}")
