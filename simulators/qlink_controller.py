"""A Vantage QLink master behind an IP-Enabler, on TCP: for the demo and the tests.

What makes it faithful (QLINK.md): one TCP connection at a time by default, further connects
refused while it is held (the listening socket is closed, so a SYN gets a RST, as probes of a
real box saw); one command at a time over a ~40 ms "serial line"; events a command causes
written before its reply, and pushed to every connection; monitoring kept per controller.

Faults to inject (attributes and methods, also some command-line flags): ``drop_all()``,
``one_way`` (commands taken, nothing sent back), ``mute`` (no replies, events still flow),
``inject_garbage()``, ``refuse_connections()``, ``idle_close``.

    python -m simulators.qlink_controller --port 3040 --loads "kitchen_pendant=127@1.1.2.1" \
        --keypads "entry=1.23" [--project export.txt] [--limit 1] [--auto-press 10]
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import contextlib
import logging
import random
import socket
import struct
import time
from collections.abc import Iterable

from protocols.qlink import Event, LineSplitter, escape
from protocols.qlink_project import (
    ButtonAction,
    KeypadSpec,
    LoadSpec,
    parse_keypads,
    parse_loads,
    read_project,
)
from simulators.qlink_model import ControllerModel, Monitoring

log = logging.getLogger("qlink-sim")

DEMO_LOADS = "kitchen_pendant=127@1.1.2.1, hall=12@1.1.1.3, porch=14@1.1.1.4"
DEMO_KEYPADS = "entry=1.23"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0): what a refused or dropped link looks like."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class QLinkControllerSimulator:
    """The controller model served on ``ports`` of 127.0.0.1 with a connection ``limit``."""

    def __init__(
        self,
        model: ControllerModel,
        ports: Iterable[int] = (3040,),
        *,
        host: str = "127.0.0.1",
        limit: int = 1,
        latency: float = 0.04,
        idle_close: float = 0.0,
    ) -> None:
        self.model = model
        self.host = host
        self.ports = tuple(ports)
        self.limit = limit
        self.latency = latency
        self.idle_close = idle_close
        self.one_way = False
        self.mute = False
        self.hold: asyncio.Event | None = None  # replies wait until it is set
        self._refusing = False
        self._stopped = False
        self._handlers: set[asyncio.Task[None]] = set()
        self._busy: dict[asyncio.StreamWriter, bool] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._clients: set[asyncio.StreamWriter] = set()
        self._serial = asyncio.Lock()  # one command at a time, as on the RS-232 line
        self._listen_lock = asyncio.Lock()
        self.accepted = 0
        self.ports_used: list[int] = []  # the local port of each accepted connection
        self.rejected = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.lines_in: list[bytes] = []  # every command line received, for the tests
        self.arrivals: list[float] = []  # monotonic time of each line, for pacing checks
        self.overlapped = 0  # lines that arrived while an earlier one was still unanswered

    # ------------------------------------------------------------------ lifecycle

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def listening(self) -> bool:
        return bool(self._servers)

    async def start(self) -> None:
        await self._update_listening()

    async def stop(self) -> None:
        self._stopped = True
        self._close_listeners()
        for writer in list(self._clients):
            _reset(writer)
        self._clients.clear()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._close_listeners()

    async def _listen(self) -> None:
        if self._servers or self._refusing or self._stopped:
            return
        for port in self.ports:
            self._servers.append(
                await asyncio.start_server(self._serve, self.host, port, reuse_address=True)
            )

    def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()  # stops listening; the connections already made stay up
        self._servers = []

    async def _update_listening(self) -> None:
        async with self._listen_lock:  # two clients leaving at once must not both bind
            if len(self._clients) >= self.limit or self._refusing:
                self._close_listeners()
            else:
                await self._listen()

    # ------------------------------------------------------------------ faults

    def refuse_connections(self, refuse: bool = True) -> None:
        """Stop (or resume) taking connections; the ones held stay up."""
        self._refusing = refuse
        task = asyncio.ensure_future(self._update_listening())
        task.add_done_callback(lambda t: t.exception())

    async def allow_connections(self) -> None:
        self._refusing = False
        await self._update_listening()

    def drop_all(self) -> None:
        """Every connection reset at once (a box power cycle, a cable pulled)."""
        for writer in list(self._clients):
            _reset(writer)

    async def inject_garbage(self, raw: bytes = b"\x00\xffQ#?garbage") -> None:
        await self._broadcast_raw(raw + self.model.line_end)

    # ------------------------------------------------------------------ physical world

    async def press(self, keypad: str, button: int, hold: float = 0.0) -> None:
        """Someone presses and releases a keypad button; events go to every client."""
        spec = next(p.spec for p in self.model.keypads.values() if p.spec.name == keypad)
        async with self._serial:
            await self.broadcast(self.model.press(spec.master, spec.station, button, 1234567))
        if hold:
            await asyncio.sleep(hold)
        async with self._serial:
            await self.broadcast(self.model.release(spec.master, spec.station, button, 1234567))

    async def set_level(self, load: str, level: int) -> None:
        """A load changed at the wall: an ``LO`` (and ``LE``) pushed to every client."""
        spec = next(s for s in self.model.loads.values() if s.name == load)
        async with self._serial:
            await self.broadcast(self.model.set_level(spec.address, level))

    async def broadcast(self, events: list[Event]) -> None:
        if events:
            end = self.model.line_end.decode()
            await self._broadcast_raw("".join(e.encode() + end for e in events).encode())

    async def _broadcast_raw(self, data: bytes) -> None:
        if self.one_way:
            return
        for writer in list(self._clients):
            self._write(writer, data)

    def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not writer.is_closing():
            writer.write(data)
            self.bytes_out += len(data)

    # ------------------------------------------------------------------ a connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= self.limit or self._refusing:
            self.rejected += 1  # connects that raced the listener's close
            _reset(writer)
            return
        self.accepted += 1
        self.ports_used.append(int(writer.get_extra_info("sockname")[1]))
        self._clients.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        await self._update_listening()
        peer = writer.get_extra_info("peername")
        log.info("client %s connected (%d held)", peer, len(self._clients))
        lines = LineSplitter()
        waiting: asyncio.Queue[bytes] = asyncio.Queue()  # the serial line's input buffer
        processor = asyncio.create_task(self._process(waiting, writer))
        try:
            while True:
                if self.idle_close > 0:
                    data = await asyncio.wait_for(reader.read(4096), self.idle_close)
                else:
                    data = await reader.read(4096)
                if not data:
                    break
                self.bytes_in += len(data)
                for line in lines.feed(data):
                    self.lines_in.append(line)
                    self.arrivals.append(time.monotonic())
                    if waiting.qsize() or self._busy.get(writer):
                        self.overlapped += 1  # sent before the previous reply came back
                    waiting.put_nowait(line)
        except (ConnectionError, TimeoutError, OSError, asyncio.CancelledError):
            pass  # a handler cancelled at shutdown ends quietly
        finally:
            processor.cancel()
            self._busy.pop(writer, None)
            self._clients.discard(writer)
            if not writer.is_closing():
                writer.close()
            log.info("client %s gone (%d held)", peer, len(self._clients))
            with contextlib.suppress(OSError, RuntimeError, asyncio.CancelledError):
                await self._update_listening()

    async def _process(self, waiting: asyncio.Queue[bytes], writer: asyncio.StreamWriter) -> None:
        while True:
            line = await waiting.get()
            self._busy[writer] = True
            try:
                await self._command(line, writer)
            finally:
                self._busy[writer] = False

    async def _command(self, line: bytes, writer: asyncio.StreamWriter) -> None:
        if self.one_way or self.mute:
            return
        async with self._serial:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            if self.hold is not None:
                await self.hold.wait()  # a stalled controller, until the test lets it go
            outcome = self.model.handle_line(line)
            if outcome.error:
                log.debug("answered %s to %r: %s", outcome.reply, escape(line), outcome.error)
            await self.broadcast(outcome.events)
            if outcome.reply is not None and writer in self._clients and not self.one_way:
                self._write(writer, outcome.reply.encode("ascii") + self.model.line_end)
            with contextlib.suppress(ConnectionError):
                await writer.drain()


# ---------------------------------------------------------------------- building one


def build_model(
    loads: str = "",
    keypads: str = "",
    project: str = "",
    binds: Iterable[str] = (),
    monitoring: Monitoring | None = None,
) -> ControllerModel:
    """The model from the same configuration the transport reads (INI syntax or an export)."""
    load_specs: tuple[LoadSpec, ...] = parse_loads(loads) if loads else ()
    keypad_specs: tuple[KeypadSpec, ...] = parse_keypads(keypads) if keypads else ()
    actions: list[tuple[tuple[int, int, int], ButtonAction]] = []
    if project:
        export = read_project(project)
        load_specs += export.loads
        keypad_specs += export.keypads
        actions += export.actions
    by_name = {s.name: s for s in load_specs}
    pads = {k.name: k for k in keypad_specs}
    for bind in binds:  # entry.1=kitchen_pendant+hall[:on|off|toggle]
        target, _, rest = bind.partition("=")
        names, _, kind = rest.partition(":")
        pad_name, _, button = target.partition(".")
        pad = pads[pad_name]
        action = ButtonAction(kind or "toggle",  # type: ignore[arg-type]
                              tuple((by_name[n].address, 100) for n in names.split("+") if n))
        actions.append(((pad.master, pad.station, int(button)), action))
    return ControllerModel(load_specs, keypad_specs, actions, monitoring)


def _from_ini(path: str, section: str) -> tuple[str, str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    sect = parser[section]
    return sect.get("loads", ""), sect.get("keypads", ""), sect.get("project_file", "")


async def _activity(sim: QLinkControllerSimulator, press_every: float, garbage: float) -> None:
    """Demo life: someone presses a random button now and then; garbage if asked."""
    rng = random.Random(7)
    tick = min(x for x in (press_every, garbage) if x > 0)
    next_press, next_garbage = press_every, garbage
    while True:
        await asyncio.sleep(tick)
        next_press -= tick
        next_garbage -= tick
        pads = [p.spec.name for p in sim.model.keypads.values()]
        if press_every > 0 and next_press <= 1e-9 and pads:
            await sim.press(rng.choice(pads), rng.randint(1, 3))
            next_press = press_every
        if garbage > 0 and next_garbage <= 1e-9:
            await sim.inject_garbage()
            next_garbage = garbage


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m simulators.qlink_controller",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, action="append", help="TCP port (repeatable; 3040)")
    ap.add_argument("--limit", type=int, default=1, help="connections at once (1)")
    ap.add_argument("--latency", type=float, default=0.04, help="seconds per reply (0.04)")
    ap.add_argument("--loads", default="", help=f"name=con@m.e.mod.load,... ({DEMO_LOADS})")
    ap.add_argument("--keypads", default="", help=f"name=master.station,... ({DEMO_KEYPADS})")
    ap.add_argument("--project", default="", help="a QLink project export to load")
    ap.add_argument("--config", default="", help="read loads/keypads/project_file from an INI")
    ap.add_argument("--section", default="qlink", help="the INI section (qlink)")
    ap.add_argument("--bind", action="append", default=[],
                    help="keypad.button=load[+load][:on|off|toggle] (repeatable)")
    ap.add_argument("--monitoring", action="store_true", help="start with VOS/VOL/VOD enabled")
    ap.add_argument("--auto-press", type=float, default=0.0, help="press a button every N s")
    ap.add_argument("--garbage-every", type=float, default=0.0, help="a garbage line every N s")
    ap.add_argument("--idle-close", type=float, default=0.0, help="drop idle clients after N s")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    loads, keypads, project = args.loads, args.keypads, args.project
    if args.config:
        loads, keypads, project = _from_ini(args.config, args.section)
    if not (loads or keypads or project):
        loads, keypads = DEMO_LOADS, DEMO_KEYPADS
    monitoring = Monitoring(True, 0, True, 1) if args.monitoring else None
    model = build_model(loads, keypads, project, args.bind, monitoring)
    sim = QLinkControllerSimulator(model, args.port or [3040], host=args.host, limit=args.limit,
                                   latency=args.latency, idle_close=args.idle_close)

    async def life() -> None:
        await sim.start()
        log.info("QLink controller simulator on %s ports %s, limit %d, %d loads, %d keypads",
                 args.host, sim.ports, sim.limit, len(model.loads), len(model.keypads))
        if args.auto_press > 0 or args.garbage_every > 0:
            await _activity(sim, args.auto_press, args.garbage_every)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(life())


if __name__ == "__main__":
    main()
