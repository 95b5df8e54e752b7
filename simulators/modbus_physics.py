"""The simulated devices' value physics: resting values, day curve, state of charge, meter power.

Pure arithmetic, no registers and no pymodbus: :class:`simulators.modbus_device.DeviceModel`
asks these for the engineering values it then encodes into its register store, so the motion
can change without touching the server side. ``noise`` is the unit's seeded
``random.Random.uniform``; the order of its calls is part of what makes a run reproducible.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from protocols.registers import RegisterValue, Value

Noise = Callable[[float, float], float]

#: the simulated battery's usable capacity and the inverter's charge/discharge limit
CAPACITY_WH = 14336.0
MAX_BATTERY_W = 5000.0


def typical(spec: RegisterValue) -> Value:
    """A plausible resting value for a value, from its unit, class and limits."""
    h = zlib.crc32(spec.name.encode())
    if spec.dtype == "bool":
        return spec.address % 2 == 0
    if spec.dtype == "string":
        return ("SIM" + spec.name.upper().replace("_", ""))[: spec.count * 2]
    if spec.options:
        return spec.options[len(spec.options) // 2][1]
    if spec.minimum is not None and spec.maximum is not None:
        mid = (spec.minimum + spec.maximum) / 2
        return round(mid / spec.scale) * spec.scale
    name, unit = spec.name, spec.unit
    by_unit: dict[str, float] = {
        "V": 52.0 if ("battery" in name or "bms" in name) else 3.3 if "cell" in name
        else 350.0 if "pv" in name else 380.0 if "bus" in name else 230.0,
        "A": 5.0, "W": 400.0, "VA": 450.0, "var": 50.0, "Hz": 50.0, "kWh": 1000.0 + h % 1000,
        "kvarh": 100.0 + h % 100, "°C": 25.0, "%": 60.0, "Ah": 280.0, "s": 86400.0 + h % 1000,
    }
    if unit in by_unit:
        return by_unit[unit]
    if "power_factor" in name:
        return 0.98
    return float(h % 100) * spec.scale + spec.offset


def sunshine(hour: float) -> float:
    """The day curve: 0 at night, 1 at noon."""
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))


@dataclass(frozen=True)
class InverterStep:
    """One advance of the hybrid inverter: the values to serve and the powers to integrate."""

    updates: dict[str, Value]
    #: energy counter name -> the power (W) feeding it over the step
    energy: dict[str, float]
    soc: float


def inverter_step(
    sun: float, hour: Callable[[], float], soc: float, sim_dt: float, noise: Noise
) -> InverterStep:
    """PV from the day curve, an evening-heavy house load, the battery absorbing the difference.

    ``hour`` is called (not passed as a number) at the point the load is computed, as the
    model's clock is read there; ``sim_dt`` is in simulated seconds (a compressed day).
    """
    pv1, pv2 = 4200 * sun * noise(0.95, 1.0), 3800 * sun * noise(0.95, 1.0)
    load = 450 + 300 * max(0.0, math.sin(math.pi * (hour() - 16) / 8)) + noise(0, 60)
    net = pv1 + pv2 - load
    charge = min(max(net, 0.0), MAX_BATTERY_W) if soc < 100 else 0.0
    discharge = min(max(-net, 0.0), MAX_BATTERY_W) if soc > 10 else 0.0
    soc = min(100.0, max(0.0, soc + (charge - discharge) * sim_dt / 3600 / CAPACITY_WH * 100))
    export = max(0.0, net - charge)
    imported = max(0.0, -net - discharge)
    updates: dict[str, Value] = {
        "pv1_power": round(pv1), "pv2_power": round(pv2),
        "pv_total_power": round(pv1 + pv2), "pv1_voltage": 300 + 80 * sun if sun else 0,
        "pv2_voltage": 290 + 75 * sun if sun else 0, "battery_soc": round(soc),
        "battery_charge_power": round(charge), "battery_discharge_power": round(discharge),
        "battery_current": round((charge - discharge) / 52.0, 2),
        "battery_voltage": round(48.0 + 0.08 * soc, 1), "load_power": round(load),
        "grid_export_power": round(export), "grid_import_power": round(imported),
        "inverter_power": round(max(0.0, load - imported)),
    }
    energy = {"pv_energy_today": pv1 + pv2, "pv_energy_total": pv1 + pv2,
              "export_energy_total": export, "import_energy_total": imported,
              "charge_energy_total": charge, "discharge_energy_total": discharge}
    return InverterStep(updates, energy, soc)


def meter_phases(clock: Callable[[], float], noise: Noise) -> list[tuple[str, float, float]]:
    """A three-phase meter's (phase, volts, watts): mains voltage, a slowly swinging load."""
    phases = []
    for phase in ("l1", "l2", "l3"):
        volts = 230.0 + noise(-1.5, 1.5)
        watts = 600 + 400 * math.sin(clock() / 30.0) + noise(-50, 50)
        phases.append((phase, volts, watts))
    return phases


def kwh_after(kwh: float, watts: float, dt: float) -> float:
    """An energy counter (kWh) after ``watts`` for ``dt`` seconds."""
    return kwh + watts * dt / 3_600_000
