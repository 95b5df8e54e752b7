"""The gateway as a *member* of an OpenEVSE controller's group.

An OpenEVSE controller (firmware branch ``jeremypoulter/issue940``) adds a node with a reciprocal
``POST /loadsharing/peers``, reads its identity with ``GET /config``, pushes the group keys with
``POST /config`` (``loadsharing_role: member``, ``loadsharing_controller_host``), polls
``/status``, follows ``/ws`` and sends ``{"loadsharing": {"target_current": A, "reason": ...}}``
frames into it every 5 s. :class:`MemberState` is that contract as plain state (no I/O, the clock
passed in), so the rules can be tested without sockets; :class:`OpenEvseMemberNode` serves it on
HTTP with :class:`~transports.loadsharing.http_api.HttpApi` and turns the limit into charger
commands (the Charger capability, ``transports/charger.py``: set limit, pause, resume), with
supervision so that a dead gateway still leaves the charger at the safe current.

Safety: the controller may count this node at its failsafe reserve once it stops hearing it for
``heartbeat_timeout`` plus a margin; that is only safe because this node, with no frame for
``heartbeat_timeout`` (or none since it became a member), falls back to the safe current (0 in
``disable`` mode) on its own. Decreases are applied the moment the frame arrives.

Size: a little over the ~400-line guide: the member's rules (``MemberState``, pure) and the
node serving them are kept side by side because each REST answer is one rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from transports.charger import ChargerStatus, Pause, Pulse, Resume, SetLimit, Supervise, command
from transports.loadsharing import group_keys as gk
from transports.loadsharing.auth import GroupAuth
from transports.loadsharing.demand import wire_state
from transports.loadsharing.http_api import HttpApi
from transports.loadsharing.settings import MSG_READ_ONLY as READ_ONLY_MSG

#: the group keys a controller pushes; a member stores them and shows them in ``GET /config``
GROUP_KEYS = (
    "loadsharing_enabled", *gk.KEYS, "loadsharing_role", "loadsharing_controller_host",
    "loadsharing_rotation_interval",
)


def validate(cfg: dict[str, Any]) -> str | None:
    """OpenEVSE's messages (``web_server_config.cpp``), first failing rule, else None (a member
    takes any reserve: its controller allocates)."""
    return gk.check(cfg, cross=False)


def host_ip(host: str) -> str:
    """``"127.0.0.1:8080"`` -> ``"127.0.0.1"``; ``"[::1]:80"`` -> ``"::1"``."""
    h = host.strip()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


@dataclass
class MemberState:
    """What a member knows and decides. Times are ``time.monotonic()`` values passed in."""

    hostname: str
    serial: str
    min_current: int = 6
    max_current: int = 32
    priority: int = 0
    charger_min: int = 6
    config: dict[str, Any] = field(default_factory=lambda: {
        "loadsharing_enabled": False, **gk.GroupKeys().wire(),
        "loadsharing_role": "", "loadsharing_controller_host": "",
        "loadsharing_rotation_interval": 1800,
    })
    peers: list[str] = field(default_factory=list)
    became_member: float | None = None
    last_frame: float | None = None
    target: float | None = None
    reason: str = ""
    frames: int = 0
    refused_frames: int = 0
    config_version: int = 1

    @property
    def is_member(self) -> bool:
        return self.config["loadsharing_role"] == "member"

    @property
    def controller_host(self) -> str:
        return str(self.config["loadsharing_controller_host"])

    @property
    def timeout(self) -> float:
        return float(self.config["loadsharing_heartbeat_timeout"])

    # -- REST -------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "wifi_serial": self.serial.upper(),
                "firmware": "protocol-gateway", "version": "pgw",
                "min_current_hard": self.charger_min, "max_current_hard": self.max_current,
                "max_current_soft": self.max_current, **self.config}

    def post_config(self, body: dict[str, Any], now: float) -> tuple[int, dict[str, Any]]:
        """The controller's push (role ``member``) or reset (role ``""``); 403 otherwise."""
        ls_keys = {k for k in body if k.startswith("loadsharing_")}
        if self.is_member and ls_keys and body.get("loadsharing_role") not in ("member", ""):
            return 403, {"msg": READ_ONLY_MSG}
        merged = {**self.config, **{k: body[k] for k in ls_keys if k in self.config}}
        why = validate(merged)
        if why is not None:
            return 400, {"msg": why}
        if merged["loadsharing_role"] not in ("", "member"):
            return 400, {"msg": "loadsharing_role must be '', 'member' or 'controller'"}
        if merged == self.config:
            return 200, {"config_version": self.config_version, "msg": "no change"}
        was_member = self.is_member
        self.config = merged
        self.config_version += 1
        if self.is_member and not was_member:
            self.became_member, self.last_frame = now, None
        elif not self.is_member:
            self.became_member, self.last_frame, self.target, self.reason = None, None, None, ""
            self.config["loadsharing_enabled"] = bool(merged["loadsharing_enabled"])
        return 200, {"config_version": self.config_version, "msg": "done"}

    def add_peer(self, host: str, own_hosts: tuple[str, ...]) -> tuple[int, str]:
        """Idempotent: the controller's reciprocal add may come again (``already in group``)."""
        if not host:
            return 400, "Host cannot be empty"
        if host in own_hosts:
            return 400, "Cannot add local device as peer"
        if "." not in host and ":" not in host:
            return 400, "Invalid host format - must contain domain or IP"
        if host in self.peers or (host == self.controller_host and self.is_member):
            return 200, "already in group"
        if self.is_member:
            return 403, READ_ONLY_MSG
        self.peers.append(host)
        return 200, "done"

    def delete_peer(self, host: str) -> tuple[int, str]:
        if self.is_member:
            return 403, READ_ONLY_MSG
        if host not in self.peers:
            return 404, "Peer not found"
        self.peers.remove(host)
        return 200, "done"

    # -- frames -----------------------------------------------------------------------------
    def frame(self, frame: dict[str, Any], peer_ip: str, now: float) -> str | None:
        """Take an allocation frame; None when applied, else why it was refused (for the log)."""
        body = frame.get("loadsharing")
        if not isinstance(body, dict):
            return "no 'loadsharing' object"
        if not self.is_member:
            return "not a member"
        ctl = host_ip(self.controller_host)
        if ctl and _is_ip(ctl) and peer_ip and peer_ip != ctl:
            self.refused_frames += 1
            return f"from {peer_ip}, not from the controller {ctl}"
        try:
            target = float(body["target_current"])
        except (KeyError, TypeError, ValueError):
            return f"bad target_current in {body!r}"
        if not math.isfinite(target) or target < 0:
            return f"bad target_current {target!r}"
        self.target, self.reason = target, str(body.get("reason", ""))
        self.last_frame = now
        self.frames += 1
        return None

    def failsafe(self, now: float) -> bool:
        """OpenEVSE's rule: no controller, no frame since joining, or none for the timeout."""
        if not self.is_member:
            return False
        if not self.controller_host or self.last_frame is None:
            return True
        return now - self.last_frame > self.timeout

    def limit(self, now: float) -> tuple[int | None, str]:
        """The charger limit in whole amps (0 = pause), None = no limit (not a member)."""
        if not self.is_member:
            return None, ""
        if self.failsafe(now):
            if self.config["loadsharing_failsafe_mode"] == "disable":
                return 0, "failsafe_disabled"
            amps = int(float(self.config["loadsharing_failsafe_safe_current"]))
            return (amps if amps >= self.charger_min else 0), "failsafe"
        assert self.target is not None
        if self.reason == "failsafe_disabled":
            return 0, self.reason
        amps = min(int(self.target), self.max_current)
        return (amps if amps >= self.charger_min else 0), self.reason

    def status_fields(self) -> dict[str, Any]:
        return {"loadsharing_min_current": self.min_current,
                "loadsharing_max_current": self.max_current,
                "loadsharing_priority": self.priority,
                "loadsharing_joined_peers": list(self.peers)}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


Command = Callable[[dict[str, Any]], Awaitable[None]]


class OpenEvseMemberNode:
    """A :class:`~transports.loadsharing.http_api.Service` playing an OpenEVSE member.

    ``command`` receives charger command payloads (what the loadsharing transport emits to its
    charger section); ``charger_reading`` takes that section's status.
    """

    def __init__(self, state: MemberState, command: Command, *, listen_port: int = 0,
                 listen_host: str = "127.0.0.1", advertised: str = "",
                 charger_heartbeat: int = 0, keepalive: float = 2.0,
                 log: logging.Logger | None = None, auth: GroupAuth | None = None) -> None:
        self.state = state
        self.command = command
        self.port = listen_port
        self.listen_host = listen_host
        self.advertised = advertised  # how the controller reaches us (default: listen address)
        self.charger_heartbeat = charger_heartbeat
        self.keepalive = keepalive
        self.log = log or logging.getLogger("loadsharing.openevse_member")
        # an OpenEVSE controller sends no credentials: open unless the caller says otherwise
        self.auth = auth if auth is not None else GroupAuth(open_mode=True)
        self.api = HttpApi(self, self.log)
        self.started = time.monotonic()
        self.charger: dict[str, Any] = {"amp": 0, "voltage": 240, "pilot": 0, "state": 0,
                                        "vehicle": 0}
        self.sent: int | None = None  # the limit last sent to the charger
        self.paused = False
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._charger_seen = asyncio.Event()

    @property
    def host(self) -> str:
        return self.advertised or f"{self.listen_host}:{self.port}"

    async def start(self) -> None:
        await self.api.start(self.listen_host, self.port)
        if self.port == 0:
            self.port = self.api.bound_port()
        if self.charger_heartbeat > 0:
            self._tasks.append(asyncio.create_task(self._pulse()))
        self._tasks.append(asyncio.create_task(self._loop()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.api.stop()

    # -- the charger ------------------------------------------------------------------------
    def charger_reading(self, status: ChargerStatus) -> None:
        """The charger's status (the Charger capability, ``transports/charger.py``)."""
        self.charger_shown({"amp": status.measured_current or 0.0,
                            "voltage": status.voltage or 0.0,
                            "pilot": status.offered_current or 0.0,
                            "state": wire_state(status),
                            "vehicle": 1 if status.vehicle_connected else 0})

    def charger_shown(self, shown: dict[str, Any]) -> None:
        """The charger as OpenEVSE's wire shows it (``amp`` in A, as the transport keeps it)."""
        self.charger.update({"amp": round(float(shown.get("amp", 0.0)) * 1000),
                             "voltage": shown.get("voltage", 0.0),
                             "pilot": shown.get("pilot", 0.0), "state": shown.get("state", 0),
                             "vehicle": shown.get("vehicle", 0)})
        self._charger_seen.set()
        self.api.hub.publish(self.status())

    async def _command(self, data: dict[str, Any]) -> None:
        await self.command({**data, "request_id": f"ls-member-{next(self._ids)}"})

    async def _apply(self, amps: int) -> None:
        if amps == 0:
            await self._command(command(Pause()))
            self.paused = True
        else:
            await self._command(command(SetLimit(amps)))
            if self.paused or self.sent is None:
                await self._command(command(Resume()))
                self.paused = False
        self.sent = amps

    async def _loop(self) -> None:
        """Re-evaluate on every frame (decreases at once) and twice a second (the failsafe)."""
        last_keepalive = time.monotonic()
        logged_failsafe = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            amps, reason = self.state.limit(now)
            fs = self.state.failsafe(now)
            if fs != logged_failsafe:
                logged_failsafe = fs
                if fs:
                    self.log.warning("member failsafe: no allocation from %s for %.0f s",
                                     self.state.controller_host or "(no controller)",
                                     self.state.timeout)
                else:
                    self.log.info("member failsafe cleared by a frame from the controller")
            if amps is None and self.sent is not None:
                # left the group (the controller's reset): the failsafe current, never the
                # charger's own maximum (nobody stands behind a higher value any more)
                safe = int(float(self.state.config["loadsharing_failsafe_safe_current"]))
                self.log.info("left the group: charger at the failsafe current %d A", safe)
                await self._apply(safe if safe >= self.state.charger_min else 0)
                self.sent = None
            if amps is not None and amps != self.sent:
                self.log.debug("charger limit %s A (%s)", amps, reason)
                await self._apply(amps)
            if now - last_keepalive >= self.keepalive:
                # OpenEVSE takes a node that sends no JSON text for the timeout for offline
                last_keepalive = now
                self.api.hub.send({"amp": self.charger["amp"],
                                   "voltage": self.charger["voltage"],
                                   "uptime": int(now - self.started)})

    async def _pulse(self) -> None:
        """Supervision: configured once the charger answers, then pulsed; the charger section
        re-configures it after a reconnect or a controller boot."""
        await self._charger_seen.wait()
        safe = int(float(self.state.config["loadsharing_failsafe_safe_current"]))
        await self._command(command(Supervise(self.charger_heartbeat, safe)))
        every = max(1.0, self.charger_heartbeat / 3)
        while True:
            await asyncio.sleep(every)
            await self._command(command(Pulse()))

    # -- Service ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        c = self.charger
        st = int(c["state"])
        return {"amp": c["amp"], "voltage": c["voltage"], "pilot": c["pilot"], "state": st,
                "vehicle": c["vehicle"], "status": "disabled" if st in (254, 255) else "active",
                "max_current": self.state.max_current, "config_version": self.state.config_version,
                **self.state.status_fields()}

    def config_view(self) -> dict[str, Any]:
        return self.state.identity()

    async def post_config(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        code, answer = self.state.post_config(body, time.monotonic())
        if code == 200 and answer.get("msg") == "done":
            self.log.info("group config from %s: role %r", self.state.controller_host or "?",
                          self.state.config["loadsharing_role"])
            self._wake.set()
        return code, answer

    def peers_list(self) -> list[dict[str, Any]]:
        me = {"id": self.state.serial, "name": self.state.hostname, "host": self.host,
              "url": f"http://{self.host}", "ip": "127.0.0.1", "online": True,
              "joined": True, "isLocal": True}
        return [me] + [{"id": h, "name": h, "host": h, "url": f"http://{h}", "ip": host_ip(h),
                        "online": True, "joined": True, "isLocal": False}
                       for h in self.state.peers]

    async def add_peer(self, host: str, reciprocal: bool) -> tuple[int, str]:
        return self.state.add_peer(host, (self.host, self.state.hostname))

    async def delete_peer(self, host: str) -> tuple[int, str]:
        return self.state.delete_peer(host)

    def discover(self) -> None:
        return None

    def ls_status(self) -> dict[str, Any]:
        now = time.monotonic()
        amps, reason = self.state.limit(now)
        return {"enabled": bool(self.state.config["loadsharing_enabled"]),
                "group_id": self.state.config["loadsharing_group_id"],
                "role": self.state.config["loadsharing_role"],
                "controller_host": self.state.controller_host,
                "failsafe_active": self.state.failsafe(now), "online_count": 1,
                "offline_count": 0, "peers": [],
                "allocations": [] if amps is None else
                [{"id": self.state.hostname, "target_current": amps, "reason": reason}]}

    def ws_frame(self, frame: dict[str, Any], peer: str) -> None:
        if "loadsharing" not in frame:
            return
        why = self.state.frame(frame, peer, time.monotonic())
        if why is not None:
            self.log.warning("allocation frame refused (%s): %r", why, frame)
        else:
            self._wake.set()
