"""What the mqtt transport knows about every device, kept on disk across its own restarts.

Why on disk: Home Assistant remembers an entity by the last discovery config it saw. A restarted
mqtt transport (a crash, a kill -9, a supervisor restart) that re-announced values as plain
sensors until each source answered a new ``describe`` would strip units, classes and options
from entities for minutes (a source that describes itself only once at start never would). So
every description received is kept in ``<state_dir>/mqtt-registry.json``, together with which
section first used each device identifier: a second section that shows up with the same
identifier (two inverters reporting one serial number) is told apart by its section prefix, and
the same one keeps the plain ids after every restart, whichever section speaks first then.

No sockets and no asyncio here; the file is small (one entry per value) and written only when
a description or an ownership changes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from gateway.message import ValueSpec
from transports.mqtt_discovery import spec_from_dict

VERSION = 1


class EntityRegistry:
    def __init__(self, path: Path, log: logging.Logger) -> None:
        self.path = path
        self.log = log
        #: (source section, device_identifier or "") -> value name -> description
        self.specs: dict[tuple[str, str], dict[str, ValueSpec]] = {}
        #: "node:<topic segment>" / "uid:<unique id base>" -> the section that first used it
        self.owners: dict[str, str] = {}

    # -- file ------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the file; a missing one is a first start, a damaged one is logged and dropped."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.log.warning("%s unreadable (%s): descriptions start empty", self.path, exc)
            return
        if not isinstance(data, dict) or data.get("version") != VERSION:
            self.log.warning("%s has an unknown layout: descriptions start empty", self.path)
            return
        for entry in data.get("specs", []):
            try:
                key = (str(entry["source"]), str(entry["device"]))
                self.specs[key] = {
                    name: spec_from_dict({**raw, "name": name})
                    for name, raw in dict(entry["values"]).items()
                }
            except (KeyError, TypeError, ValueError) as exc:
                self.log.warning("%s: an entry is unusable (%s); skipped", self.path, exc)
        owners = data.get("owners", {})
        if isinstance(owners, dict):
            self.owners = {str(k): str(v) for k, v in owners.items()}

    def save(self) -> None:
        data: dict[str, Any] = {
            "version": VERSION,
            "specs": [
                {"source": source, "device": device,
                 "values": {name: spec.to_dict() for name, spec in values.items()}}
                for (source, device), values in sorted(self.specs.items())
            ],
            "owners": dict(sorted(self.owners.items())),
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            self.log.warning("cannot write %s: %s (descriptions kept in memory)", self.path, exc)

    # -- descriptions ------------------------------------------------------------------------
    def describe(self, source: str, device: str, specs: dict[str, ValueSpec]) -> bool:
        """Keep a source's (or one of its devices') description; True when it changed."""
        key = (source, device)
        if self.specs.get(key) == specs:
            return False
        self.specs[key] = specs
        self.save()
        return True

    def spec(self, source: str, device: str, name: str) -> ValueSpec | None:
        own = self.specs.get((source, device), {}).get(name)
        return own or self.specs.get((source, ""), {}).get(name)

    def described(self, source: str) -> bool:
        return any(key[0] == source for key in self.specs)

    # -- identities --------------------------------------------------------------------------
    def claim(self, node: str, uid: str, source: str) -> bool:
        """True when ``source`` may use this node and unique id base (free or already its own);
        False when another section used either first."""
        keys = (f"node:{node}", f"uid:{uid}")
        if any(self.owners.get(k, source) != source for k in keys):
            return False
        if any(k not in self.owners for k in keys):
            self.owners.update({k: source for k in keys})
            self.save()
        return True
