"""The node on the network: members, peer clients, config sync and discovery around the Node.

:class:`NetworkNode` is the :class:`~transports.loadsharing.node.PeerLink` of a node with
``node_listen`` set and the :class:`~transports.loadsharing.http_api.Service` behind its REST API.
Reports go out on ``/ws`` to every client (an OpenEVSE poller ignores the extra key); each
member's reports come in through a :class:`PeerClient` and reach :meth:`Node.receive` as they
arrive, so a demand change anywhere moves every charger within one message (the transport's
periodic tick is only the safety net). REST answers are in ``rest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from gateway.backoff import Backoff
from gateway.instance import default_base_name, mdns_name, offset_port
from gateway.reconnect import retry
from transports.loadsharing import config_sync as cs
from transports.loadsharing.auth import auth_from
from transports.loadsharing.charger_driver import ChargerDriver
from transports.loadsharing.discovery import Discovery
from transports.loadsharing.group_keys import GroupKeys
from transports.loadsharing.http_api import HttpApi
from transports.loadsharing.members import MemberStore, valid_host
from transports.loadsharing.messages import Report, encode
from transports.loadsharing.mixed import LedGroup
from transports.loadsharing.openevse_member import MemberState, validate
from transports.loadsharing.peer_client import PeerClient
from transports.loadsharing.rest import RestService
from transports.loadsharing.runtime_role import refusal
from transports.loadsharing.settings import LoadSharingSettings, parse_address

VERSION = "0.8"
PUSH_ATTEMPTS = 6
_WILDCARD = {"", "0.0.0.0", "::", "*"}


def ini_values(s: Any) -> dict[str, Any]:
    return GroupKeys.from_settings(s).wire()


class NetworkNode(RestService):
    """The node's side of the network. ``charger`` is the section's charger (what it shows, and
    the masterless Node attached to it); ``on_group_change`` rebuilds the Node; ``on_join`` is
    told an OpenEVSE controller's accepted push (the role switches)."""

    def __init__(self, settings: LoadSharingSettings, charger: ChargerDriver,
                 log: logging.Logger, *, state_dir: Path, instance: int,
                 stopping: asyncio.Event, on_group_change: Callable[[], None],
                 on_join: Callable[[dict[str, Any]], None]) -> None:
        s = settings
        self.settings, self.charger, self.log = settings, charger, log
        self.instance = instance
        self.stopping = stopping
        self.on_group_change = on_group_change
        self.on_join = on_join
        host, base = parse_address(s.node_listen)
        self.bind_host = host
        self.port = offset_port(base, instance)
        shown = socket.gethostname() if host in _WILDCARD else host
        self.node_id = s.node_host or f"{shown}:{self.port}"
        self.device_id = hashlib.sha256(self.node_id.encode()).hexdigest()[:12]
        self.auth = auth_from(s)
        state = state_dir
        self.members = MemberStore(state, self.log)
        self.config = cs.ConfigStore(state, self.log, ini_values(s), self_host=self.node_id,
                                     peers=self.members.peers, device_id=self.device_id)
        self.members.replace(self._peers_of(self.config.current))
        self.priority = s.loadsharing_priority
        self.role = s.loadsharing_role
        self.controller_host = s.loadsharing_controller_host
        self.enabled = s.loadsharing_enabled
        self.general_version = 1
        self.status_version = 0
        self.started = time.monotonic()
        self.api = HttpApi(self, self.log)
        self.clients: dict[str, PeerClient] = {}
        self.peer_sync: dict[str, dict[str, Any]] = {}
        self.discovery: Discovery | None = None
        self.session: aiohttp.ClientSession | None = None
        self._report_frame: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fetching: set[str] = set()
        self.led_group: LedGroup | None = None  # a mixed group's OpenEVSE members
        self.counters = {"pushes": 0, "adopted": 0, "reports_dropped": 0, "controller_frames": 0}

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        await self.api.start(self.bind_host, self.port)
        self.log.info("load-sharing node %s on http://%s:%d (group secret %s)", self.node_id,
                      self.bind_host, self.port, "on" if self.auth.enabled else "off")
        s = self.settings
        if s.discovery:
            name = s.mdns_name or mdns_name(default_base_name(), self.instance)
            addr = [] if self.bind_host in _WILDCARD else [self.bind_host]
            self.discovery = Discovery(name, self.port, self.device_id, VERSION, self.log,
                                       interfaces=list(s.discovery_interfaces) or None,
                                       addresses=addr or None)
            try:
                await self.discovery.start()
            except OSError as exc:
                self.log.warning("mDNS discovery unavailable: %s", exc)
                self.discovery = None
        self.sync_clients()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in list(self.clients.values()):
            await client.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        await self.api.stop()
        if self.session is not None:
            await self.session.close()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def group(self) -> cs.GroupConfig:
        return self.config.current

    def _peers_of(self, cfg: cs.GroupConfig) -> tuple[str, ...]:
        return tuple(m for m in cfg.members if m != self.node_id)

    def sync_clients(self) -> None:
        wanted = set(self.members.peers)
        for host in list(self.clients):
            if host not in wanted:
                self.spawn(self.clients.pop(host).stop())
                self.peer_sync.pop(host, None)
        assert self.session is not None
        for host in sorted(wanted - set(self.clients)):
            client = PeerClient(host, self.session, self.auth, self.log,
                                timeout=self.group.values["loadsharing_heartbeat_timeout"],
                                on_status=self._on_status, on_report=self._on_report)
            self.clients[host] = client
            client.start()

    # -- the PeerLink of the Node -------------------------------------------------------------
    def send(self, peer_id: str, message: Report) -> None:
        self.broadcast(message)  # every /ws client gets every report

    def broadcast(self, message: Report) -> None:
        text = encode(message).decode()
        frame = {"pgw_report": text, **self.auth.sign_report(text)}
        self._report_frame = frame
        self.status_version += 1
        self.api.hub.publish(self.status(with_report=False))
        self.api.hub.send(frame)

    # -- what peers tell us -------------------------------------------------------------------
    def _on_report(self, report: Report) -> None:
        node = self.charger.node
        if node is None or report.node not in node.config.members:
            self.counters["reports_dropped"] += 1
            return
        node.receive(report)

    def _on_status(self, host: str, delta: dict[str, Any]) -> None:
        keys = (cs.VERSION, cs.HASH, cs.UPDATED_AT, "id")
        if not any(k in delta for k in keys):
            return
        seen = self.peer_sync.setdefault(host, {})
        seen.update({k: delta[k] for k in keys if k in delta})
        try:
            theirs = (int(seen[cs.VERSION]), str(seen[cs.HASH]), float(seen[cs.UPDATED_AT]),
                      str(seen.get("id", "")))
        except (KeyError, TypeError, ValueError):
            return  # an OpenEVSE node: no group version to compare
        if cs.wins(theirs, self.config.key) and host not in self._fetching:
            self._fetching.add(host)
            self.spawn(self._fetch_and_adopt(host))

    async def _fetch_and_adopt(self, host: str) -> None:
        assert self.session is not None
        try:
            async with self.session.get(f"http://{host}/config",
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                body = await resp.json(content_type=None)
            if isinstance(body, dict):
                self.adopt(body, f"fetched from {host}")
        except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.log.info("could not fetch the group configuration from %s: %s", host, exc)
        finally:
            self._fetching.discard(host)

    def adopt(self, body: dict[str, Any], origin: str) -> tuple[bool, str]:
        before = self.group
        ok, why = self.config.offer(body)
        if ok:
            self.counters["adopted"] += 1
            self.log.info("group configuration version %d (%s) %s: %s", self.group.version,
                          self.group.hash, origin, why)
            self.group_changed(before, push=False)
        return ok, why

    def group_changed(self, before: cs.GroupConfig, push: bool = True) -> None:
        self.members.replace(self._peers_of(self.group))
        self.sync_clients()
        if self.group.hash != before.hash or self.group.version != before.version:
            self.general_version += 1
            self.on_group_change()
            if push:
                self.push_config()

    # -- config push --------------------------------------------------------------------------
    def push_config(self) -> None:
        cfg = self.group
        for host in self.members.peers:
            self.spawn(self._push(host, cfg))

    async def _push(self, host: str, cfg: cs.GroupConfig) -> None:
        """``POST /config`` to ``host``, tried ``PUSH_ATTEMPTS`` times (a peer that stays away
        fetches the winner itself when it sees our version), until it is taken, refused for
        good, or no longer needed (a newer configuration, or the peer already shows it)."""
        session = self.session
        assert session is not None
        body = json.dumps(cfg.wire(self.device_id)).encode()

        async def attempt() -> bool | None:
            if self.group is not cfg or self.peer_sync.get(host, {}).get(cs.HASH) == cfg.hash:
                return True
            headers = {"Content-Type": "application/json",
                       **self.auth.sign_request("POST", "/config", body)}
            async with session.post(f"http://{host}/config", data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
                self.counters["pushes"] += 1
                if resp.status in (200, 409):
                    return True  # taken, or the peer holds a winner we will fetch
                self.log.info("config push to %s: %s %s", host, resp.status,
                              (await resp.text())[:200])
                return True if resp.status in (400, 401, 403) else None

        await retry(attempt, attempts=PUSH_ATTEMPTS, backoff=Backoff(initial=0.5, maximum=8.0),
                    retry_on=(OSError, aiohttp.ClientError, TimeoutError), log=self.log,
                    what=f"config push to {host}")

    def join_openevse(self, push: dict[str, Any], controller: str) -> tuple[int, dict[str, Any]]:
        """An OpenEVSE controller's push: become its member (``runtime_role.py``), if alone."""
        bad_host = valid_host(controller)
        if bad_host is not None:
            return 400, {"msg": bad_host}
        why = refusal(self.members.peers, controller)
        if why is not None:
            if self.counters.get("refused_pushes", 0) == 0:
                self.log.warning("OpenEVSE controller %s: %s", controller, why)
            self.counters["refused_pushes"] = self.counters.get("refused_pushes", 0) + 1
            return 409, {"msg": why}
        merged = {**MemberState(hostname="", serial="").config,
                  **{k: v for k, v in push.items() if k.startswith("loadsharing_")}}
        bad = validate(merged)
        if bad is not None:
            return 400, {"msg": bad}
        if self.members.peers:  # the controller's reciprocal add: not a masterless peer
            before = self.group
            self.config.local_change({}, members=())
            self.group_changed(before, push=False)
        self.log.info("OpenEVSE controller %s made this node a member", controller)
        self.role, self.controller_host = "member", controller  # until the member role runs
        self.on_join(push)
        self.general_version += 1
        return 200, {"msg": "done", "config_version": self.general_version}

    async def post_to(self, host: str, path: str, payload: dict[str, Any],
                      attempts: int = 3) -> int | None:
        """A signed POST to a peer (reciprocal add, removal notice); its status or None."""
        session = self.session
        assert session is not None
        body = json.dumps(payload).encode()

        async def attempt() -> int:
            headers = {"Content-Type": "application/json",
                       **self.auth.sign_request("POST", path, body)}
            async with session.post(f"http://{host}{path}", data=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=3)) as resp:
                return resp.status

        return await retry(attempt, attempts=attempts,
                           backoff=Backoff(initial=0.5, maximum=0.5 * 2 ** attempts),
                           retry_on=(OSError, aiohttp.ClientError, TimeoutError), log=self.log,
                           what=f"POST {host}{path}")

    # -- the node's own status ----------------------------------------------------------------
    def status(self, with_report: bool = True) -> dict[str, Any]:
        s, cfg, local = self.settings, self.group, self.charger.local
        shown = local[1] if local is not None else {}
        state = int(shown.get("state", 0))
        node = self.charger.node
        total = float(shown.get("amp", 0.0))
        for c in self.clients.values():
            amp = c.status.get("amp")
            if isinstance(amp, int | float) and not isinstance(amp, bool):
                total += amp / 1000.0
        out = {
            "id": self.device_id, "wifi_serial": self.device_id.upper(),
            "hostname": self.node_id,
            "amp": round(float(shown.get("amp", 0.0)) * 1000),
            "voltage": shown.get("voltage", 0.0), "pilot": shown.get("pilot", 0.0),
            "state": state, "vehicle": int(shown.get("vehicle", 0)),
            "status": {254: "sleeping", 255: "disabled"}.get(state, "active"),
            "max_current": s.loadsharing_max_current,
            "config_version": self.general_version,
            "loadsharing_min_current": s.loadsharing_min_current,
            "loadsharing_max_current": s.loadsharing_max_current,
            "loadsharing_priority": self.priority,
            "loadsharing_peers_version": self.group.version,
            "loadsharing_status_version": self.status_version,
            "loadsharing_joined_peers": list(self.members.peers),
            "loadsharing_group_current_total": round(total, 3),
            cs.VERSION: cfg.version, cs.UPDATED_AT: cfg.updated_at, cs.HASH: cfg.hash,
            "loadsharing_limit": node.limit if node is not None else None,
            "loadsharing_mode": node.mode if node is not None else "starting",
        }
        if with_report:
            out.update(self._report_frame)
        return out

    def publish(self) -> None:
        self.api.hub.publish(self.status(with_report=False))

    def uptime(self) -> float:
        return time.monotonic() - self.started

    async def wait_stopped(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.stopping.wait()
