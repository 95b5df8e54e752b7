"""``rapi_serial`` as a :mod:`transports.charger` Charger: its readings as a ChargerStatus, and
which of its commands are a user's write to a grouped charger's current (forwarded to the owner).

The RAPI knowledge load sharing needs lives here, once: state codes (``$GS``: 1 A, 2 B, 3 C,
254 sleeping, 255 disabled, faults in between) and the verbs that change the pilot or start and
stop charging (``set_current``/``$SC``, ``enable``/``$FE``, ``sleep``/``$FS``,
``disable``/``$FD``, ``write`` of ``pilot_current``/``current_capacity``/``enabled``).
"""

from __future__ import annotations

import math
from typing import Any

from transports.charger import ChargerStatus, UserRequest

_STATES = {1: "idle", 2: "connected", 3: "charging", 0xFE: "paused", 0xFF: "disabled"}
#: commands that would change the current or start/stop charging
CURRENT_VERBS = frozenset({"set_current", "enable", "disable", "sleep", "write"})
#: supervision belongs to the owner alone: its fallback current is a current too
OWNER_ONLY = frozenset({"heartbeat"})


def charger_status(reading: dict[str, Any]) -> ChargerStatus:
    """A ``rapi_serial`` reading -> the capability's status."""
    code = reading.get("state_code")
    if isinstance(code, int) and not isinstance(code, bool):
        state = _STATES.get(code, "fault" if 4 <= code <= 14 else "unknown")
    else:
        state = "unknown"
    vehicle = reading.get("vehicle_connected")
    return ChargerStatus(
        state=state,
        vehicle_connected=bool(vehicle) if vehicle in (0, 1, True, False) else None,
        offered_current=_number(reading.get("pilot_current")),
        measured_current=_number(reading.get("charging_current")),
        voltage=_number(reading.get("voltage")),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def user_request(data: dict[str, Any], source: str) -> UserRequest | None:
    """The owner-bound request for a command that writes the current, or None (not one).

    Raises ValueError for a write whose value can't be a current or a switch (the requester
    gets that as a rejected ``command_result``).
    """
    verb = data.get("command")
    if verb not in CURRENT_VERBS:
        return None
    amps: Any = None
    charging: bool | None = None
    if verb == "set_current":
        amps = data.get("amps")
    elif verb == "enable":
        charging = True
    elif verb in ("disable", "sleep"):
        charging = False
    else:
        values = data.get("values")
        if not isinstance(values, dict):
            return None  # the planner rejects it with its own message
        for key, value in values.items():
            if key in ("pilot_current", "current_capacity"):
                amps = value
            elif key == "enabled":
                charging = _switch(value)
            else:
                return None
    if amps is not None:
        n = _number(amps) if not isinstance(amps, str) else _parse(amps)
        if n is None or n < 0:
            raise ValueError(f"a current must be a finite number >= 0, got {amps!r}")
        amps = n
    device = data.get("device")
    return UserRequest(amps=amps, charging=charging, reply_to=source,
                       request_id=str(data.get("request_id", "")),
                       device=device if isinstance(device, str) else "")


def _parse(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("on", "true", "1", "off", "false",
                                                             "0"):
        return value.strip().lower() in ("on", "true", "1")
    raise ValueError(f"enabled must be on/off or true/false, got {value!r}")
