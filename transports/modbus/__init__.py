"""Modbus RTU and TCP: ``modbus_rtu`` and ``modbus_tcp``, one device driven by a register map.

Each is a bus of one device, run by the code of ``transports/modbus_bus`` (scan, writes,
quarantine, refused ranges); this package holds what every Modbus transport shares:

- ``settings.py``  the keys of a one-device section (validated at load, map names checked there)
- ``device.py``    one device: unit id + map + read plan + decoder + write checks (no I/O)
- ``link.py``      the one wrapper of pymodbus: link descriptions, per-call policy, typed
  failures

Nothing is imported here, so that ``transports.modbus_bus`` can use these modules without an
import cycle; the transport classes register from there.
"""
