"""A simulated electric vehicle: what a charger's offered current turns into.

Pure and clock-free (the caller passes ``dt``), so a test, the RAPI simulator and the load-sharing
simulations can step many of them fast or in real time. Reused by ``simulators/evse_model.py``.

The charging curve: the EV draws ``min(offered, max_rate)``, and above ``taper_start`` state of
charge its own limit falls linearly to ``min_taper_a`` at 100 %, where it stops.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvModel:
    """One vehicle. ``step(dt, offered_a)`` returns the current it draws for that interval."""

    battery_kwh: float = 60.0
    soc: float = 0.5  # state of charge, 0..1
    max_rate_a: float = 32.0
    voltage_v: float = 240.0
    taper_start: float = 0.8
    min_taper_a: float = 1.0
    plugged: bool = False
    #: False: the EV doesn't ask for energy (full or its own timer); pilot state B, not C.
    wants_charge: bool = True
    draw_a: float = 0.0
    #: energy into the battery since plug-in and ever (Wh)
    session_wh: float = 0.0
    total_wh: float = 0.0

    def plug(self) -> None:
        if not self.plugged:
            self.plugged = True
            self.session_wh = 0.0

    def unplug(self) -> None:
        self.plugged = False
        self.draw_a = 0.0

    @property
    def full(self) -> bool:
        return self.soc >= 1.0

    @property
    def requesting(self) -> bool:
        """The EV asks for power (pilot state C): plugged, not full, willing."""
        return self.plugged and self.wants_charge and not self.full

    def limit_a(self) -> float:
        """What the EV would take now if offered unlimited current (its taper included)."""
        if not self.requesting:
            return 0.0
        if self.soc <= self.taper_start:
            return self.max_rate_a
        left = (1.0 - self.soc) / max(1e-9, 1.0 - self.taper_start)
        return max(self.min_taper_a, min(self.max_rate_a, self.max_rate_a * left))

    def step(self, dt: float, offered_a: float) -> float:
        """Advance ``dt`` seconds with ``offered_a`` on the pilot (0 = relay open)."""
        self.draw_a = round(max(0.0, min(offered_a, self.limit_a())), 3)
        if self.draw_a > 0 and dt > 0:
            wh = self.draw_a * self.voltage_v * dt / 3600.0
            room_wh = (1.0 - self.soc) * self.battery_kwh * 1000.0
            wh = min(wh, room_wh)
            self.soc = min(1.0, self.soc + wh / (self.battery_kwh * 1000.0))
            self.session_wh += wh
            self.total_wh += wh
        return self.draw_a

    @property
    def power_w(self) -> float:
        return self.draw_a * self.voltage_v
