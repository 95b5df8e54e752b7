"""The bridge envelope: the one record that crosses between transports.

Why a small slotted dataclass and not a dict: it pickles compactly in batches (the pickle memo
shares the field names), and a typo in a field name fails at once instead of routing nowhere.

Conventions every transport follows (documented in docs/architecture.md):

- ``kind == "reading"``: ``data`` is ``{value_name: number | str | bool}`` from one device scan.
- ``kind == "status"``: ``data == {"available": bool, "reason": str}``; a device came or went.
- ``kind == "event"``: ``data["event"]`` names it. ``"describe"`` carries
  ``data["values"] = {name: ValueSpec-as-dict}`` so outputs (Home Assistant discovery) know units,
  classes and which values are writable; ``"command_result"`` answers a command.
- ``kind == "command"``: ``data["command"]`` names it (``"write"`` with ``data["values"]``, or a
  device-specific verb such as ``"set_current"``), ``data["request_id"]`` is echoed in the
  result, ``data.get("device")`` picks one device of a multi-device transport.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

READING = "reading"
COMMAND = "command"
EVENT = "event"
STATUS = "status"
KINDS = frozenset({READING, COMMAND, EVENT, STATUS})


@dataclass(slots=True)
class Envelope:
    """One message on the bridge. ``target_transport`` None means "my bridge targets"."""

    source_transport: str
    kind: str
    data: dict[str, Any]
    target_transport: str | tuple[str, ...] | None = None
    source_transport_info: dict[str, str] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    sequence: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if isinstance(self.target_transport, tuple):
            out["target_transport"] = list(self.target_transport)
        return out


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """What an output needs to know about one value a device reports (or accepts)."""

    name: str
    unit: str = ""
    device_class: str = ""
    state_class: str = ""  # measurement | total | total_increasing | ""
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()  # an enum: the allowed values, as text
    kind: str = "number"  # number | switch | select | text | binary | button
    #: what a person reads (acronyms as the vendor writes them); "" = from ``name``
    display_name: str = ""
    entity_category: str = ""  # "" | diagnostic | config (Home Assistant's entity_category)
    icon: str = ""  # an "mdi:..." icon where no device class gives one

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["options"] = list(self.options)
        return out


def describe_event(specs: list[ValueSpec]) -> dict[str, Any]:
    """The data of a ``describe`` event for ``specs``."""
    return {"event": "describe", "values": {s.name: s.to_dict() for s in specs}}


def command_result(
    command: dict[str, Any], ok: bool, result: str, detail: str = "", **extra: Any
) -> dict[str, Any]:
    """The data of a ``command_result`` event answering ``command`` (a command's data).

    ``result`` is a short word: ok, nk, timeout, rejected, error, unsupported.
    """
    out: dict[str, Any] = {
        "event": "command_result",
        "command": command.get("command", ""),
        "request_id": command.get("request_id", ""),
        "ok": ok,
        "result": result,
        "detail": detail,
    }
    if "device" in command:
        out["device"] = command["device"]
    out.update(extra)
    return out
