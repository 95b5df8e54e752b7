"""From RAPI replies to gateway values, and from gateway commands to RAPI commands. Pure.

:class:`Snapshot` keeps the last decoded reply of each kind and turns them into one reading
(the field names other transports rely on: MQTT/Home Assistant, load sharing); ``$AT`` updates it
between polls. :func:`plan_command` turns a command envelope's data into RAPI steps or rejects
it with a reason, so the transport only sends and reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.message import ValueSpec
from protocols import rapi_replies as rr
from protocols.rapi_replies import (
    STATE_NAMES,
    VFLAG_CHARGING_ON,
    VFLAG_EV_CONNECTED,
    AsyncState,
    Capacity,
    Charging,
    CurrentRange,
    Energy,
    FaultCounters,
    Heartbeat,
    Status,
    Temperatures,
    state_name,
    vflag_names,
)

#: ``$SY 165`` acknowledges a missed heartbeat.
HEARTBEAT_ACK = 165
#: what a status poll asks, in order (``$GY`` too while heartbeat supervision is on).
POLLED = ("GS", "GE", "GC", "GG", "GP", "GU", "G0", "GF")
#: the highest current an OpenEVSE controller is built for (its L2 hardware maximum): the
#: bound for current values before ``$GC`` has told the charger's own.
HARDWARE_MAX_A = 80
#: a measured current may exceed the charger's maximum by this much (meter tolerance).
MEASURED_MARGIN = 1.1


def ev_connected_from_status(status: Status) -> bool | None:
    """Vehicle presence from ``$GS``/``$AT`` when ``$G0`` is not there: states B and C mean
    a vehicle, A none; otherwise the EV-connected flag, valid while the pilot is not at -12 V
    (disabled); else unknown."""
    by_state = {0x01: False, 0x02: True, 0x03: True}.get(status.state)
    if by_state is not None:
        return by_state
    if status.vflags is not None and status.state != 0xFF:
        return bool(status.vflags & VFLAG_EV_CONNECTED)
    return None


@dataclass
class Snapshot:
    """What we know about the controller, merged from polls and ``$AT`` lines."""

    status: Status | None = None
    pilot_state: int | None = None
    vflags: int | None = None
    capacity_a: int | None = None
    charging: Charging | None = None
    capacity: Capacity | None = None
    current_range: CurrentRange | None = None
    temperatures: Temperatures | None = None
    energy: Energy | None = None
    ev_connected: bool | None = None
    faults: FaultCounters | None = None
    heartbeat: Heartbeat | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: vehicle presence read from the state (the controller has no ``$G0``)
    ev_from_state: bool = False

    def use_state_for_ev(self) -> None:
        """``$G0`` answered ``$NK``: read vehicle presence from ``$GS``/``$AT`` from now on."""
        self.ev_from_state = True
        if self.status is not None:
            self.ev_connected = ev_connected_from_status(self.status)

    def current_limit(self) -> int:
        """The highest current value the charger can report: its hardware maximum."""
        return self.current_range.max_a if self.current_range else HARDWARE_MAX_A

    def check_current(self, what: str, amps: float | None, margin: float = 1.0) -> None:
        """Raise :class:`RapiReplyError` for a current outside 0..the charger's limit."""
        if amps is None:
            return
        limit = self.current_limit() * margin
        if not 0 <= amps <= limit:
            raise rr.RapiReplyError(
                what, (f"{amps:g}",), f"{amps:g} A is outside the charger's 0..{limit:g} A"
            )

    def apply_status(self, status: Status) -> None:
        self.status = status
        if status.pilot_state is not None:
            self.pilot_state = status.pilot_state
        if status.vflags is not None:
            self.vflags = status.vflags
        if self.ev_from_state:
            self.ev_connected = ev_connected_from_status(status)

    def apply_async(self, at: AsyncState) -> None:
        self.check_current("AT", at.current_capacity_a)
        elapsed = self.status.elapsed_s if self.status else 0
        self.status = Status(at.state, elapsed, at.pilot_state, at.vflags)
        self.pilot_state = at.pilot_state
        self.vflags = at.vflags
        self.capacity_a = at.current_capacity_a
        if self.vflags is not None:
            self.ev_connected = bool(self.vflags & VFLAG_EV_CONNECTED)
        if not self.vflags or not self.vflags & VFLAG_CHARGING_ON:
            # The relay is open: whatever the last poll measured is no longer flowing.
            if self.charging is not None and self.charging.current_a:
                self.charging = Charging(0.0, self.charging.voltage_v)

    def apply_capacity(self, capacity: Capacity) -> None:
        self.check_current("GE", capacity.amps)
        self.capacity = capacity
        self.capacity_a = capacity.amps

    def apply_range(self, current_range: CurrentRange) -> None:
        r = current_range
        for amps in (r.min_a, r.max_a, r.capacity_a, r.configured_max_a):
            if amps is not None and not 0 <= amps <= HARDWARE_MAX_A:
                raise rr.RapiReplyError(
                    "GC", (str(amps),), f"{amps} A is outside 0..{HARDWARE_MAX_A} A"
                )
        if r.min_a > r.max_a:
            raise rr.RapiReplyError("GC", (str(r.min_a), str(r.max_a)), "minimum above maximum")
        self.current_range = current_range
        if current_range.capacity_a is not None:
            self.capacity_a = current_range.capacity_a

    def apply(self, name: str, params: Sequence[str], rapi: tuple[int, ...] = (5,)) -> None:
        """Decode the ``$OK`` params of the get command ``name`` into the snapshot.

        Raises :class:`protocols.rapi_replies.RapiReplyError` on a reply it can't read.
        """
        if name == "GS":
            self.apply_status(rr.parse_status(params, rapi))
        elif name == "GE":
            self.apply_capacity(rr.parse_capacity(params))
        elif name == "GC":
            self.apply_range(rr.parse_current_range(params))
        elif name == "GG":
            charging = rr.parse_charging(params)
            self.check_current("GG", charging.current_a, MEASURED_MARGIN)
            self.charging = charging
        elif name == "GP":
            self.temperatures = rr.parse_temperatures(params)
        elif name == "GU":
            self.energy = rr.parse_energy(params)
        elif name == "G0":
            self.ev_connected = rr.parse_ev_connected(params)
        elif name == "GF":
            self.faults = rr.parse_fault_counters(params)
        elif name == "GY":
            self.heartbeat = rr.parse_heartbeat(params)
        else:
            raise ValueError(f"${name} is not a get command the snapshot knows")

    @property
    def state(self) -> int | None:
        return None if self.status is None else self.status.state

    def reading(self) -> dict[str, Any]:
        """One reading with every value known so far (absent ones are left out)."""
        out: dict[str, Any] = {}
        if self.status is not None:
            out["state"] = state_name(self.status.state)
            out["state_code"] = self.status.state
            out["enabled"] = self.status.state not in (0xFE, 0xFF)
            out["elapsed"] = self.status.elapsed_s
        if self.pilot_state is not None:
            out["pilot_state"] = {1: "A", 2: "B", 3: "C", 4: "D"}.get(self.pilot_state, "unknown")
        if self.vflags is not None:
            out["vflags"] = self.vflags
            out["vflags_names"] = ",".join(vflag_names(self.vflags))
            out["charging"] = bool(self.vflags & VFLAG_CHARGING_ON)
        if self.capacity_a is not None:
            out["pilot_current"] = self.capacity_a
            out["current_capacity"] = self.capacity_a
        if self.charging is not None:
            if self.charging.current_a is not None:
                out["charging_current"] = self.charging.current_a
                out["power"] = self.charging.power_w
            out["voltage"] = self.charging.voltage_v
        if self.current_range is not None:
            out["min_current"] = self.current_range.min_a
            out["max_current"] = self.current_range.ceiling_a
            out["max_hw_current"] = self.current_range.max_a
        if self.capacity is not None:
            out["service_level"] = self.capacity.service_level
        if self.temperatures is not None and self.temperatures.best_c is not None:
            out["temperature"] = self.temperatures.best_c
        if self.energy is not None:
            out["session_energy"] = round(self.energy.session_kwh, 6)
            out["total_energy"] = round(self.energy.total_kwh, 3)
        if self.ev_connected is not None:
            out["vehicle_connected"] = self.ev_connected
        if self.faults is not None:
            out["gfi_trips"] = self.faults.gfi
            out["no_ground_trips"] = self.faults.no_ground
            out["stuck_relay_trips"] = self.faults.stuck_relay
        if self.heartbeat is not None:
            out["heartbeat_interval"] = self.heartbeat.interval_s
            out["heartbeat_amps"] = self.heartbeat.amps
            out["heartbeat_trigger"] = self.heartbeat.trigger
        out.update(self.extra)
        return out


def value_specs(current_range: CurrentRange | None) -> list[ValueSpec]:
    """The describe event's values; pilot_current's bounds come from ``$GC``."""
    low = float(current_range.min_a) if current_range else 6.0
    high = float(current_range.ceiling_a) if current_range else 80.0
    meas = "measurement"
    states = tuple(STATE_NAMES.values())
    return [
        ValueSpec("state", kind="select", options=states, device_class="enum"),
        ValueSpec("state_code", entity_category="diagnostic", icon="mdi:numeric"),
        ValueSpec("pilot_state", kind="select", options=("A", "B", "C", "D", "unknown"),
                  display_name="Pilot state (J1772)", entity_category="diagnostic"),
        ValueSpec("enabled", kind="switch", writable=True),
        ValueSpec("charging", kind="binary", device_class="battery_charging"),
        ValueSpec("vehicle_connected", kind="binary", device_class="plug"),
        ValueSpec(
            "pilot_current", "A", "current", meas, writable=True, minimum=low, maximum=high, step=1
        ),
        ValueSpec("current_capacity", "A", "current", meas),
        ValueSpec("charging_current", "A", "current", meas),
        ValueSpec("min_current", "A", "current", entity_category="diagnostic"),
        ValueSpec("max_current", "A", "current", entity_category="diagnostic"),
        ValueSpec("max_hw_current", "A", "current", display_name="Max hardware current",
                  entity_category="diagnostic"),
        ValueSpec("voltage", "V", "voltage", meas),
        ValueSpec("power", "W", "power", meas),
        # back to 0 at each new session: total_increasing reads a drop as a new cycle
        # (state_class total would need a last_reset the controller does not give)
        ValueSpec("session_energy", "kWh", "energy", "total_increasing"),
        ValueSpec("total_energy", "kWh", "energy", "total_increasing"),
        ValueSpec("temperature", "°C", "temperature", meas),
        ValueSpec("elapsed", "s", "duration", meas, display_name="Session time"),
        ValueSpec("service_level", entity_category="diagnostic", icon="mdi:numeric"),
        ValueSpec("vflags", display_name="Status flags", entity_category="diagnostic",
                  icon="mdi:flag"),
        ValueSpec("vflags_names", kind="text", display_name="Status flag names",
                  entity_category="diagnostic", icon="mdi:flag"),
        ValueSpec("gfi_trips", state_class="total_increasing", display_name="GFI trips",
                  entity_category="diagnostic"),
        ValueSpec("no_ground_trips", state_class="total_increasing",
                  entity_category="diagnostic"),
        ValueSpec("stuck_relay_trips", state_class="total_increasing",
                  entity_category="diagnostic"),
        ValueSpec("heartbeat_interval", "s", "duration", entity_category="diagnostic"),
        ValueSpec("heartbeat_amps", "A", "current", display_name="Heartbeat fallback current",
                  entity_category="diagnostic"),
        ValueSpec("heartbeat_trigger", entity_category="diagnostic", icon="mdi:heart-pulse"),
    ]


class CommandRejected(ValueError):
    """A command we won't turn into RAPI (bad payload, unknown verb): the sender's fault."""

    def __init__(self, reason: str, result: str = "rejected") -> None:
        super().__init__(reason)
        self.result = result


@dataclass(frozen=True, slots=True)
class RapiStep:
    """One RAPI command to send; ``label`` names it in the result."""

    name: str
    params: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True, slots=True)
class CommandPlan:
    steps: tuple[RapiStep, ...]
    #: heartbeat verb: the new self-pulse interval (0 = stop pulsing), None = unchanged.
    pulse_interval: float | None = None


def _number(data: dict[str, Any], key: str, low: float = 0, high: float = 1e6) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(str(value))
        except ValueError:
            raise CommandRejected(f"{key} must be a number, got {value!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise CommandRejected(f"{key} must be within {low:g}..{high:g}, got {value!r}")
    return float(value)


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "on", "true", "yes", "enable", "enabled"):
        return True
    if text in ("0", "off", "false", "no", "disable", "disabled"):
        return False
    raise CommandRejected(f"enabled must be on/off, got {value!r}")


def set_current_step(amps: float, volatile: bool = True) -> RapiStep:
    """``$SC n V`` (volatile: spares the EEPROM under load management) or ``$SC n``."""
    whole = math.floor(amps)  # never offer more than asked
    return RapiStep("SC", (str(whole), "V") if volatile else (str(whole),), "set_current")


def plan_command(data: dict[str, Any]) -> CommandPlan:
    """A command's data -> the RAPI steps; raises :class:`CommandRejected`."""
    verb = data.get("command")
    if verb == "set_current":
        if "amps" not in data:
            raise CommandRejected("set_current needs amps")
        volatile = data.get("volatile", True)
        if not isinstance(volatile, bool):
            raise CommandRejected(f"volatile must be true/false, got {volatile!r}")
        return CommandPlan((set_current_step(_number(data, "amps", 0, 255), volatile),))
    if verb == "enable":
        return CommandPlan((RapiStep("FE", (), "enable"),))
    if verb == "disable":
        return CommandPlan((RapiStep("FD", (), "disable"),))
    if verb == "sleep":
        return CommandPlan((RapiStep("FS", (), "sleep"),))
    if verb == "set_charge_limit":
        kwh = _number(data, "kwh", 0, 255)
        return CommandPlan((RapiStep("SH", (str(round(kwh)),), "set_charge_limit"),))
    if verb == "heartbeat":
        if data.get("acknowledge"):
            return CommandPlan((RapiStep("SY", (str(HEARTBEAT_ACK),), "heartbeat_ack"),))
        if "interval" not in data:
            return CommandPlan((RapiStep("SY", (), "heartbeat_pulse"),))
        interval = round(_number(data, "interval", 0, 65535))
        amps = round(_number(data, "amps", 0, 255)) if "amps" in data else 0
        pulse = interval if data.get("self_pulse", True) else 0
        return CommandPlan(
            (RapiStep("SY", (str(interval), str(amps)), "heartbeat"),), pulse_interval=pulse
        )
    if verb == "write":
        values = data.get("values")
        if not isinstance(values, dict) or not values:
            raise CommandRejected("write needs a non-empty values object")
        steps: list[RapiStep] = []
        for key, value in values.items():
            if key in ("pilot_current", "current_capacity"):
                steps.append(set_current_step(_number({key: value}, key, 0, 255)))
            elif key == "enabled":
                on = _switch(value)
                steps.append(RapiStep("FE" if on else "FD", (), "enable" if on else "disable"))
            else:
                raise CommandRejected(f"{key!r} is not writable (pilot_current, enabled)")
        return CommandPlan(tuple(steps))
    raise CommandRejected(f"unknown command {verb!r}", result="unsupported")


def step_outcome(step: RapiStep, ok: bool, params: Sequence[str]) -> dict[str, Any]:
    """What a command result reports about one step's reply (tolerant of bare OK/NK).

    ``$SC``: ``amps``, the resulting current (the reply's, else the asked value when OK);
    ``$SY``: the heartbeat configuration the controller now has.
    """
    out: dict[str, Any] = {}
    try:
        if step.name == "SC":
            amps = rr.parse_set_current(params)
            if amps is None and ok:
                amps = int(step.params[0])
            if amps is not None:
                out["amps"] = amps
        elif step.name == "SY" and len(params) >= 3:
            hb = rr.parse_heartbeat(params)
            out.update(interval=hb.interval_s, heartbeat_amps=hb.amps, trigger=hb.trigger)
    except rr.RapiReplyError as exc:
        out["reply_error"] = str(exc)
    return out
