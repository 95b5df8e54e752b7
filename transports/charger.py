"""The Charger capability: what load sharing needs of a charger, whatever speaks to it.

A transport that drives an EV charger (``rapi_serial`` today; OpenEVSE's WiFi HTTP API or OCPP
tomorrow) implements this contract, and load sharing uses nothing else (no RAPI state codes or
``$`` verbs under ``transports/loadsharing/``):

- it declares the capability: ``provides = frozenset({CHARGER})`` on the transport class, and
  its settings class mixes in :class:`ChargerSettings` (``check`` verifies a ``charger =``
  reference against both, ``gateway/references.py``);
- **readings**: whenever it has read the charger, it sends its owner (the one loadsharing section
  whose ``charger =`` names it, set at load into ``charger_owner``) a :class:`ChargerStatus` as
  an ``event`` envelope (:meth:`ChargerStatus.event`) addressed to that owner;
- **commands**: it accepts the command envelopes :func:`command` builds (set limit, pause, resume,
  supervise with interval and fallback current, pulse, acknowledge a missed pulse) and answers
  each with a ``command_result`` event (``gateway.message.command_result``);
- **one writer**: a command from anyone but its owner that would change the current or start or
  stop charging (MQTT, Home Assistant, another transport) is not executed; the transport turns
  it into a :class:`UserRequest` (:meth:`UserRequest.command`) and sends it to the owner, who
  answers the original requester with what it applied and why.

A new kind of charger writes those three pieces (about a hundred lines for RAPI:
``transports/rapi_charger.py``) and can then be named by ``charger =`` in a loadsharing section.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field

from gateway.settings import Settings

#: the capability's name, as transports declare it in ``provides``
CHARGER = "charger"
#: the ``event`` name of a :class:`ChargerStatus` envelope
STATUS_EVENT = "charger_status"
#: the ``command`` name of a :class:`UserRequest` forwarded to the owner
REQUEST_COMMAND = "charger_request"

#: what the charger is doing, in words every kind of charger can map to
State = Literal["idle", "connected", "charging", "paused", "disabled", "fault", "unknown"]
STATES: tuple[str, ...] = ("idle", "connected", "charging", "paused", "disabled", "fault",
                           "unknown")


class ChargerSettings(Settings):
    """Mixed into a charger transport's settings."""

    charger_owner: str = Field(
        default="",
        description="set at load, not in the file: the loadsharing section whose charger = "
        "names this section; it is then the one writer of this charger's current",
    )


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class ChargerStatus:
    """One reading of the charger. ``offered_current``: the pilot it offers now (A); paused
    (sleeping) and disabled chargers offer nothing whatever their setting says."""

    state: str = "unknown"
    vehicle_connected: bool | None = None
    offered_current: float | None = None
    measured_current: float | None = None
    voltage: float | None = None

    @property
    def paused(self) -> bool:
        return self.state in ("paused", "disabled")

    @property
    def charging(self) -> bool:
        return self.state == "charging"

    def event(self) -> dict[str, Any]:
        return {"event": STATUS_EVENT, **asdict(self)}

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> ChargerStatus:
        """Raises ValueError naming the bad field (an unknown state, a non-finite number)."""
        state = data.get("state", "unknown")
        if state not in STATES:
            raise ValueError(f"charger state {state!r} is not one of {', '.join(STATES)}")
        vehicle = data.get("vehicle_connected")
        if vehicle is not None and not isinstance(vehicle, bool):
            raise ValueError(f"vehicle_connected {vehicle!r} is not true, false or null")
        numbers = {}
        for key in ("offered_current", "measured_current", "voltage"):
            value = data.get(key)
            if value is not None and _finite(value) is None:
                raise ValueError(f"{key} {value!r} is not a finite number")
            numbers[key] = None if value is None else float(value)
        return cls(state=state, vehicle_connected=vehicle, **numbers)


# -- commands the owner sends ------------------------------------------------------------------
@dataclass(frozen=True)
class SetLimit:
    amps: int


@dataclass(frozen=True)
class Pause:
    stop: bool = False  # True: disabled (the group's disable-mode failsafe), else sleeping


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Supervise:
    """The charger falls back to ``fallback`` A by itself when pulses stop for ``interval`` s."""

    interval: int
    fallback: int


@dataclass(frozen=True)
class Pulse:
    pass


@dataclass(frozen=True)
class AcknowledgeMissed:
    pass


Command = SetLimit | Pause | Resume | Supervise | Pulse | AcknowledgeMissed


def command(cmd: Command) -> dict[str, Any]:
    """The command envelope's data for ``cmd`` (the vocabulary charger transports accept)."""
    if isinstance(cmd, SetLimit):
        return {"command": "set_current", "amps": int(cmd.amps), "volatile": True}
    if isinstance(cmd, Pause):
        return {"command": "disable" if cmd.stop else "sleep"}
    if isinstance(cmd, Resume):
        return {"command": "enable"}
    if isinstance(cmd, Supervise):
        return {"command": "heartbeat", "interval": cmd.interval, "amps": cmd.fallback,
                "self_pulse": False}
    if isinstance(cmd, Pulse):
        return {"command": "heartbeat"}
    return {"command": "heartbeat", "acknowledge": True}


def missed_pulse(result: dict[str, Any]) -> bool:
    """A failed pulse's ``command_result`` says the charger fell back on its own (``trigger``
    2): the owner acknowledges and re-sends its limit."""
    return result.get("command") == "heartbeat" and result.get("trigger") == 2


# -- what other writers ask; the owner decides -------------------------------------------------
@dataclass(frozen=True)
class UserRequest:
    """A person's (or another transport's) write to a grouped charger, forwarded to its owner.

    ``amps``: the current asked (None: not asked); ``charging``: True resume, False pause,
    None not asked. ``reply_to`` and ``request_id`` let the owner answer the requester.
    """

    amps: float | None = None
    charging: bool | None = None
    reply_to: str = ""
    request_id: str = ""
    device: str = ""

    def command(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": REQUEST_COMMAND, "reply_to": self.reply_to,
                               "request_id": self.request_id}
        if self.amps is not None:
            out["amps"] = self.amps
        if self.charging is not None:
            out["charging"] = self.charging
        if self.device:
            out["device"] = self.device
        return out

    @classmethod
    def from_command(cls, data: dict[str, Any]) -> UserRequest:
        """Raises ValueError naming the bad field (a non-finite or negative current too)."""
        amps = data.get("amps")
        if amps is not None:
            value = _finite(amps)
            if value is None or value < 0:
                raise ValueError(f"amps must be a finite number >= 0, got {amps!r}")
            amps = value
        charging = data.get("charging")
        if charging is not None and not isinstance(charging, bool):
            raise ValueError(f"charging must be true or false, got {charging!r}")
        return cls(amps=amps, charging=charging, reply_to=str(data.get("reply_to", "")),
                   request_id=str(data.get("request_id", "")),
                   device=str(data.get("device", "")))
