"""A simulated OpenEVSE controller with an EV, on a PTY or a TCP port, for the demo and tests.

Run it::

    python -m simulators.rapi_device --mode tcp --tcp-port 8023 --http-port 8024
    python -m simulators.rapi_device --mode pty --pty-link /tmp/rapi_pty_0

or in-process: ``dev = RapiDevice(mode="tcp", tcp_port=0); await dev.start()`` (or
``dev.start_in_thread()``), then drive ``dev.model`` (plug, faults...) and ``await dev.stop()``.
Several can run at once. The RAPI side is ``simulators/rapi_responder.py`` (pure), the
controller and EV are ``simulators/evse_model.py`` and ``simulators/ev_model.py``; the HTTP
control interface is ``simulators/rapi_control.py``. See docs/simulators/rapi_device.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import threading
import tty
from collections.abc import Callable
from typing import Any, TypeVar

from protocols.rapi import RapiParser
from simulators.ev_model import EvModel
from simulators.evse_model import EvseModel
from simulators.rapi_responder import Quirks, RapiResponder
from simulators.serve import serve_until_signal, setup_logging

log = logging.getLogger("rapi_device")
T = TypeVar("T")


class RapiDevice:
    """One simulated controller behind one serial endpoint (``pty`` or ``tcp``).

    ``tcp_port`` 0 and ``http_port`` 0 take a free port (read them back after ``start()``);
    ``http_port`` None (the default in-process) runs no control interface.
    """

    def __init__(
        self,
        mode: str = "tcp",
        *,
        bind: str = "127.0.0.1",
        tcp_port: int = 8023,
        pty_link: str | None = None,
        http_port: int | None = None,
        model: EvseModel | None = None,
        quirks: Quirks | None = None,
        tick: float = 0.1,
        time_scale: float = 1.0,
        mcu_id: str = "0a1b2c3d4e5f",
        reply_delay: float = 0.0,
    ) -> None:
        if mode not in ("pty", "tcp"):
            raise ValueError(f"mode must be pty or tcp, not {mode!r}")
        self.mode = mode
        self.bind = bind
        self.tcp_port = tcp_port
        self.pty_link = pty_link
        self.http_port = http_port
        self.model = model or EvseModel()
        self.responder = RapiResponder(self.model, mcu_id, quirks or Quirks())
        self.tick = tick
        self.time_scale = time_scale
        self.reply_delay = reply_delay  # a slow controller (a real AVR answers in ~10-50 ms)
        self.pty_name = ""
        self.clients = 0  # TCP clients accepted so far
        self.dropped_writes = 0
        self._parser = RapiParser(require_checksum=False)
        self._master: int | None = None
        self._slave: int | None = None
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client_tasks: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._http: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.mode == "pty":
            self._open_pty()
        else:
            self._server = await asyncio.start_server(self._client, self.bind, self.tcp_port)
            self.tcp_port = self._server.sockets[0].getsockname()[1]
        self.responder.notifications()  # the current state is the baseline for $AT
        self._tasks.append(asyncio.create_task(self._ticker()))
        if self.http_port is not None:
            from simulators.rapi_control import start_http

            self._http, self.http_port = await start_http(self, self.bind, self.http_port)
        log.info("RAPI simulator on %s", self.endpoint)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._client_tasks:
            await asyncio.wait(self._client_tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._close_pty()

    @property
    def endpoint(self) -> str:
        if self.mode == "tcp":
            return f"socket://{self.bind}:{self.tcp_port}"
        return self.pty_link or self.pty_name

    def start_in_thread(self) -> RapiDevice:
        """Run on a private event loop in a daemon thread (for synchronous callers)."""
        ready = threading.Event()
        error: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except Exception as exc:  # noqa: BLE001 - reported to the caller below
                error.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="rapi-device", daemon=True)
        self._thread.start()
        ready.wait()
        if error:
            raise error[0]
        return self

    def stop_thread(self) -> None:
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the device's loop and return its result (thread-safe)."""
        if self._thread is None or self._loop is None:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- what tests and the control interface drive ------------------------------------------
    def plug(self) -> None:
        self.model.plug()
        self.notify()

    def unplug(self) -> None:
        self.model.unplug()
        self.notify()

    def inject_fault(self, name: str) -> None:
        self.model.inject_fault(name)
        self.notify()

    def clear_fault(self, name: str | None = None) -> None:
        self.model.clear_fault(name)
        self.notify()

    def notify(self) -> None:
        """Send ``$AT`` now if the state changed (instead of at the next tick)."""
        for line in self.responder.notifications():
            self.send(line)

    def send(self, data: bytes) -> None:
        """Write raw bytes to the connected client (also used to inject noise)."""
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)
        elif self._master is not None:
            try:
                os.write(self._master, data)
            except BlockingIOError:
                self.dropped_writes += 1  # nobody reads the PTY: like a cable to nowhere
            except OSError:
                self.dropped_writes += 1

    def snapshot(self) -> dict[str, Any]:
        m, ev = self.model, self.model.ev
        return {
            "endpoint": self.endpoint,
            "state": m.state,
            "pilot_state": m.pilot_state,
            "current_capacity": m.capacity_a,
            "plugged": ev.plugged,
            "draw_a": ev.draw_a,
            "power_w": round(ev.power_w, 1),
            "ev_max_rate": ev.max_rate_a,
            "soc": round(ev.soc, 4),
            "session_kwh": round(m.session_ws / 3.6e6, 4),
            "total_kwh": round(m.total_wh / 1000, 4),
            "temperature": m.temperature_c,
            "faults": sorted(m.faults),
            "heartbeat": {"interval": m.hb_interval, "amps": m.hb_amps, "trigger": m.hb_trigger},
            "commands": self.responder.commands,
            "bad_lines": self.responder.bad_lines,
        }

    # -- endpoints ------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: a serial cable, not a terminal
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_name = os.ttyname(slave)
        if self.pty_link:
            if os.path.islink(self.pty_link):
                os.unlink(self.pty_link)  # stale link from an earlier run
            elif os.path.exists(self.pty_link):
                self._close_pty()
                raise FileExistsError(f"{self.pty_link} exists and is not a symlink; not touching")
            os.symlink(self.pty_name, self.pty_link)
        assert self._loop is not None
        self._loop.add_reader(master, self._pty_readable)

    def _close_pty(self) -> None:
        if self._master is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._master)
        if self.pty_link and os.path.islink(self.pty_link):
            if os.readlink(self.pty_link) == self.pty_name:
                os.unlink(self.pty_link)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None

    def _pty_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self._received(data)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            log.info("a new client takes over from the previous one")
            self._writer.close()
        self._writer = writer
        self.clients += 1
        task = asyncio.current_task()
        if task is not None:
            self._client_tasks.add(task)
            task.add_done_callback(self._client_tasks.discard)
        self._parser.reset()
        try:
            while data := await reader.read(4096):
                self._received(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def _received(self, data: bytes) -> None:
        for event in self._parser.feed(data):
            for line in self.responder.handle(event):
                if self.reply_delay > 0 and self._loop is not None:
                    self._loop.call_later(self.reply_delay, self.send, line)
                else:
                    self.send(line)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            self.model.step((now - last) * self.time_scale)
            last = now
            self.notify()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.rapi_device", description="Simulated OpenEVSE RAPI controller"
    )
    p.add_argument("--mode", choices=("tcp", "pty"), default="tcp")
    p.add_argument("--bind", default="127.0.0.1", help="TCP and HTTP bind address")
    p.add_argument("--tcp-port", type=int, default=8023)
    p.add_argument("--pty-link", default=None, help="symlink to the PTY, e.g. /tmp/rapi_pty_0")
    p.add_argument("--http-port", type=int, default=8024, help="control interface; 0 = off")
    p.add_argument("--instance", type=int, default=0, help="adds N*100 to the TCP/HTTP ports")
    p.add_argument("--plugged", action="store_true", help="start with the EV plugged in")
    p.add_argument("--ev-max-rate", type=float, default=32.0, help="EV's max charging current A")
    p.add_argument("--soc", type=float, default=0.5, help="EV battery level 0..1")
    p.add_argument("--battery-kwh", type=float, default=60.0)
    p.add_argument("--max-current", type=int, default=32, help="configured max (ceiling) A")
    p.add_argument("--fault", action="append", default=[], help="inject a fault at start")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--mcu-id", default="0a1b2c3d4e5f", help="what $GI answers")
    p.add_argument("--no-seq-echo", action="store_true", help="ignore sequence ids")
    p.add_argument("--reply-delay", type=float, default=0.0,
                   help="seconds before each reply (a slow controller or line)")
    p.add_argument("--legacy", action="store_true", help="act as RAPI 4 (decimal $GS)")
    p.add_argument("--no-g0", action="store_true",
                   help="answer $G0 with $NK (older firmware, the OpenEVSE emulator)")
    p.add_argument("--log-level", default="INFO")
    return p


async def _serve(args: argparse.Namespace) -> None:
    ev = EvModel(battery_kwh=args.battery_kwh, soc=args.soc, max_rate_a=args.ev_max_rate)
    model = EvseModel(ev=ev, configured_max_a=args.max_current, capacity_a=args.max_current)
    model.saved_capacity_a = args.max_current
    if args.plugged:
        model.plug()
    for fault in args.fault:
        model.inject_fault(fault)
    offset = args.instance * 100
    device = RapiDevice(
        mode=args.mode,
        bind=args.bind,
        tcp_port=args.tcp_port + offset,
        pty_link=args.pty_link,
        http_port=(args.http_port + offset) if args.http_port else None,
        model=model,
        quirks=Quirks(echo_seq=not args.no_seq_echo, legacy=args.legacy, no_g0=args.no_g0),
        time_scale=args.time_scale,
        mcu_id=args.mcu_id,
        reply_delay=args.reply_delay,
    )
    def ready() -> str:
        extra = f" (pty {device.pty_name})" if args.mode == "pty" else ""
        http = f", control http://{args.bind}:{device.http_port}/" if device.http_port else ""
        return f"rapi_device ready: {device.endpoint}{extra}{http}"

    await serve_until_signal(device.start, device.stop, ready)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
