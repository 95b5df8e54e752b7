"""The firmware's peer poller (``src/loadsharing_peer_poller.cpp``) for the simulated node.

For every group peer, on any role: ``GET /status`` as a bootstrap (10 s timeout), then a
WebSocket to ``/ws`` whose JSON texts are merged into a status cache; a failed bootstrap or
connect is retried after 1, 2, 4 ... 60 s. Only a JSON text moves ``last_seen``; after
``heartbeat_timeout`` without one (``>=``) the peer is offline and the socket is dropped and
reopened at once. PING frames go out every 15 s.

On a controller, also: the group keys pushed with ``POST /config`` once, the first time a
peer's ``/ws`` comes up, retried every 500 ms until a 200 (and again after a change on the
controller); the allocation (``openevse_loadsharing.allocate``) on a free-running 5 s tick,
applied to its own charger and sent as ``{"loadsharing": {...}}`` into every connected peer's
socket; the reset pushed to a peer's ``/config`` when it is removed.

Size: a little over the ~400-line guide: the firmware's poller, allocation tick and config
push are one loop on the real device, kept together so it reads like the firmware.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from simulators import openevse_loadsharing as ls

if TYPE_CHECKING:
    from simulators.openevse_node import OpenEvseNode

log = logging.getLogger("openevse_node.peers")

HTTP_TIMEOUT = 10.0
PING_EVERY = 15.0
PUSH_RETRY = 0.5
RESET = {"loadsharing_enabled": False, "loadsharing_role": "", "loadsharing_controller_host": ""}


@dataclass
class Peer:
    host: str
    status: dict[str, Any] = field(default_factory=dict)
    has_status: bool = False
    connected: bool = False
    last_seen: float | None = None  # monotonic time of the last JSON text
    last_seen_uptime: float = 0.0  # the observer's uptime then, for /loadsharing/status
    config_pushed: bool = False
    pushing: bool = False
    retry: int = 0
    ws: aiohttp.ClientWebSocketResponse | None = None
    task: asyncio.Task[Any] | None = None
    frames_sent: int = 0
    connects: int = 0  # WebSockets opened so far
    identity: dict[str, Any] = field(default_factory=dict)  # from one GET /config

    def online(self, now: float, timeout: float) -> bool:
        return self.connected and self.last_seen is not None and now - self.last_seen < timeout


class PeerPoller:
    def __init__(self, node: OpenEvseNode) -> None:
        self.node = node
        self.peers: dict[str, Peer] = {}
        self.allocations: list[ls.Allocation] = []
        self.failsafe_active = False
        self.computed_at = 0.0
        self.rotation = ls.Rotation()
        self.demand_cap = ls.DemandCap()
        self.peers_version = 0
        self.status_version = 0
        self._session: aiohttp.ClientSession | None = None
        self._tick: asyncio.Task[Any] | None = None
        self._push_tasks: set[asyncio.Task[Any]] = set()

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._session = aiohttp.ClientSession()
        for host in self.node.group_peers:
            self._watch(host)
        self._tick = asyncio.create_task(self._allocation_tick())

    async def stop(self) -> None:
        tasks = [p.task for p in self.peers.values() if p.task is not None]
        tasks += list(self._push_tasks)
        if self._tick is not None:
            tasks.append(self._tick)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.peers.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def timeout(self) -> float:
        return float(self.node.config["loadsharing_heartbeat_timeout"])

    # -- membership ------------------------------------------------------------------------------
    def add(self, host: str) -> bool:
        """False when already in the group."""
        if host in self.node.group_peers:
            return False
        self.node.group_peers.append(host)
        self.peers_version += 1
        self._watch(host)
        return True

    def remove(self, host: str) -> bool:
        if host not in self.node.group_peers:
            return False
        self.node.group_peers.remove(host)
        self.peers_version += 1
        peer = self.peers.pop(host, None)
        if peer is not None and peer.task is not None:
            peer.task.cancel()
        self.demand_cap.forget(host)
        return True

    def _watch(self, host: str) -> None:
        if self._session is None or host in self.peers:
            return
        peer = Peer(host)
        self.peers[host] = peer
        peer.task = asyncio.create_task(self._poll(peer))

    def config_changed(self) -> None:
        """A change on the controller: push the group keys again to every connected peer."""
        for peer in self.peers.values():
            peer.config_pushed = False
            if peer.connected:
                self._start_push(peer)

    # -- one peer ------------------------------------------------------------------------------
    async def _poll(self, peer: Peer) -> None:
        assert self._session is not None
        while True:
            try:
                await self._bootstrap(peer)
                await self._stream(peer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: back off and retry
                peer.connected = False
                delay = min(60.0, 2.0**peer.retry)
                peer.retry += 1
                log.debug(
                    "%s: peer %s failed (%s); retry in %.0f s",
                    self.node.hostname,
                    peer.host,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _bootstrap(self, peer: Peer) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with self._session.get(f"http://{peer.host}/status", timeout=timeout) as resp:
            if resp.status != 200:
                raise ConnectionError(f"GET /status answered {resp.status}")
            body = json.loads(await resp.text())
        if not isinstance(body, dict):
            raise ValueError("GET /status is not a JSON object")
        self._merge(peer, body)
        peer.has_status = True
        if not peer.identity:
            await self._identify(peer)

    async def _identify(self, peer: Peer) -> None:
        """One ``GET /config`` for ``wifi_serial``, ``hostname`` and ``version``."""
        assert self._session is not None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with self._session.get(
                f"http://{peer.host}/config", timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
            ) as resp:
                body = json.loads(await resp.text()) if resp.status == 200 else None
            if isinstance(body, dict):
                peer.identity = {
                    k: str(body[k]) for k in ("wifi_serial", "hostname", "version") if k in body
                }

    async def _stream(self, peer: Peer) -> None:
        assert self._session is not None
        ws = await self._session.ws_connect(
            f"http://{peer.host}/ws",
            heartbeat=PING_EVERY,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            autoping=True,
        )
        peer.ws, peer.connected, peer.retry = ws, True, 0
        peer.connects += 1
        peer.last_seen = time.monotonic()
        if self.node.is_controller and not peer.config_pushed:
            self._start_push(peer)
        try:
            while True:
                left = peer.last_seen + self.timeout - time.monotonic()
                if left <= 0:
                    log.info(
                        "%s: peer %s silent for %.0f s: offline, reconnecting",
                        self.node.hostname,
                        peer.host,
                        self.timeout,
                    )
                    return  # reconnect at once, no backoff
                try:
                    msg = await asyncio.wait_for(ws.receive(), left)
                except TimeoutError:
                    continue
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except ValueError:
                        continue
                    if isinstance(data, dict):
                        self._merge(peer, data)
                elif msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.ERROR,
                ):
                    raise ConnectionError("WebSocket closed")
        finally:
            peer.connected = False
            peer.ws = None
            with contextlib.suppress(Exception):
                await ws.close()

    def _merge(self, peer: Peer, data: dict[str, Any]) -> None:
        peer.status.update(data)
        peer.last_seen = time.monotonic()
        peer.last_seen_uptime = self.node.uptime()
        self.status_version += 1

    def _start_push(self, peer: Peer) -> None:
        if peer.pushing:
            return
        peer.pushing = True
        task = asyncio.create_task(self._push_config(peer))
        self._push_tasks.add(task)
        task.add_done_callback(self._push_tasks.discard)

    async def _push_config(self, peer: Peer) -> None:
        assert self._session is not None
        try:
            while not peer.config_pushed and peer.host in self.peers and self.node.is_controller:
                body = {
                    "loadsharing_enabled": True,
                    "loadsharing_role": "member",
                    "loadsharing_controller_host": self.node.host,
                }
                body.update({k: self.node.config[k] for k in ls.GROUP_KEYS})
                try:
                    async with self._session.post(
                        f"http://{peer.host}/config",
                        json=body,
                        timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
                    ) as resp:
                        if resp.status == 200:
                            peer.config_pushed = True
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(PUSH_RETRY)
        finally:
            peer.pushing = False

    async def push_reset(self, host: str) -> None:
        """Before removing a peer: send it back to role ``""`` (answer ignored)."""
        if self._session is None:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._session.post(
                f"http://{host}/config", json=RESET, timeout=aiohttp.ClientTimeout(total=2.0)
            ) as resp:
                await resp.read()

    async def reciprocal_add(self, host: str) -> None:
        if self._session is None:
            return
        body = {"host": self.node.host, "reciprocal": False}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._session.post(
                f"http://{host}/loadsharing/peers",
                json=body,
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
            ) as resp:
                await resp.read()

    # -- the controller's allocation --------------------------------------------------------------
    async def _allocation_tick(self) -> None:
        while True:
            if self.node.is_controller:
                self.allocate_and_push()
            await asyncio.sleep(self.node.alloc_interval)

    def inputs(self) -> list[ls.MemberInput]:
        node, now = self.node, time.monotonic()
        m = node.model
        own = node.status()
        several = sum(1 for s in self._statuses() if s.get("state") == ls.CHARGING) > 1
        result = [
            self._input(
                node.host, True, own, min_a=m.min_a, max_a=m.configured_max_a, several=several
            )
        ]
        for host in node.group_peers:
            peer = self.peers.get(host)
            st = peer.status if peer is not None else {}
            online = peer is not None and peer.has_status and peer.online(now, self.timeout)
            result.append(
                self._input(
                    host,
                    online,
                    st,
                    min_a=float(st.get("loadsharing_min_current", m.min_a)),
                    max_a=float(
                        st.get("loadsharing_max_current", st.get("max_current", m.configured_max_a))
                    ),
                    several=several,
                )
            )
        return result

    def _statuses(self) -> list[dict[str, Any]]:
        return [self.node.status()] + [p.status for p in self.peers.values()]

    def _input(
        self,
        host: str,
        online: bool,
        st: dict[str, Any],
        *,
        min_a: float,
        max_a: float,
        several: bool,
    ) -> ls.MemberInput:
        state = int(st.get("state", 0) or 0)
        pilot = float(st.get("pilot", 0) or 0)
        amps = float(st.get("amp", 0) or 0) / 1000.0
        charging = online and state == ls.CHARGING and several
        max_a = self.demand_cap.effective_max(
            host, charging, pilot=pilot, amps=amps, min_a=min_a, max_a=max_a
        )
        return ls.MemberInput(
            id=host,
            online=online,
            vehicle=int(st.get("vehicle", 0) or 0),
            state=state,
            min_current=min_a,
            max_current=max_a,
            priority=int(st.get("loadsharing_priority", 0) or 0),
        )

    def allocate_and_push(self) -> None:
        node = self.node
        c = node.config
        cfg = ls.GroupConfig(
            group_max=float(c["loadsharing_group_max_current"]),
            safety_factor=float(c["loadsharing_safety_factor"]),
            peer_assumed=float(c["loadsharing_failsafe_peer_assumed_current"]),
            failsafe_mode=str(c["loadsharing_failsafe_mode"]),
            safe_current=float(c["loadsharing_failsafe_safe_current"]),
            rotation_interval=float(c["loadsharing_rotation_interval"]),
            keep_awake=node.keep_awake,
        )
        allocations, failsafe = ls.allocate(self.inputs(), cfg, self.rotation, time.monotonic())
        self.allocations, self.failsafe_active = allocations, failsafe
        self.computed_at = time.time()
        if not allocations:
            return  # group max <= 0: nothing is sent
        for alloc in allocations:
            self.demand_cap.offered(alloc.id, alloc.target_current)
        own = allocations[0]
        node.apply_limit(
            own.target_current, own.reason, force_disabled=own.reason == "failsafe_disabled"
        )
        for alloc in allocations[1:]:
            peer = self.peers.get(alloc.id)
            if peer is None or peer.ws is None or peer.ws.closed or not peer.connected:
                continue
            frame = {
                "loadsharing": {"target_current": alloc.target_current, "reason": alloc.reason}
            }
            task = asyncio.ensure_future(peer.ws.send_str(json.dumps(frame)))
            task.add_done_callback(_quiet)
            peer.frames_sent += 1

    # -- what the node shows ---------------------------------------------------------------------
    def online_count(self) -> tuple[int, int]:
        now = time.monotonic()
        online = sum(
            1
            for h in self.node.group_peers
            if (p := self.peers.get(h)) is not None and p.online(now, self.timeout)
        )
        return online + 1, len(self.node.group_peers) + 1 - (online + 1)

    def group_current_total(self) -> float:
        own = self.node.model.ev.draw_a
        return round(
            own + sum(float(p.status.get("amp", 0) or 0) / 1000.0 for p in self.peers.values()), 2
        )

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "host": p.host,
                "connected": p.connected,
                "online": p.online(now, self.timeout),
                "config_pushed": p.config_pushed,
                "frames_sent": p.frames_sent,
                "connects": p.connects,
            }
            for p in self.peers.values()
        ]


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
