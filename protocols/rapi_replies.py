"""Typed decoding of RAPI replies and async lines, with units, and the state/vflag names.

Tolerant by design: the firmware is the reference, but emulators and older firmware answer with
extra tokens, decimal where the firmware writes hex, or pre-5.0 ``$GS``. Extra tokens are
ignored; a reply that can't be decoded raises :class:`RapiReplyError` (carrying the line), which
the transport counts and logs without stopping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocols.rapi import RapiError

STATE_NAMES: dict[int, str] = {
    0x00: "starting",
    0x01: "not_connected",
    0x02: "connected",
    0x03: "charging",
    0x04: "vent_required",
    0x05: "diode_check_failed",
    0x06: "gfci_fault",
    0x07: "no_ground",
    0x08: "stuck_relay",
    0x09: "gfi_self_test_failed",
    0x0A: "over_temperature",
    0x0B: "over_current",
    0x0E: "relay_closure_fault",
    0xFE: "sleeping",
    0xFF: "disabled",
}
STATE_CODES = {name: code for code, name in STATE_NAMES.items()}
FAULT_STATES = frozenset({0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0E})
PILOT_NAMES = {0x01: "A", 0x02: "B", 0x03: "C", 0x04: "D"}

VFLAG_NAMES: dict[int, str] = {
    0x0001: "auto_svc_level_skipped",
    0x0002: "hard_fault",
    0x0004: "limit_sleep",
    0x0008: "auth_locked",
    0x0010: "time_limit",
    0x0020: "no_ground_tripped",
    0x0040: "charging_on",
    0x0080: "gfi_tripped",
    0x0100: "ev_connected",
    0x0200: "session_ended",
    0x0400: "ev_connected_prev",
    0x0800: "ui_in_menu",
    0x1000: "timer_on",
    0x2000: "charge_limit",
    0x4000: "boot_lock",
    0x8000: "mennekes_manual",
}
VFLAG_EV_CONNECTED = 0x0100
VFLAG_CHARGING_ON = 0x0040
#: vflags whose change makes the controller send ``$AT``.
VFLAGS_NOTIFIED = 0x0008 | 0x0100 | 0x0010 | 0x2000 | 0x0002
TEMP_ABSENT = -2560


class RapiReplyError(RapiError):
    """A reply we could not decode (the peer's fault): carries the command and the tokens."""

    def __init__(self, what: str, params: Sequence[str], reason: str) -> None:
        super().__init__(f"${what} reply {' '.join(params)!r}: {reason}")
        self.what = what
        self.params = tuple(params)


def state_name(code: int) -> str:
    return STATE_NAMES.get(code, f"unknown_{code:02x}")


def vflag_names(vflags: int) -> tuple[str, ...]:
    return tuple(name for bit, name in VFLAG_NAMES.items() if vflags & bit)


def _int(what: str, params: Sequence[str], index: int, base: int = 10) -> int:
    try:
        return int(params[index], base)
    except IndexError:
        raise RapiReplyError(what, params, f"needs at least {index + 1} tokens") from None
    except ValueError:
        raise RapiReplyError(what, params, f"token {index + 1} is not a number") from None


def _hex(what: str, params: Sequence[str], index: int) -> int:
    return _int(what, params, index, 16)


@dataclass(frozen=True, slots=True)
class Version:
    firmware: str
    rapi: str

    @property
    def rapi_tuple(self) -> tuple[int, ...]:
        parts: list[int] = []
        for part in self.rapi.split("."):
            digits = "".join(c for c in part if c.isdigit())
            parts.append(int(digits) if digits else 0)
        return tuple(parts)


def parse_version(params: Sequence[str]) -> Version:
    if not params:
        raise RapiReplyError("GV", params, "no version")
    return Version(params[0], params[1] if len(params) > 1 else "")


@dataclass(frozen=True, slots=True)
class Status:
    state: int
    elapsed_s: int
    pilot_state: int | None = None
    vflags: int | None = None

    @property
    def state_name(self) -> str:
        return state_name(self.state)


def parse_status(params: Sequence[str], rapi: tuple[int, ...] = (5,)) -> Status:
    """``$GS``: hex state, decimal elapsed, hex pilot, hex vflags (RAPI >= 5.0); before 5.0
    two decimal tokens. A 2-token reply is read as the old form whatever ``$GV`` said."""
    if rapi < (5,) or len(params) == 2:
        return Status(_int("GS", params, 0), _int("GS", params, 1))
    return Status(
        _hex("GS", params, 0), _int("GS", params, 1), _hex("GS", params, 2), _hex("GS", params, 3)
    )


@dataclass(frozen=True, slots=True)
class AsyncState:
    """``$AT``: what changed, straight from the controller."""

    state: int
    pilot_state: int
    current_capacity_a: int
    vflags: int


def parse_async_state(params: Sequence[str]) -> AsyncState:
    return AsyncState(
        _hex("AT", params, 0), _hex("AT", params, 1), _int("AT", params, 2), _hex("AT", params, 3)
    )


@dataclass(frozen=True, slots=True)
class Boot:
    postcode: int
    firmware: str


def parse_boot(params: Sequence[str]) -> Boot:
    return Boot(_hex("AB", params, 0), params[1] if len(params) > 1 else "")


@dataclass(frozen=True, slots=True)
class Charging:
    current_a: float | None  # None: no ammeter (-1)
    voltage_v: float

    @property
    def power_w(self) -> float | None:
        return None if self.current_a is None else round(self.current_a * self.voltage_v, 1)


def parse_charging(params: Sequence[str]) -> Charging:
    milliamps = _int("GG", params, 0)
    return Charging(None if milliamps < 0 else milliamps / 1000.0, _int("GG", params, 1) / 1000.0)


@dataclass(frozen=True, slots=True)
class Capacity:
    amps: int
    flags: int

    @property
    def service_level(self) -> int:
        return 2 if self.flags & 0x0001 else 1


def parse_capacity(params: Sequence[str]) -> Capacity:
    return Capacity(_int("GE", params, 0), _hex("GE", params, 1) if len(params) > 1 else 0)


@dataclass(frozen=True, slots=True)
class CurrentRange:
    min_a: int
    max_a: int
    capacity_a: int | None = None
    configured_max_a: int | None = None

    @property
    def ceiling_a(self) -> int:
        """The highest volatile ``$SC`` the controller takes."""
        return self.configured_max_a or self.max_a


def parse_current_range(params: Sequence[str]) -> CurrentRange:
    extra = [_int("GC", params, i) for i in range(2, min(len(params), 4))]
    return CurrentRange(_int("GC", params, 0), _int("GC", params, 1), *extra)


@dataclass(frozen=True, slots=True)
class Temperatures:
    ds3231_c: float | None
    mcp9808_c: float | None
    tmp007_c: float | None

    @property
    def best_c(self) -> float | None:
        """The controller's own preference order: MCP9808, then TMP007, then the RTC."""
        for value in (self.mcp9808_c, self.tmp007_c, self.ds3231_c):
            if value is not None:
                return value
        return None


def parse_temperatures(params: Sequence[str]) -> Temperatures:
    values: list[float | None] = []
    for i in range(3):
        raw = _int("GP", params, i) if i < len(params) else TEMP_ABSENT
        values.append(None if raw == TEMP_ABSENT else raw / 10.0)
    return Temperatures(*values)


@dataclass(frozen=True, slots=True)
class Energy:
    session_kwh: float
    total_kwh: float


def parse_energy(params: Sequence[str]) -> Energy:
    return Energy(_int("GU", params, 0) / 3_600_000.0, _int("GU", params, 1) / 1000.0)


def parse_ev_connected(params: Sequence[str]) -> bool | None:
    """``$G0``: True, False, or None when unknown (pilot at -12 V)."""
    value = _int("G0", params, 0)
    return {0: False, 1: True}.get(value)


@dataclass(frozen=True, slots=True)
class FaultCounters:
    gfi: int
    no_ground: int
    stuck_relay: int


def parse_fault_counters(params: Sequence[str]) -> FaultCounters:
    return FaultCounters(_hex("GF", params, 0), _hex("GF", params, 1), _hex("GF", params, 2))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    interval_s: int
    amps: int
    trigger: int  # 0 never missed, 2 missed and not acknowledged, 1 missed then acknowledged


def parse_heartbeat(params: Sequence[str]) -> Heartbeat:
    return Heartbeat(_int("SY", params, 0), _int("SY", params, 1), _int("SY", params, 2))


def parse_set_current(params: Sequence[str]) -> int | None:
    """``$SC`` reply: the resulting amps, or None from a peer that answers a bare OK/NK."""
    if not params:
        return None
    return _int("SC", params, 0)
