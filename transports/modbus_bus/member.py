"""One device on the bus as the transport sees it: settings, map, plan memory, identity.

Each member is its own device in the envelopes (``source_transport_info``), so MQTT and Home
Assistant show one device per member, and takes its own commands (``"device": <name>``).
"""

from __future__ import annotations

from protocols.read_plan import LinkCost, ReadRequest
from protocols.registers import Value, load_map
from transports.modbus.device import ModbusDevice
from transports.modbus_bus.blocks import BlockMemory
from transports.modbus_bus.settings import BusDevice


class Member:
    def __init__(self, cfg: BusDevice, link_cost: LinkCost | None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        regmap = load_map(cfg.protocol_version)
        self.device = ModbusDevice(cfg.unit, regmap, batch_size=cfg.batch_size, link=link_cost,
                                   writable=frozenset(cfg.writable))
        self.blocks = BlockMemory(regmap, self.device.batch_size, link_cost)
        self.serial = ""
        self.available: bool | None = None
        self.described = False
        #: blocks that got no answer last time: read after the others (see ordered())
        self.slow: set[tuple[str, int]] = set()

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

    def info(self, transport_name: str) -> dict[str, str]:
        """The device's identity: map + serial when known, else bus section + device name."""
        info = self.device.info(transport_name, self.serial)
        if not self.serial:
            info["device_identifier"] = f"{transport_name}_{self.name}".lower()
        info["device_name"] = self.name
        info["device"] = self.name
        return info

    def names(self, transport_name: str) -> set[str]:
        """What a command's ``"device"`` may say to mean this member (either identifier)."""
        return {self.name, str(self.unit), f"{transport_name}_{self.name}".lower(),
                self.info(transport_name)["device_identifier"]}

    def note_serial(self, values: dict[str, Value]) -> None:
        serial_name = self.device.map.meta.get("serial_number", "")
        if serial_name in values and not self.serial:
            self.serial = str(values[serial_name]).strip()

    def change(self, available: bool) -> bool:
        """Record availability; True when it changed (a status envelope is due)."""
        if self.available is available:
            return False
        self.available = available
        return True
