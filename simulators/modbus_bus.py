"""Several simulated Modbus devices, each with its own map, on one RS485 line (a PTY) or TCP port.

Built on ``simulators/modbus_device.py``: every unit is a :class:`DeviceModel` (the map-driven
register store, motion and faults), served together by one pymodbus server, as a USB adapter
or a Modbus TCP gateway would see them. Adds per-unit silence (a device unplugged from the
line while the others answer) for the bus tests and the demo.

    python -m simulators.modbus_bus --device 1:eg4_v58 --device 2:sdm630 --device 3:sdm630 \
        --pty-link /tmp/ttyBUS --tcp-port 5021

``--line-speed`` puts a :class:`PacedLine` in front of the PTY so that bytes take their wire
time at ``--baudrate`` (a bare PTY is instant), for the live benchmark and a realistic demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import sys
import threading
import time
import tty
from collections.abc import Mapping
from pathlib import Path

from protocols.registers import TABLES, RegisterMap, load_map
from simulators.modbus_device import DeviceModel, ModbusSimulator
from simulators.serve import serve_until_signal, setup_logging


class BusSimulator(ModbusSimulator):
    """``devices``: unit id -> map (name, path or loaded map)."""

    def __init__(self, devices: Mapping[int, str | RegisterMap], *, host: str = "127.0.0.1",
                 tcp_port: int | None = None, pty_link: str | None = None,
                 baudrate: int = 19200, dynamic: bool = True, day_seconds: float = 600.0) -> None:
        if not devices:
            raise ValueError("a bus needs at least one device")
        maps = {u: load_map(m) if isinstance(m, str) else m for u, m in devices.items()}
        super().__init__(next(iter(maps.values())), tuple(maps), host=host, tcp_port=tcp_port,
                         pty_link=pty_link, baudrate=baudrate, dynamic=dynamic,
                         day_seconds=day_seconds)
        drop = self.unit.drop_reply  # the server's "send nothing back" hook
        self.units = {u: DeviceModel(u, regmap, dynamic=dynamic, day_seconds=day_seconds)
                      for u, regmap in maps.items()}
        for model in self.units.values():
            model.drop_reply = drop

    def silence(self, unit_id: int) -> None:
        """The unit stops answering anything (its requests time out); others carry on."""
        for table in TABLES:
            self.units[unit_id].silence_range(table, 0, 0xFFFF)

    def unsilence(self, unit_id: int) -> None:
        self.units[unit_id].silent_ranges.clear()

    def requests(self, unit_id: int) -> int:
        return self.units[unit_id].requests


class PacedLine:
    """A PTY in front of a serial path whose bytes take their wire time at ``baudrate``.

    A PTY moves bytes instantly, so a test or benchmark over one says nothing about what fits
    on a 9600-baud line. This relay sits between the gateway (which opens ``link``) and the
    simulator's PTY (``target``) and holds every chunk for its RTU wire time (``bits_per_char``
    per byte plus the 3.5-character gap), one chunk at a time in either direction: RS485 is
    half duplex, so the line is busy for whichever side talks.
    """

    def __init__(self, target: str, link: str, baudrate: int, bits_per_char: int = 10) -> None:
        self.target, self.link = target, Path(link)
        self.char_time = bits_per_char / baudrate
        self.busy = 0.0  # seconds the line carried bytes
        self._fds: list[int] = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        far = os.open(self.target, os.O_RDWR | os.O_NOCTTY)
        master, slave = os.openpty()
        for fd in (far, master, slave):
            tty.setraw(fd)
        self._fds = [far, master, slave]
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(os.ttyname(slave))
        self._thread = threading.Thread(target=self._pump, args=(far, master), daemon=True,
                                        name="paced-line")
        self._thread.start()

    def _pump(self, far: int, master: int) -> None:
        peer = {far: master, master: far}
        while True:
            ready, _, _ = select.select([far, master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            for src in ready:
                try:
                    data = os.read(src, 4096)
                except OSError:
                    continue
                wire = (len(data) + 3.5) * self.char_time
                time.sleep(wire)
                self.busy += wire
                with contextlib.suppress(OSError):
                    os.write(peer[src], data)

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (*self._fds, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.link.unlink()


def _device(text: str) -> tuple[int, str]:
    unit, sep, regmap = text.partition(":")
    if not sep or not unit.isdigit() or not regmap:
        raise argparse.ArgumentTypeError(f"{text!r}: expected UNIT:MAP, e.g. 2:sdm630")
    return int(unit), regmap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.modbus_bus",
                                     description="several map-driven Modbus devices on one bus")
    parser.add_argument("--device", type=_device, action="append", required=True,
                        help="UNIT:MAP (repeatable), e.g. --device 1:eg4_v58 --device 2:sdm630")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tcp-port", type=int, help="serve Modbus TCP (a gateway) on this port")
    parser.add_argument("--pty-link", help="serve Modbus RTU on a PTY linked here")
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--silent", type=int, action="append", default=[],
                        help="unit id that never answers (repeatable)")
    parser.add_argument("--static", action="store_true", help="values do not move")
    parser.add_argument("--line-speed", action="store_true",
                        help="the PTY holds bytes for their wire time at --baudrate")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.tcp_port is None and not args.pty_link:
        parser.error("give --tcp-port and/or --pty-link")
    units = dict(args.device)
    if len(units) != len(args.device):
        parser.error("a unit id appears twice")
    setup_logging(args.log_level)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
    inner = f"{args.pty_link}.sim" if args.pty_link and args.line_speed else args.pty_link
    sim = BusSimulator(units, host=args.host, tcp_port=args.tcp_port, pty_link=inner,
                       baudrate=args.baudrate, dynamic=not args.static)
    paced = PacedLine(inner, args.pty_link, args.baudrate) if args.line_speed and inner else None
    for unit in args.silent:
        sim.silence(unit)

    async def start() -> None:
        await sim.start()
        if paced is not None:
            paced.start()

    async def stop() -> None:
        if paced is not None:
            paced.stop()
        await sim.stop()

    def ready() -> str:
        where = [f"tcp {args.host}:{args.tcp_port}"] if args.tcp_port is not None else []
        if args.pty_link:
            where.append(f"rtu {args.pty_link}")
        listing = ", ".join(f"{u}:{m.map.name}" for u, m in sim.units.items())
        return f"modbus bus simulator ready: units {listing}, {', '.join(where)}"

    async def run() -> None:
        await serve_until_signal(start, stop, ready)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
