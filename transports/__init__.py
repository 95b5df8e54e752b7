"""The registry: transport kind -> class. A kind registered twice fails at import.

``KINDS`` names the module of each built-in kind, so that a process imports only the kinds
it runs (the supervisor: the configured ones, to validate them; a child: its own; the
forkserver: the configured ones, shared by every child). Importing a module registers its
classes (:func:`register`). Children look a class up by kind, so no live object crosses
processes. ``PGW_PLUGINS`` (comma-separated importable module names) loads transports that
live outside this package; the benchmarks use it for their load generators.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transports.base import Transport

#: kind -> the module that registers it (a test checks this against what registers).
KINDS = {
    "influxdb_out": "transports.influxdb_out",
    "jsonl_out": "transports.jsonl_out",
    "loadsharing": "transports.loadsharing",
    "mqtt": "transports.mqtt",
    "modbus_rtu": "transports.modbus_bus",
    "modbus_tcp": "transports.modbus_bus",
    "modbus_bus": "transports.modbus_bus",
    "modbus_bus_tcp": "transports.modbus_bus",
    "qlink": "transports.qlink",
    "rapi_serial": "transports.rapi_serial",
    "system": "transports.system",
}
_REGISTRY: dict[str, type[Transport]] = {}
_plugins_loaded = False


def register(cls: type[Transport]) -> type[Transport]:
    """Class decorator: make ``cls.kind`` known."""
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise RuntimeError(f"transport kind {cls.kind!r} registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def register_as(cls: type[Transport], kind: str) -> None:
    """Register one class under a second kind (e.g. modbus_rtu and modbus_tcp)."""
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise RuntimeError(f"transport kind {kind!r} registered twice")
    _REGISTRY[kind] = cls


def _plugins() -> list[str]:
    return [m.strip() for m in os.environ.get("PGW_PLUGINS", "").split(",") if m.strip()]


def _load_plugins() -> None:
    global _plugins_loaded  # noqa: PLW0603 - import-time registry, filled once per process
    if not _plugins_loaded:
        for module in _plugins():
            importlib.import_module(module)
        _plugins_loaded = True


def modules_for(kinds: Iterable[str]) -> list[str]:
    """The modules that register ``kinds``, and the plugins (nothing is imported here).

    A module may list in ``PRELOAD`` the libraries it imports lazily (to spare the
    supervisor, which imports it only to validate a section); gateway/preloaded.py imports
    those in the forkserver."""
    return sorted({KINDS[k] for k in kinds if k in KINDS}) + _plugins()


def get(kind: str) -> type[Transport]:
    """The class of ``kind``, importing its module (and nothing else) on first use."""
    if kind not in _REGISTRY:
        if kind in KINDS:
            importlib.import_module(KINDS[kind])
        else:
            _load_plugins()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown transport kind {kind!r}") from None


class Known(Mapping[str, "type[Transport]"]):
    """Every known kind by name, a class imported only when it is looked up."""

    def _names(self) -> list[str]:
        _load_plugins()
        return sorted(set(KINDS) | set(_REGISTRY))

    def __getitem__(self, kind: str) -> type[Transport]:
        return get(kind)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, kind: object) -> bool:
        return isinstance(kind, str) and kind in self._names()


def known() -> Known:
    return Known()


def load_all() -> dict[str, type[Transport]]:
    """Every kind, imported (tests and documentation; a gateway never needs this)."""
    return {kind: get(kind) for kind in known()}
