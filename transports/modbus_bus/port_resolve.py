"""Stable serial names: find the USB adapter by what it is, not by the order it was found in.

``/dev/ttyUSB0`` and ``/dev/ttyUSB1`` swap when two adapters enumerate in another order after
a reboot; the bus would then talk to the wrong devices. Two remedies:

- a ``/dev/serial/by-id/usb-FTDI_..._A50285BI-if00-port0`` path (udev's symlink, named after
  the adapter's serial number): it is just a ``port``, opened through the link;
- ``usb = 0403:6001`` with ``usb_serial = A50285BI`` (or ``usb_location = 1-1.2`` for the
  many CH340 adapters that have no serial number): the port is looked up with pyserial's
  ``serial.tools.list_ports`` at every (re)connect, so a re-plugged adapter is found again.

Matching is a pure function of the port list, so it is tested with real ``ListPortInfo``
records; only :meth:`UsbSelector.find` asks the system.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo


class PortNotFound(OSError):
    """No adapter (or more than one) matches the selector; the message lists what is there."""


@dataclass(frozen=True)
class UsbSelector:
    vid: int
    pid: int
    serial: str = ""
    location: str = ""

    @classmethod
    def parse(cls, text: str, serial: str = "", location: str = "") -> UsbSelector:
        """``"0403:6001"`` (hex, as lsusb prints it); ValueError names what was expected."""
        vid_text, sep, pid_text = text.strip().partition(":")
        try:
            vid, pid = int(vid_text, 16), int(pid_text, 16)
        except ValueError:
            vid = pid = -1
        if not sep or not (0 <= vid <= 0xFFFF and 0 <= pid <= 0xFFFF):
            raise ValueError(f"usb {text!r}: expected VID:PID in hex, e.g. 0403:6001 "
                             "(see lsusb or python -m serial.tools.list_ports -v)")
        return cls(vid, pid, serial.strip(), location.strip())

    def __str__(self) -> str:
        text = f"usb {self.vid:04x}:{self.pid:04x}"
        if self.serial:
            text += f" serial {self.serial}"
        if self.location:
            text += f" at {self.location}"
        return text

    def matches(self, port: ListPortInfo) -> bool:
        if port.vid != self.vid or port.pid != self.pid:
            return False
        if self.serial and (port.serial_number or "") != self.serial:
            return False
        location = port.location or ""
        return not self.location or location == self.location or location.startswith(
            self.location + ":")

    def choose(self, ports: Iterable[ListPortInfo]) -> str:
        """The one matching port's device path; PortNotFound when none or several match."""
        ports = list(ports)
        found = [p for p in ports if self.matches(p)]
        if len(found) == 1:
            return str(found[0].device)
        present = "; ".join(describe(p) for p in ports if p.vid is not None) or "no USB serial port"
        if not found:
            raise PortNotFound(f"no serial adapter matches {self} (present: {present})")
        raise PortNotFound(f"{len(found)} adapters match {self}: "
                           f"{', '.join(str(p.device) for p in found)}; add usb_serial or "
                           "usb_location to tell them apart")

    def find(self) -> str:
        """The matching port present now, or "" (for the load-time claim check)."""
        try:
            return self.choose(list_ports.comports())
        except PortNotFound:
            return ""


def describe(port: ListPortInfo) -> str:
    """How a port shows in an error: what a user needs to write the selector."""
    return (f"{port.device} = usb {port.vid or 0:04x}:{port.pid or 0:04x}"
            f" serial {port.serial_number or '-'} at {port.location or '-'}")


def resolve_port(port: str, selector: UsbSelector | None) -> str:
    """The path to open now: ``port`` as given (by-id links included), or the USB match."""
    if selector is None:
        return port
    return selector.choose(list_ports.comports())
