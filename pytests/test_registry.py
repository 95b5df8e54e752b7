"""The registry's table of kinds (transports/__init__.py ``KINDS``) against the classes, and
what validating a configuration imports: the supervisor holds it for the gateway's whole life,
so a device library imported there is memory a Raspberry Pi never gets back (issue 22)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import transports

ROOT = Path(__file__).resolve().parent.parent

#: what the transports need and the supervisor must not import to validate their sections
DEVICE_LIBRARIES = ("paho", "pymodbus", "aiohttp", "zeroconf", "websockets", "influxdb_client",
                    "sqlite3")


@pytest.mark.parametrize("kind", sorted(transports.KINDS))
def test_each_entry_matches_its_class(kind: str) -> None:
    entry = transports.KINDS[kind]
    cls = transports.get(kind)
    assert transports.settings_for(kind) is cls.Settings
    assert transports.provides(kind) == getattr(cls, "provides", frozenset())
    assert cls.__module__ == entry.module


def test_every_registered_kind_is_in_the_table() -> None:
    registered = set(transports.load_all())
    assert registered == set(transports.KINDS)


PROBE = """
import json, sys
from gateway.config import load_config
config = load_config(sys.argv[1], environ={})
print(json.dumps({"kinds": sorted({t.kind for t in config.transports.values()}),
                  "modules": sorted(sys.modules)}))
"""


def test_validating_every_kind_imports_no_device_library() -> None:
    """config.ini.example has a section of every kind: validating it in a fresh interpreter
    (what the supervisor does) imports no transport's code and none of their libraries."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "config.ini.example")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout)
    assert set(seen["kinds"]) == set(transports.KINDS)
    loaded = {m.split(".")[0] for m in seen["modules"]}
    assert not loaded & set(DEVICE_LIBRARIES), sorted(loaded & set(DEVICE_LIBRARIES))
    # a small transport keeps its settings beside its code (jsonl_out, system): no library
    transport_modules = {k.module for k in transports.KINDS.values()
                         if k.settings.partition(":")[0] != k.module}
    assert not transport_modules & set(seen["modules"]), \
        sorted(transport_modules & set(seen["modules"]))
