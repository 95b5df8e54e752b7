"""Whether the local EV wants charge, from the charger's status (no I/O), and how OpenEVSE's
wire shows that status (its ``/status`` ``state`` numbers, docs/loadsharing.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transports.charger import ChargerStatus

#: OpenEVSE's ``/status`` ``state`` for a charger state (the wire peers read; 0 = unknown)
WIRE_STATE = {"idle": 1, "connected": 2, "charging": 3, "paused": 254, "disabled": 255,
              "fault": 5, "unknown": 0}


def wire_state(status: ChargerStatus) -> int:
    return WIRE_STATE.get(status.state, 0)


@dataclass
class DemandTracker:
    """Charger status -> "demanding", OpenEVSE's rule plus one fix: our own pause doesn't count.

    OpenEVSE: a vehicle connected and the charger not sleeping; faults count as demanding. A node
    that paused its charger itself (limit 0, or disabled in the disable-mode failsafe) must still
    see the EV as wanting charge, or it would never get a share again; that holds from our pause
    until the charger is seen awake again after our resume (the write takes time). A pause or
    disable nobody here ordered (the user's, at the charger) means no demand.
    """

    paused_by_us: bool = False
    demanding: bool = False
    _vehicle: bool = field(default=False)
    _commanded: int = field(default=0)

    def commanded(self, amps: int) -> None:
        self._commanded = amps
        if amps == 0:
            self.paused_by_us = True

    def update(self, status: ChargerStatus) -> bool:
        if status.vehicle_connected is not None:
            self._vehicle = status.vehicle_connected  # None = unknown (pilot at -12 V): keep
        asleep = status.paused or status.state == "unknown"
        if not asleep and self._commanded > 0:
            self.paused_by_us = False
        if not self._vehicle or status.state == "idle":
            self.demanding = False
        elif asleep:
            self.demanding = self.paused_by_us
        else:
            self.demanding = True
        return self.demanding
