"""Modbus RTU and TCP: ``modbus_rtu`` and ``modbus_tcp`` transports driven by register maps.

- ``settings.py``  the section keys (validated at load, map names checked there)
- ``device.py``    one device: unit id + map + read plan + decoder + write checks (no I/O)
- ``link.py``      the one wrapper of pymodbus (shared with modbus_bus): typed failures
- ``transport.py`` the scan loop, commands, availability, reconnect with backoff
"""

from transports.modbus.transport import ModbusRtuTransport, ModbusTcpTransport

__all__ = ["ModbusRtuTransport", "ModbusTcpTransport"]
