"""The registry: transport kind -> class. A kind registered twice fails at import.

Each transport module is listed once in ``_MODULES``; it calls :func:`register` for its
kinds. Children look a class up by kind, so no live object crosses processes.
``PGW_PLUGINS`` (comma-separated importable module names) loads transports that live outside
this package; the benchmarks use it for their load generators.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transports.base import Transport

_MODULES = (
    "transports.influxdb_out",
    "transports.jsonl_out",
    "transports.loadsharing",
    "transports.mqtt",
    "transports.modbus",
    "transports.modbus_bus",
    "transports.qlink",
    "transports.rapi_serial",
    "transports.system",
)
_REGISTRY: dict[str, type[Transport]] = {}
_loaded = False


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


def load_all() -> dict[str, type[Transport]]:
    global _loaded  # noqa: PLW0603 - import-time registry, filled once per process
    if not _loaded:
        plugins = [m.strip() for m in os.environ.get("PGW_PLUGINS", "").split(",") if m.strip()]
        for module in (*_MODULES, *plugins):
            importlib.import_module(module)
        _loaded = True
    return dict(_REGISTRY)


def get(kind: str) -> type[Transport]:
    return load_all()[kind]
