"""One device on the bus as the transport sees it: settings, map, plan memory, identity.

Each member is its own device in the envelopes (``source_transport_info``), so MQTT and Home
Assistant show one device per member, and takes its own commands (``"device": <name>``).
The sole member of a ``modbus_tcp``/``modbus_rtu`` section keeps that kind's identity (the
map's device name, ``<map>_<serial or unit>``), so its Home Assistant entities stay the same.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import replace

from gateway.backoff import FailureLog
from protocols.read_plan import LinkCost, ReadRequest
from protocols.registers import RegisterMap, Value, load_map
from protocols.sunspec import PROTOCOL as SUNSPEC
from protocols.sunspec import SunSpecMap
from transports.modbus.device import ModbusDevice
from transports.modbus.link import CallPolicy
from transports.modbus_bus.blocks import BlockMemory
from transports.modbus_bus.settings import BusDevice

#: answered reads the measured turnaround is the median of, and how many it needs first
TURNAROUND_SAMPLES = 32
TURNAROUND_MIN_SAMPLES = 8


class Member:
    def __init__(self, cfg: BusDevice, cost: LinkCost, *, sole: bool = False) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.sole = sole
        #: what a read of this device costs on this bus (its turnaround, the line's speed)
        self.cost = cost
        #: how each request to it is made: its own timeout, retries and pauses
        self.policy = CallPolicy(cfg.timeout, cfg.retries, cfg.request_delay, cfg.connect_delay)
        #: a SunSpec device's map is its own: found (again) before its next scan while True
        self.discovery_due = cfg.protocol_version == SUNSPEC
        self.discovery_log: FailureLog | None = None
        regmap = (RegisterMap(SUNSPEC, "<sunspec, not yet discovered>", ())
                  if self.discovery_due else load_map(cfg.protocol_version))
        self.device = ModbusDevice(cfg.unit, regmap, batch_size=cfg.batch_size, link=cost,
                                   writable=frozenset(cfg.writable))
        self.blocks = BlockMemory(regmap, self.device.batch_size, cost)
        self.serial = ""
        self.available: bool | None = None
        self.described = False
        #: blocks that got no answer last time: read after the others (see ordered())
        self.slow: set[tuple[str, int]] = set()
        #: the device's think time per answered read, measured: the exchange's time less
        #: the modelled wire (or network) part; a figure for the installer, not acted on
        self._turnarounds: deque[float] = deque(maxlen=TURNAROUND_SAMPLES)
        self.turnaround_noted = False

    @property
    def unit(self) -> int:
        return self.cfg.unit

    def ordered(self) -> list[ReadRequest]:
        """This scan's requests: those that answered last time first, in plan order.

        A device that leaves one block unanswered (some do, instead of an exception) then
        gives its other values before the timeout; and a scan that starts with a timeout can
        stop there (the device is probably gone) without starving the device's good blocks.
        """
        return sorted(self.blocks.plan.requests, key=lambda r: (r.table, r.address) in self.slow)

    def note_exchange(self, request: ReadRequest, seconds: float) -> None:
        """A read answered at the first try after ``seconds``: one turnaround sample."""
        wire = self.cost.seconds(request.table, request.count) - self.cost.turnaround
        self._turnarounds.append(max(0.0, seconds - wire))

    @property
    def measured_turnaround(self) -> float | None:
        """The median of the recent samples, once there are enough to say (seconds)."""
        if len(self._turnarounds) < TURNAROUND_MIN_SAMPLES:
            return None
        return statistics.median(self._turnarounds)

    def gain_at(self, turnaround: float) -> float:
        """How much shorter a scan would be (0-1) planned for ``turnaround`` than as now,
        both costed at that turnaround."""
        actual = replace(self.cost, turnaround=turnaround)
        now = self.blocks.plan.cost(actual)
        return (now - self.blocks.plan_with(actual).cost(actual)) / now if now else 0.0

    def info(self, transport_name: str) -> dict[str, str]:
        """The device's identity: map + serial when known, else bus section + device name."""
        info = self.device.info(transport_name, self.serial)
        if self.sole:
            return info
        if not self.serial:
            info["device_identifier"] = f"{transport_name}_{self.name}".lower()
        info["device_name"] = self.name
        info["device"] = self.name
        return info

    def names(self, transport_name: str) -> set[str]:
        """What a command's ``"device"`` may say to mean this member (either identifier)."""
        names = {self.name, str(self.unit), f"{transport_name}_{self.name}".lower(),
                 self.info(transport_name)["device_identifier"]}
        return names | {transport_name.lower()} if self.sole else names

    def note_serial(self, values: dict[str, Value]) -> None:
        serial_name = self.device.map.meta.get("serial_number", "")
        if serial_name in values and not self.serial:
            self.serial = str(values[serial_name]).strip()

    def adopt(self, found: SunSpecMap) -> None:
        """A SunSpec discovery's map becomes this device's: plan, decoder, identity."""
        regmap = found.regmap
        self.device = ModbusDevice(
            self.cfg.unit, regmap, batch_size=self.cfg.batch_size, link=self.cost,
            writable=frozenset(v.name for v in regmap.values if v.writable),
            exponents=found.exponents)
        self.blocks = BlockMemory(regmap, self.device.batch_size, self.cost)
        self.serial = found.identity.get("serial_number", "") or self.serial
        self.described = False
        self.discovery_due = False

    def change(self, available: bool) -> bool:
        """Record availability; True when it changed (a status envelope is due)."""
        if self.available is available:
            return False
        self.available = available
        if not available and self.cfg.protocol_version == SUNSPEC:
            self.discovery_due = True  # back from a quarantine: maybe new firmware, new models
        return True
