"""A simulated OpenEVSE controller (the J1772 state machine) driving a simulated EV. Pure.

Follows the firmware where it matters to a client (see /docs/simulators/rapi_device.md): states
A/B/C, sleep 0xFE and disable 0xFF, fault states, volatile and saved current capacity clamped to
min/ceiling, charge limit, and ``$SY`` heartbeat supervision lowering the current to a fallback
when pulses stop. Time only moves through ``step(dt)``; the RAPI simulator calls it from its
tick, a load-sharing simulation may call it from its own loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.rapi_replies import VFLAGS_NOTIFIED
from simulators.ev_model import EvModel

#: injectable faults -> the EVSE state they put the controller in (first wins).
FAULTS: dict[str, int] = {
    "gfci": 0x06,
    "no_ground": 0x07,
    "stuck_relay": 0x08,
    "over_temperature": 0x0A,
}
SLEEPING = 0xFE
DISABLED = 0xFF
HEARTBEAT_ACK = 165


@dataclass
class EvseModel:
    """One controller with its EV. Public fields are the simulator's knobs."""

    ev: EvModel = field(default_factory=EvModel)
    min_a: int = 6
    hw_max_a: int = 48
    configured_max_a: int = 32
    max_locked: bool = False
    saved_capacity_a: int = 32
    capacity_a: int = 32
    voltage_mv: int = 240_000
    ambient_c: float = 25.0
    firmware: str = "8.2.3"
    rapi: str = "5.2.1"
    mode: int = 0  # 0 enabled, SLEEPING or DISABLED (set by $FS/$FD)
    faults: set[str] = field(default_factory=set)
    trips: dict[str, int] = field(
        default_factory=lambda: {"gfci": 0, "no_ground": 0, "stuck_relay": 0}
    )
    charge_limit_kwh: int = 0
    time_limit_15min: int = 0
    limit_sleep: bool = False
    hb_interval: int = 0
    hb_amps: int = 0
    hb_trigger: int = 0
    hb_since_pulse: float = 0.0
    hb_pulses: int = 0
    now: float = 0.0
    elapsed_s: float = 0.0
    session_ws: float = 0.0
    total_wh: float = 0.0
    starting: bool = False  # passing through 0x00 after $FE or boot

    # -- what the controller reports -------------------------------------------------------
    @property
    def state(self) -> int:
        if self.starting:
            return 0x00
        for name, code in FAULTS.items():
            if name in self.faults:
                return code
        if self.mode:
            return self.mode
        if not self.ev.plugged:
            return 0x01
        return 0x03 if self.ev.requesting else 0x02

    @property
    def pilot_state(self) -> int:
        if not self.ev.plugged:
            return 0x01
        return 0x03 if self.ev.requesting and self.state == 0x03 else 0x02

    @property
    def relay_closed(self) -> bool:
        return self.state == 0x03 or "stuck_relay" in self.faults

    @property
    def temperature_c(self) -> float:
        if "over_temperature" in self.faults:
            return 75.0
        return round(self.ambient_c + 0.3 * self.ev.draw_a, 1)

    @property
    def vflags(self) -> int:
        flags = 0
        if self.faults & {"gfci", "no_ground", "stuck_relay"}:
            flags |= 0x0002
        if self.limit_sleep:
            flags |= 0x0004
        if self.time_limit_15min:
            flags |= 0x0010
        if "no_ground" in self.faults:
            flags |= 0x0020
        if self.relay_closed:
            flags |= 0x0040
        if "gfci" in self.faults:
            flags |= 0x0080
        if self.ev.plugged and self.mode != DISABLED:
            flags |= 0x0100
        if self.charge_limit_kwh:
            flags |= 0x2000
        return flags

    @property
    def ev_connected(self) -> int:
        """``$G0``: 2 (unknown) while disabled, the pilot being at -12 V."""
        if self.mode == DISABLED:
            return 2
        return 1 if self.ev.plugged else 0

    @property
    def charging_ma(self) -> int:
        return round(self.ev.draw_a * 1000)

    def notify_key(self) -> tuple[int, int, int, int]:
        """What ``$AT`` reports; a change of it is what makes the controller send one."""
        return (self.state, self.pilot_state, self.capacity_a, self.vflags & VFLAGS_NOTIFIED)

    # -- commands ---------------------------------------------------------------------------
    def set_current(self, amps: int, how: str = "volatile") -> tuple[bool, int]:
        """``$SC``: how = volatile | saved | max. Returns (accepted unclamped, resulting amps)."""
        if how == "max":
            if self.max_locked:
                return False, self.capacity_a
            self.configured_max_a = max(self.min_a, min(amps, self.hw_max_a))
            self.max_locked = True
            return True, self.configured_max_a
        ceiling = min(self.configured_max_a, self.hw_max_a)
        if "over_temperature" in self.faults and amps > self.capacity_a:
            return False, self.capacity_a
        result = max(self.min_a, min(amps, ceiling))
        self.capacity_a = result
        if how == "saved":
            self.saved_capacity_a = result
        return result == amps, result

    def enable(self) -> None:
        if self.mode in (SLEEPING, DISABLED):
            self.mode = 0
            self.limit_sleep = False
            self.starting = True  # shown once as 0x00, cleared by the next step

    def disable(self) -> None:
        self.mode = DISABLED

    def sleep(self) -> None:
        self.mode = SLEEPING

    def set_charge_limit(self, kwh: int) -> bool:
        if self.state not in (0x02, 0x03):
            return False
        self.charge_limit_kwh = kwh
        return True

    def set_time_limit(self, units: int) -> bool:
        if self.state not in (0x02, 0x03):
            return False
        self.time_limit_15min = units
        return True

    def heartbeat(self, params: tuple[int, ...]) -> bool:
        """``$SY`` configure (interval, amps), pulse () or acknowledge (165)."""
        if len(params) >= 2:
            self.hb_interval, self.hb_amps = params[0], params[1]
            self.hb_since_pulse = 0.0
            return True
        if params and params[0] == HEARTBEAT_ACK:
            if self.hb_trigger == 2:
                self.hb_trigger = 1
                self.capacity_a = min(self.configured_max_a, self.hw_max_a)
            self.hb_since_pulse = 0.0
            return True
        if params:
            return False
        if self.hb_trigger == 2:
            return False
        self.hb_since_pulse = 0.0
        self.hb_pulses += 1
        return True

    def inject_fault(self, name: str) -> None:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        if name not in self.faults and name in self.trips:
            self.trips[name] = min(0xFF, self.trips[name] + 1)
        self.faults.add(name)

    def clear_fault(self, name: str | None = None) -> None:
        if name is None:
            self.faults.clear()
        else:
            self.faults.discard(name)

    def reboot(self) -> None:
        """``$FR``: volatile settings are lost, the saved current comes back."""
        self.capacity_a = min(self.saved_capacity_a, self.configured_max_a)
        self.mode = 0
        self.hb_trigger = 0
        self.hb_since_pulse = 0.0
        self.starting = True

    def plug(self) -> None:
        self.ev.plug()
        self.session_ws = 0.0
        self.elapsed_s = 0.0

    def unplug(self) -> None:
        self.ev.unplug()
        self.charge_limit_kwh = 0
        self.time_limit_15min = 0
        if self.limit_sleep:
            self.limit_sleep = False
            self.mode = 0

    # -- time -------------------------------------------------------------------------------
    def step(self, dt: float) -> float:
        """Advance ``dt`` seconds; returns the EV's draw in amps."""
        self.now += dt
        self.starting = False
        if self.hb_interval > 0:
            self.hb_since_pulse += dt
            if self.hb_since_pulse >= self.hb_interval and self.hb_trigger != 2:
                self.hb_trigger = 2
                if self.capacity_a > self.hb_amps:
                    self.capacity_a = max(self.hb_amps, 0)
        offered = float(self.capacity_a) if self.relay_closed and self.state == 0x03 else 0.0
        draw = self.ev.step(dt, offered)
        if self.state == 0x03:
            self.elapsed_s += dt
        ws = draw * self.voltage_mv / 1000.0 * dt
        self.session_ws += ws
        self.total_wh += ws / 3600.0
        if self.charge_limit_kwh and self.session_ws / 3.6e6 >= self.charge_limit_kwh:
            self.mode = SLEEPING
            self.limit_sleep = True
            self.charge_limit_kwh = 0
        if self.time_limit_15min and self.elapsed_s >= self.time_limit_15min * 900:
            self.mode = SLEEPING
            self.limit_sleep = True
            self.time_limit_15min = 0
        return draw
