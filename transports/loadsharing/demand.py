"""Whether the local EV wants charge, from the charger's RAPI status (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DemandTracker:
    """RAPI status -> "demanding", OpenEVSE's rule plus one fix: our own pause doesn't count.

    OpenEVSE: connected (``vehicle == 1``) and state neither 0 nor 254 (sleeping); disabled
    (255) and fault states count as demanding. A node that paused its charger itself (limit 0)
    must still see the EV as wanting charge, or it would never get a share again; that holds from
    our pause until the charger is seen awake again after our resume (the write takes time). A
    sleep nobody here ordered (the user's) means no demand.
    """

    paused_by_us: bool = False
    demanding: bool = False
    _vehicle: bool = field(default=False)
    _commanded: int = field(default=0)

    def commanded(self, amps: int) -> None:
        self._commanded = amps
        if amps == 0:
            self.paused_by_us = True

    def update(self, state_code: int | None, vehicle_connected: Any) -> bool:
        if vehicle_connected in (0, 1, True, False):
            self._vehicle = bool(vehicle_connected)  # 2 = unknown (pilot at -12 V): keep
        if state_code not in (None, 0, 0xFE) and self._commanded > 0:
            self.paused_by_us = False
        if not self._vehicle or state_code == 1:
            self.demanding = False
        elif state_code in (0, 0xFE):
            self.demanding = self.paused_by_us
        else:
            self.demanding = True
        return self.demanding
