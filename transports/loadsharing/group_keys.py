"""The group keys, once: one typed model from which the INI checks, the REST validation, config
sync, a member's stored configuration and a controller's push body derive.

OpenEVSE's names (``loadsharing_`` + the field), defaults and error messages
(``src/web_server_config.cpp``, LOADSHARING.md): our nodes answer a bad ``POST /config`` with
the same words as an OpenEVSE node. Two rules are this project's: a number must be finite, and
(``cross=True``) the reserve for an offline peer is at least the safe current.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

PREFIX = "loadsharing_"

#: OpenEVSE's own wording (LOADSHARING.md)
MSG_GROUP_MAX = "loadsharing_group_max_current must be >= 0"
MSG_SAFETY = "loadsharing_safety_factor must be between 0.0 and 1.0"
MSG_TIMEOUT = "loadsharing_heartbeat_timeout must be between 5 and 600 seconds"
MSG_SAFE = "loadsharing_failsafe_safe_current must be between 0 and 80 amps"
MSG_ASSUMED = "loadsharing_failsafe_peer_assumed_current must be between 0 and 80 amps"
MSG_MODE = "loadsharing_failsafe_mode must be 'safe_current' or 'disable'"
MSG_SAFE_OVER_MAX = (
    "loadsharing_failsafe_safe_current must not exceed loadsharing_group_max_current"
)
MSG_ASSUMED_UNDER_SAFE = (
    "loadsharing_failsafe_peer_assumed_current must be >= loadsharing_failsafe_safe_current"
)
MODES = ("safe_current", "disable")

#: the numeric keys: (lowest, highest, OpenEVSE's message), checked in this order
RANGES: dict[str, tuple[float, float, str]] = {
    "loadsharing_group_max_current": (0.0, math.inf, MSG_GROUP_MAX),
    "loadsharing_safety_factor": (0.0, 1.0, MSG_SAFETY),
    "loadsharing_heartbeat_timeout": (5.0, 600.0, MSG_TIMEOUT),
    "loadsharing_failsafe_safe_current": (0.0, 80.0, MSG_SAFE),
    "loadsharing_failsafe_peer_assumed_current": (0.0, 80.0, MSG_ASSUMED),
}


def check_number(key: str, value: float) -> float:
    """``value`` for ``key``, or ValueError with OpenEVSE's message (ours if not finite)."""
    lo, hi, msg = RANGES[key]
    if not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(msg)
    return value


@dataclass(frozen=True)
class GroupKeys:
    """The values every member of a group must share (a hash of them travels in reports)."""

    group_id: str = ""
    group_max_current: float = 0.0
    safety_factor: float = 1.0
    heartbeat_timeout: float = 30.0
    failsafe_mode: str = "safe_current"
    failsafe_safe_current: float = 6.0
    failsafe_peer_assumed_current: float = 6.0

    def wire(self) -> dict[str, Any]:
        """``{"loadsharing_group_id": ..., ...}``: a push body's, a ``/config``'s group part."""
        return {PREFIX + k: v for k, v in asdict(self).items()}

    @classmethod
    def from_settings(cls, settings: Any) -> GroupKeys:
        return cls(**{f.name: getattr(settings, PREFIX + f.name) for f in fields(cls)})

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], base: GroupKeys | None = None, *,
                  cross: bool = True) -> GroupKeys:
        """The keys present in ``body`` over ``base`` (default: the defaults), checked;
        ValueError carries OpenEVSE's message for the first bad one."""
        values = (base or cls()).wire()
        values.update({k: body[k] for k in KEYS if k in body})
        why = check(values, cross=cross)
        if why is not None:
            raise ValueError(why)
        return cls(group_id=str(values[PREFIX + "group_id"]),
                   failsafe_mode=str(values[PREFIX + "failsafe_mode"]),
                   **{k.removeprefix(PREFIX): float(values[k]) for k in RANGES})


#: the keys as they are named on the wire and in the INI, in order
KEYS: tuple[str, ...] = tuple(PREFIX + f.name for f in fields(GroupKeys))


def check(values: Mapping[str, Any], *, cross: bool = True) -> str | None:
    """OpenEVSE's message for the first bad group key in ``values`` (any subset), or None.

    Absent keys count at their defaults for the rules between keys; ``cross``: also this
    project's rule that the reserve for an offline peer is at least the safe current.
    """
    numbers: dict[str, float] = {}
    for key in RANGES:
        if key not in values:
            continue
        raw = values[key]
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            return RANGES[key][2]
        try:
            numbers[key] = check_number(key, float(raw))
        except OverflowError:
            return f"{key} must be a finite number"
        except ValueError as exc:
            return str(exc) if "finite" in str(exc) else RANGES[key][2]
    mode = values.get(PREFIX + "failsafe_mode")
    if mode is not None and mode not in MODES:
        return MSG_MODE
    group = values.get(PREFIX + "group_id")
    if group is not None and not isinstance(group, str):
        return "loadsharing_group_id must be a string"
    defaults = GroupKeys()
    group_max = numbers.get(PREFIX + "group_max_current", defaults.group_max_current)
    safe = numbers.get(PREFIX + "failsafe_safe_current", defaults.failsafe_safe_current)
    if group_max > 0 and safe > group_max:
        return MSG_SAFE_OVER_MAX
    assumed = numbers.get(PREFIX + "failsafe_peer_assumed_current",
                          defaults.failsafe_peer_assumed_current)
    if cross and assumed < safe:
        return MSG_ASSUMED_UNDER_SAFE
    return None
