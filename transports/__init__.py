"""The registry: transport kind -> class. A kind registered twice fails at import.

``KINDS`` says where each built-in kind lives, so that a process imports only what it uses:
the supervisor, the settings classes of the configured kinds (to validate them: pydantic, no
device library); a child, its own kind; the forkserver, the configured kinds, shared by every
child. Importing a module registers its
classes (:func:`register`). Children look a class up by kind, so no live object crosses
processes. ``PGW_PLUGINS`` (comma-separated importable module names) loads transports that
live outside this package; the benchmarks use it for their load generators.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import TransportSettings
    from transports.base import Transport

@dataclass(frozen=True)
class Kind:
    """Where a built-in kind lives, known without importing it.

    ``module`` registers the class: only a process that runs the kind imports it (and its
    device library). ``settings`` (``module:Class``) validates a section: it imports pydantic
    and pure code only, so that the supervisor checks a whole configuration without paho,
    pymodbus, aiohttp or influxdb-client. ``provides``: the capabilities another section
    may reference (gateway/references.py). A test holds each entry to its class.
    """

    module: str
    settings: str
    provides: frozenset[str] = frozenset()


_MODBUS = "transports.modbus_bus.transport"
#: kind -> where it lives (a test checks this against what registers).
KINDS: dict[str, Kind] = {
    "influxdb_out": Kind("transports.influxdb_out", "transports.influxdb_settings:InfluxSettings"),
    "jsonl_out": Kind("transports.jsonl_out", "transports.jsonl_out:JsonlSettings"),
    "loadsharing": Kind("transports.loadsharing.transport",
                        "transports.loadsharing.settings:LoadSharingSettings"),
    "mqtt": Kind("transports.mqtt", "transports.mqtt_settings:MqttSettings"),
    "modbus_rtu": Kind(_MODBUS, "transports.modbus.settings:ModbusRtuSettings"),
    "modbus_tcp": Kind(_MODBUS, "transports.modbus.settings:ModbusTcpSettings"),
    "modbus_bus": Kind(_MODBUS, "transports.modbus_bus.settings:ModbusBusRtuSettings"),
    "modbus_bus_tcp": Kind(_MODBUS, "transports.modbus_bus.settings:ModbusBusTcpSettings"),
    "qlink": Kind("transports.qlink", "transports.qlink_config:QLinkSettings"),
    "rapi_serial": Kind("transports.rapi_serial", "transports.rapi_settings:RapiSerialSettings",
                        frozenset({"charger"})),
    "system": Kind("transports.system", "transports.system:SystemSettings"),
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
    return sorted({KINDS[k].module for k in kinds if k in KINDS}) + _plugins()


def get(kind: str) -> type[Transport]:
    """The class of ``kind``, importing its module (and nothing else) on first use."""
    if kind not in _REGISTRY:
        if kind in KINDS:
            importlib.import_module(KINDS[kind].module)
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


def names() -> list[str]:
    """Every known kind (the built-in ones and the plugins'), importing no built-in one."""
    return Known()._names()


def settings_for(kind: str) -> type[TransportSettings]:
    """The settings class of ``kind``: a built-in kind's without importing its transport."""
    if kind in KINDS:
        module, _, name = KINDS[kind].settings.partition(":")
        settings: type[TransportSettings] = getattr(importlib.import_module(module), name)
        return settings
    return get(kind).Settings


def provides(kind: str) -> frozenset[str]:
    """The capabilities ``kind`` provides, e.g. ``charger`` (gateway/references.py)."""
    if kind in KINDS:
        return KINDS[kind].provides
    return getattr(get(kind), "provides", frozenset())


def load_all() -> dict[str, type[Transport]]:
    """Every kind, imported (tests and documentation; a gateway never needs this)."""
    return {kind: get(kind) for kind in known()}
