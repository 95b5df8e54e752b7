"""Load-sharing sites for tests and the bench: a RAPI simulator plus a gateway, on loopback.

A :class:`Site` is one charger: ``python -m simulators.rapi_device`` (TCP + HTTP control) and
``python protocol_gateway.py`` with a ``rapi_serial`` section bridged both ways with a
``loadsharing`` section whose node listens on its own port. :class:`CutProxy` stands between
the group and one node (its member address), so a test can cut that node off and heal it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.message import Envelope
from pytests.gateway_proc import GatewayProcess
from pytests.helpers import free_port, wait_for
from transports.rapi_charger import charger_status

ROOT = Path(__file__).resolve().parent.parent
# gateways started from here import this checkout, even where another copy is pip-installed
# (a gateway's children don't inherit the script's directory on sys.path)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)])
KIND = os.environ.get("PGW_LS_KIND", "loadsharing")


def charger_event(source: str, rapi_reading: dict[str, Any]) -> Envelope:
    """What a ``rapi_serial`` section with that reading tells its owner (the Charger status)."""
    return Envelope(source, "event", charger_status(rapi_reading).event())


def http(method: str, url: str, body: Any = None, timeout: float = 5.0,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def try_http(method: str, url: str, body: Any = None) -> tuple[int, Any] | None:
    try:
        return http(method, url, body)
    except (OSError, ValueError):
        return None


class Site:
    def __init__(self, tmp: Path, *, group_max: float, plugged: bool = True,
                 extra: str = "", node_port: int | None = None) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.sim_port, self.sim_http = free_port(), free_port()
        self.node_port = node_port or free_port()
        self.group_max = group_max
        self.plugged = plugged
        self.extra = extra
        self.member = f"127.0.0.1:{self.node_port}"  # how peers reach it (a proxy may differ)
        self.sim: subprocess.Popen[bytes] | None = None
        self.gw: GatewayProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node_port}"

    def start_sim(self) -> None:
        args = [sys.executable, "-m", "simulators.rapi_device", "--mode", "tcp",
                "--tcp-port", str(self.sim_port), "--http-port", str(self.sim_http)]
        if self.plugged:
            args.append("--plugged")
        self.sim = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)

    def sections(self) -> str:
        host = "" if self.member == f"127.0.0.1:{self.node_port}" else \
            f"node_host = {self.member}\n"
        return (
            "[openevse]\ntransport = rapi_serial\n"
            f"port = socket://127.0.0.1:{self.sim_port}\nread_interval = 1\n"
            "bridge = loadsharing\n\n"
            f"[loadsharing]\ntransport = {KIND}\ncharger = openevse\n"
            "loadsharing_enabled = true\n"
            f"loadsharing_group_max_current = {self.group_max}\n"
            "loadsharing_heartbeat_timeout = 5\nloadsharing_response_time = 0.5\n"
            f"node_listen = 127.0.0.1:{self.node_port}\n{host}discovery = false\n"
            "loadsharing_api_open = true\n"
            f"{self.extra}\n"
        )

    def start_gateway(self) -> None:
        gw_dir = self.tmp / "gw"
        gw_dir.mkdir(exist_ok=True)
        self.gw = GatewayProcess(gw_dir, self.sections(), "log_level = INFO\n")

    def start(self) -> None:
        self.start_sim()
        self.start_gateway()

    def wait_up(self, timeout: float = 60.0) -> None:
        try:
            wait_for(lambda: try_http("GET", f"{self.url}/status"), timeout, 0.1)
        except AssertionError:
            alive = self.sim is not None and self.sim.poll() is None
            raise AssertionError(f"node {self.url} not up (simulator alive: {alive}); gateway "
                                 f"log:\n{self.log_text()[-3000:]}") from None

    def sim_state(self) -> dict[str, Any]:
        return http("GET", f"http://127.0.0.1:{self.sim_http}/state")[1]

    def sim_post(self, path: str) -> None:
        http("POST", f"http://127.0.0.1:{self.sim_http}/{path}")

    def capacity(self) -> int | None:
        try:
            return int(self.sim_state()["current_capacity"])
        except (OSError, KeyError, ValueError):
            return None

    def ls(self) -> dict[str, Any]:
        return http("GET", f"{self.url}/loadsharing/status")[1]

    def kill_gateway(self) -> None:
        assert self.gw is not None
        self.gw.proc.kill()
        self.gw.proc.wait()
        self.gw._log.close()

    def stop(self) -> None:
        if self.gw is not None:
            with contextlib.suppress(Exception):
                self.gw.stop(15)
        if self.sim is not None:
            self.sim.terminate()
            try:
                self.sim.wait(10)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.sim.wait()

    def log_text(self) -> str:
        return self.gw.log_text() if self.gw is not None else ""


class CutProxy:
    """A TCP forwarder on its own thread and loop; ``cut()`` drops every link and refuses new."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.open = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, w2}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))
        self._writers -= {writer, w2}

    def _close_all(self) -> None:
        for w in list(self._writers):
            w.close()

    def cut(self) -> None:
        self.open = False
        self._loop.call_soon_threadsafe(self._close_all)

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def form_group(sites: list[Site]) -> None:
    """Add every other member on the first node, through the REST API."""
    for s in sites[1:]:
        code, body = http("POST", f"{sites[0].url}/loadsharing/peers", {"host": s.member})
        assert (code, body) == (200, {"msg": "done"}), (code, body)


def wait_capacities(sites: list[Site], amps: list[int], timeout: float = 60.0) -> None:
    def ok() -> bool:
        return [s.capacity() for s in sites] == amps

    start = time.monotonic()
    try:
        wait_for(ok, timeout, 0.2)
        print(f"capacities {amps} after {time.monotonic() - start:.1f} s", flush=True)
    except AssertionError:
        shown = [(s.member, s.capacity(), try_http("GET", f"{s.url}/loadsharing/status"))
                 for s in sites]
        raise AssertionError(f"capacities not {amps}: {shown}") from None


def cleanup(sites: list[Site]) -> None:
    for s in sites:
        s.stop()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
