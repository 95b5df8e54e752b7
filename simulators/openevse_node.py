"""A simulated OpenEVSE WiFi node (REST, ``/ws``, load sharing, mDNS) with its charger and EV.

It behaves like the real firmware (branch ``jeremypoulter/issue940``, see
/work/shared/design/LOADSHARING.md and docs/simulators/openevse_node.md), not like our gateway,
so the gateway's load-sharing node can be tested against it. Run it::

    python -m simulators.openevse_node --http-port 8080 --role controller --group-max 32 \
        --plugged --peer 127.0.0.1:8081

or in-process (several nodes in one event loop)::

    node = OpenEvseNode(http_port=0, role="controller", group_max=32, plugged=True)
    await node.start()          # node.host is "127.0.0.1:<port>"
    ...
    await node.stop()

Parts: the HTTP routes and the status document are ``simulators/openevse_api.py``; the peer
poller, the controller's allocation tick and config push are ``simulators/openevse_peers.py``;
the firmware's rules (allocation, validation, member failsafe) are
``simulators/openevse_loadsharing.py`` (pure); mDNS is ``simulators/openevse_mdns.py``; the
charger and EV are ``simulators/evse_model.py`` and ``simulators/ev_model.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

from aiohttp import web

from simulators import openevse_loadsharing as ls
from simulators.ev_model import EvModel
from simulators.evse_model import SLEEPING, EvseModel
from simulators.serve import serve_until_signal, setup_logging

log = logging.getLogger("openevse_node")

FIRMWARE_VERSION = "5.1.0-loadsharing-sim"
BUILD = "openevse_wifi_v1"


class OpenEvseNode:
    """One simulated OpenEVSE WiFi module with its controller and EV.

    ``http_port`` 0 takes a free port (read ``http_port``/``host`` after ``start()``).
    ``tick`` is the charger step; ``idle_push`` the seconds between keep-alive ``/ws`` texts
    while not charging (0 = silent while idle; charging always pushes once a second).
    """

    def __init__(
        self,
        *,
        http_port: int = 0,
        hostname: str | None = None,
        role: str = "",
        group_max: float = 0.0,
        plugged: bool = False,
        peers: list[str] | None = None,
        heartbeat_timeout: int = 30,
        priority: int = 0,
        model: EvseModel | None = None,
        serial: str | None = None,
        mdns: bool = False,
        keep_awake: bool = False,
        rotation_interval: int = 1800,
        tick: float = 0.1,
        idle_push: float = 5.0,
        alloc_interval: float = 5.0,
    ) -> None:
        self.http_port = http_port
        self.serial = (serial or os.urandom(6).hex()).lower()
        self._hostname = hostname
        self.model = model or EvseModel(ev=EvModel())
        if plugged:
            self.model.plug()
        self.config: dict[str, Any] = dict(ls.DEFAULT_CONFIG)
        self.config["loadsharing_heartbeat_timeout"] = heartbeat_timeout
        self.config["loadsharing_priority"] = priority
        self.config["loadsharing_rotation_interval"] = rotation_interval
        if group_max:
            self.config["loadsharing_group_max_current"] = float(group_max)
        if role:
            self.config["loadsharing_role"] = role
            self.config["loadsharing_enabled"] = True
        self.config_version = 1
        self.group_peers: list[str] = list(peers or [])
        self.mdns = mdns
        self.keep_awake = keep_awake
        self.tick = tick
        self.idle_push = idle_push
        self.alloc_interval = alloc_interval
        self.started = time.monotonic()
        # the load-sharing limit on the charger ("the shaper"): None = no limit
        self.limit: float | None = None
        self.limit_reason = ""
        self.shaper_sleep = False
        self.failsafe_applied = False
        self.became_member: float | None = time.monotonic() if role == "member" else None
        self.last_frame: float | None = None
        self.frames: list[dict[str, Any]] = []  # allocation frames received (newest last)
        self.config_posts: list[dict[str, Any]] = []  # bodies of POST /config received
        self.ws_clients: set[web.WebSocketResponse] = set()
        self._last_sent: dict[str, Any] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._zeroconf: Any = None
        from simulators.openevse_peers import PeerPoller

        self.poller = PeerPoller(self)

    # -- identity -------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """How peers reach this node, and the name it gives itself on the wire."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def hostname(self) -> str:
        return self._hostname or f"openevse-{self.serial[-4:]}"

    def is_local(self, host: str) -> bool:
        names = {self.host, f"localhost:{self.http_port}", self.hostname, f"{self.hostname}.local"}
        return host.strip().lower() in {n.lower() for n in names}

    @property
    def role(self) -> str:
        return str(self.config["loadsharing_role"])

    @property
    def is_member(self) -> bool:
        return self.role == "member"

    @property
    def is_controller(self) -> bool:
        return self.role == "controller" and bool(self.config["loadsharing_enabled"])

    def uptime(self) -> float:
        return time.monotonic() - self.started

    # -- life -----------------------------------------------------------------------------------
    async def start(self) -> None:
        from simulators.openevse_api import build_app

        app = build_app(self)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.http_port)
        await site.start()
        server: Any = site._server  # the only way to learn the port bound for port 0
        if server is not None and server.sockets:
            self.http_port = int(server.sockets[0].getsockname()[1])
        self._last_sent = self.status()
        self._tasks.append(asyncio.create_task(self._ticker()))
        self.poller.start()
        if self.mdns:
            from simulators.openevse_mdns import advertise

            self._zeroconf = await advertise(self.hostname, self.serial, self.http_port)
        log.info("OpenEVSE node %s on http://%s (role %r)", self.hostname, self.host, self.role)

    async def stop(self) -> None:
        await self.poller.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for ws in list(self.ws_clients):
            with contextlib.suppress(Exception):
                await ws.close()
        if self._zeroconf is not None:
            with contextlib.suppress(Exception):
                await self._zeroconf.async_unregister_all_services()
                await self._zeroconf.async_close()
            self._zeroconf = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def spawn(self, coro: Any) -> None:
        """Fire and forget (like the firmware's async HTTP client), cancelled on stop."""
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    # -- what tests and the control endpoints drive -----------------------------------------------
    def plug(self) -> None:
        self.model.plug()
        self.push_changes()

    def unplug(self) -> None:
        self.model.unplug()
        self.push_changes()

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``GET /status`` and the ``/ws`` document (OpenEVSE units: amp mA, voltage V, pilot A)."""
        from simulators.openevse_api import status_document

        return status_document(self)

    def broadcast(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        for ws in list(self.ws_clients):
            if ws.closed:
                self.ws_clients.discard(ws)
                continue
            task = asyncio.ensure_future(ws.send_str(text))
            task.add_done_callback(_ignore_result)

    def push_changes(self) -> None:
        """Send the keys whose values changed since the last push (the firmware's deltas)."""
        now = self.status()
        delta = {k: v for k, v in now.items() if self._last_sent.get(k) != v}
        for key in ("amp", "power", "elapsed", "session_energy", "total_energy", "temp"):
            delta.pop(key, None)  # these go out with the periodic push
        self._last_sent.update({k: now[k] for k in delta})
        if delta:
            self.broadcast(delta)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        last_push = last
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            self.model.step(now - last)
            last = now
            self.member_check()
            self.push_changes()
            charging = self.model.state == ls.CHARGING
            every = 1.0 if charging else self.idle_push
            if every > 0 and now - last_push >= every:
                last_push = now
                st = self.status()
                keys = (
                    ("amp", "voltage", "power") if charging else ("amp", "voltage", "power", "temp")
                )
                self._last_sent.update({k: st[k] for k in keys})
                self.broadcast({k: st[k] for k in keys})

    # -- the shaper: a load-sharing limit on the charger ----------------------------------------
    def apply_limit(self, target: float, reason: str, force_disabled: bool = False) -> None:
        self.limit, self.limit_reason = target, reason
        amps = ls.charger_limit(target, force_disabled, self.model.min_a)
        if amps is None:
            if self.model.mode == 0:
                self.model.sleep()
                self.shaper_sleep = True
        else:
            if self.shaper_sleep and self.model.mode == SLEEPING:
                self.model.enable()
            self.shaper_sleep = False
            self.model.set_current(amps, "volatile")
        self.push_changes()

    def clear_limit(self) -> None:
        self.limit, self.limit_reason = None, ""
        if self.shaper_sleep and self.model.mode == SLEEPING:
            self.model.enable()
        self.shaper_sleep = False
        self.model.set_current(self.model.configured_max_a, "volatile")
        self.push_changes()

    # -- member ---------------------------------------------------------------------------------
    def on_frame(self, frame: dict[str, Any]) -> None:
        """An allocation frame from any ``/ws`` client: a member applies it."""
        if not self.is_member:
            return
        try:
            target = float(frame["target_current"])
        except (KeyError, TypeError, ValueError):
            log.warning("bad allocation frame %r", frame)
            return
        reason = str(frame.get("reason", ""))
        self.frames.append({"target_current": target, "reason": reason})
        del self.frames[:-50]
        self.last_frame = time.monotonic()
        if self.failsafe_applied:
            log.info("%s: member failsafe cleared by a frame", self.hostname)
        self.failsafe_applied = False
        self.apply_limit(target, reason, force_disabled=reason == "failsafe_disabled")

    @property
    def member_failsafe(self) -> bool:
        if not self.is_member:
            return False
        frame = self.last_frame
        if frame is not None and self.became_member is not None and frame < self.became_member:
            frame = None
        return ls.member_failsafe(
            str(self.config["loadsharing_controller_host"]),
            frame,
            time.monotonic(),
            float(self.config["loadsharing_heartbeat_timeout"]),
        )

    def member_check(self) -> None:
        """Engage the failsafe limit once, like ``checkMemberFailsafe`` on the poller loop."""
        if not self.member_failsafe or self.failsafe_applied:
            return
        self.failsafe_applied = True
        safe = float(self.config["loadsharing_failsafe_safe_current"])
        if self.config["loadsharing_failsafe_mode"] == "disable" or safe <= 0:
            self.apply_limit(0.0, "failsafe", force_disabled=True)
        else:
            self.apply_limit(safe, "failsafe")
        log.info("%s: member failsafe engaged", self.hostname)

    def set_role(self, role: str) -> None:
        """Role transitions after a validated ``POST /config``."""
        if role == "member":
            self.became_member = time.monotonic()
            self.failsafe_applied = False
        elif role == "":
            self.became_member = None
            self.failsafe_applied = False
            self.clear_limit()


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # a client that went away: nothing to do


# -- command line ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators.openevse_node", description="Simulated OpenEVSE WiFi node"
    )
    p.add_argument("--http-port", type=int, default=8080, help="REST and /ws port on 127.0.0.1")
    p.add_argument("--hostname", default=None, help="device name (default openevse-XXXX)")
    p.add_argument("--role", choices=("controller", "member", ""), default="")
    p.add_argument("--group-max", type=float, default=0.0, help="loadsharing_group_max_current A")
    p.add_argument("--peer", action="append", default=[], help="group member host:port (repeat)")
    p.add_argument("--heartbeat-timeout", type=int, default=30, help="seconds, 5..600")
    p.add_argument("--priority", type=int, default=0, help="loadsharing_priority (lower wins)")
    p.add_argument("--plugged", action="store_true", help="start with the EV plugged in")
    p.add_argument("--ev-max-rate", type=float, default=32.0, help="EV's max charging current A")
    p.add_argument("--soc", type=float, default=0.5, help="EV battery level 0..1")
    p.add_argument("--max-current", type=int, default=32, help="charger's configured max A")
    p.add_argument("--serial", default=None, help="device id (hex), TXT id and wifi_serial")
    p.add_argument(
        "--keep-awake",
        action="store_true",
        help="later firmware: offer idle members their minimum instead of 0 A",
    )
    p.add_argument(
        "--idle-push",
        type=float,
        default=5.0,
        help="seconds between /ws keep-alive texts while idle; 0 = silent",
    )
    p.add_argument("--mdns", action="store_true", help="advertise _openevse._tcp on loopback")
    p.add_argument("--log-level", default="INFO")
    return p


def node_from_args(args: argparse.Namespace) -> OpenEvseNode:
    ev = EvModel(soc=args.soc, max_rate_a=args.ev_max_rate)
    model = EvseModel(ev=ev, configured_max_a=args.max_current, capacity_a=args.max_current)
    model.saved_capacity_a = args.max_current
    return OpenEvseNode(
        http_port=args.http_port,
        hostname=args.hostname,
        role=args.role,
        group_max=args.group_max,
        plugged=args.plugged,
        peers=args.peer,
        heartbeat_timeout=args.heartbeat_timeout,
        priority=args.priority,
        model=model,
        serial=args.serial,
        mdns=args.mdns,
        keep_awake=args.keep_awake,
        idle_push=args.idle_push,
    )


async def _serve(args: argparse.Namespace) -> None:
    node = node_from_args(args)
    await serve_until_signal(
        node.start, node.stop,
        lambda: f"openevse_node ready: http://{node.host}/ ({node.hostname}, role {node.role!r})")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
