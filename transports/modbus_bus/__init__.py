"""Many Modbus devices on one RS485 bus (or one TCP gateway): ``modbus_bus``, ``modbus_bus_tcp``;
and one device (``modbus_tcp``, ``modbus_rtu``) as a bus of one, by the same code.

- ``settings.py``     the bus and its devices in one INI section (dotted keys), checked at load
- ``port_resolve.py`` stable serial names: by-id paths, or the USB adapter by VID:PID/serial
- ``schedule.py``     who gets the bus next: fair interleaving, quarantine, load (pure)
- ``blocks.py``       ranges a device refuses, learned from exception replies (pure)
- ``member.py``       one device on the bus: map, plan memory, identity
- ``transport.py``    the bus loop: one request at a time, split refused blocks, quarantine
- ``commands.py``     which device a command is for; writes served between two requests

Nothing is imported here: validating a section (``settings.py``) must not import pymodbus;
the transport classes register from ``transport.py`` (transports/__init__.py ``KINDS``).
"""
