"""The gateway as *controller* of a group of OpenEVSE members (``loadsharing_role = controller``).

What an OpenEVSE member expects (firmware branch ``jeremypoulter/issue940``): a reciprocal add
(``POST /loadsharing/peers``), the group keys pushed with ``POST /config`` (role ``member``,
``loadsharing_controller_host``) the first time its ``/ws`` is up, retried every 500 ms until a
200, and an allocation frame ``{"loadsharing": {"target_current": A, "reason": "..."}}`` into its
``/ws``; it falls back to its failsafe current after ``heartbeat_timeout`` without one. Removal
resets its role first.

Where this controller is stricter than the firmware's (docs/loadsharing_openevse.md):

- the allocation is this project's (``allocation.py``): every member, state B included, shares
  one budget, so allocations plus reserves never exceed ``group_max * safety_factor``;
- a decrease goes out at once, a raise only when no decrease was sent for ``response_time``
  (the chargers' time to obey) and every member shows its lowered target in its own status
  (a frame can be lost while the member's status still arrives), so old and new allocations
  never add up on the breaker; a member that doesn't show it within ``heartbeat_timeout`` is
  held (reserved at the most it may draw) instead;
- a member that falls silent keeps what it may still draw (the highest target it was sent
  recently, at least the safe current) reserved until ``heartbeat_timeout + offline_margin +
  response_time`` after the last frame sent to it; only then, when by its own rule it is at its
  failsafe current, does it count at ``failsafe_peer_assumed_current`` (>= the safe current);
- a reachable node not yet a member (push not acknowledged) is outside our control: it is counted
  at what it says its pilot is (at least the assumed current);
- frames go out on every change and at least every ``min(5, heartbeat_timeout / 3)`` seconds.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from gateway.backoff import Backoff
from gateway.reconnect import LinkKeeper, retry
from transports.loadsharing import allocation as al
from transports.loadsharing.openevse_plan import GroupSettings, MemberLink, Plan, plan

__all__ = ["GroupSettings", "MemberLink", "OpenEvseController", "Plan", "plan"]


def abort_on_close(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Close this socket with a reset (``SO_LINGER`` 0): frames still queued in it are
    discarded, never delivered late to a member that may have been given a lower target since
    (a stalled connection would otherwise deliver them when it recovers)."""
    sock = ws.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class OpenEvseController:
    """Leads OpenEVSE members over their own REST API and ``/ws``."""

    def __init__(self, own_host: str, settings: GroupSettings, *,
                 log: logging.Logger | None = None,
                 on_local_limit: Callable[[int], None] | None = None) -> None:
        self.own_host = own_host
        self.settings = settings
        self.version = 1
        self.log = log or logging.getLogger("loadsharing.openevse_controller")
        self.links: dict[str, MemberLink] = {}
        self.local: al.Member | None = None
        self.local_sent: int | None = None
        self.on_local_limit = on_local_limit
        self.last_decrease = -1e9
        self.last_plan: Plan | None = None
        self.frames_sent = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()

    # -- life ---------------------------------------------------------------------------------
    async def start(self, allocate: bool = True) -> None:
        """``allocate=False``: a mixed group's node allocates; this only talks to the members."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        if allocate:
            self._tasks.append(asyncio.create_task(self._allocator()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for link in self.links.values():
            if link.ws is not None:
                abort_on_close(link.ws)
            if link.task is not None:
                link.task.cancel()
        for t in self._background:
            t.cancel()
        for t in [*self._tasks, *self._background,
                  *(x.task for x in self.links.values() if x.task)]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._session is not None:
            await self._session.close()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "start() first"
        return self._session

    def set_local(self, demanding: bool, min_current: int = 6, max_current: int = 32,
                  priority: int = 0) -> None:
        """The controller's own charger, a member like the others."""
        self.local = al.Member(self.own_host, True, demanding, min_current, max_current, priority)
        self._wake.set()

    def update_settings(self, settings: GroupSettings) -> None:
        """A group key changed here: push it again to every member (not on reconnect)."""
        self.settings = settings
        self.version += 1
        for link in self.links.values():
            if link.ws is not None and not link.ws.closed:
                self.spawn(self._push(link))
        self._wake.set()

    def repush(self, host: str) -> None:
        """Push the group keys to ``host`` again (it names another controller)."""
        link = self.links.get(host)
        if link is not None:
            link.pushed_version = 0
            self.spawn(self._push(link))

    async def controller_of(self, host: str) -> str | None:
        """The ``loadsharing_controller_host`` a member's ``GET /config`` names, or None."""
        try:
            async with self.session.get(f"http://{host}/config",
                                        timeout=aiohttp.ClientTimeout(total=5)) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        value = body.get("loadsharing_controller_host") if isinstance(body, dict) else None
        return value if isinstance(value, str) else None

    # -- membership ---------------------------------------------------------------------------
    async def add_member(self, host: str, reciprocal: bool = True) -> str:
        if host in self.links:
            return "already in group"
        link = MemberLink(host)
        self.links[host] = link
        link.task = asyncio.create_task(self._follow(link))
        if reciprocal:
            try:
                body = {"host": self.own_host, "reciprocal": False}
                async with self.session.post(f"http://{host}/loadsharing/peers", json=body) as r:
                    answer = await r.text()
                    if r.status != 200:
                        self.log.warning("reciprocal add on %s: %s %s", host, r.status, answer)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.log.warning("reciprocal add on %s failed: %s", host, exc)
        return "done"

    async def remove_member(self, host: str) -> bool:
        """Reset its role first (as OpenEVSE does), then forget it."""
        link = self.links.get(host)
        if link is None:
            return False
        reset = {"loadsharing_enabled": False, "loadsharing_role": "",
                 "loadsharing_controller_host": ""}
        try:
            async with self.session.post(f"http://{host}/config", json=reset) as r:
                if r.status != 200:
                    self.log.warning("reset of %s: %s %s", host, r.status, await r.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.log.warning("reset of %s failed: %s", host, exc)
        del self.links[host]
        if link.task is not None:
            link.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await link.task
        self._wake.set()
        return True

    # -- status ingestion ---------------------------------------------------------------------
    async def _follow(self, link: MemberLink) -> None:
        """Bootstrap with ``GET /status``, then ``/ws``; back off 1, 2, 4 ... 60 s on failure,
        reopen at once a socket that went silent (the loop is :class:`LinkKeeper`'s)."""
        keeper: LinkKeeper[MemberLink] = LinkKeeper(
            f"member {link.host}", self.log, backoff=Backoff(initial=1.0, maximum=60.0),
            lost=(aiohttp.ClientError, TimeoutError, OSError, ValueError))

        async def open_link() -> MemberLink:
            return link  # the session opens its own connections

        async def serve(link: MemberLink) -> None:
            await self._session_once(link, keeper)

        async def release(link: MemberLink) -> None:
            link.ws = None
            self._wake.set()

        await keeper.keep(open_link, serve, release)

    async def _session_once(self, link: MemberLink, keeper: LinkKeeper[MemberLink]) -> None:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=min(10.0, s.heartbeat_timeout))
        if not link.identity:
            async with self.session.get(f"http://{link.host}/config", timeout=timeout) as r:
                link.identity = {k: v for k, v in (await r.json()).items()
                                 if k in ("wifi_serial", "hostname")}
        async with self.session.get(f"http://{link.host}/status", timeout=timeout) as r:
            link.update(await r.json())
        async with self.session.ws_connect(f"http://{link.host}/ws", heartbeat=15.0,
                                           timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
                                           ) as ws:
            link.ws = ws
            link.last_text = time.monotonic()
            keeper.up()  # it answered /status and took the socket: reachable (again)
            if link.pushed_version != self.version:
                self.spawn(self._push(link))
            self._wake.set()
            while True:
                left = link.last_text + s.heartbeat_timeout - time.monotonic()
                try:
                    async with asyncio.timeout(max(0.05, left)):
                        msg = await ws.receive()
                except TimeoutError:
                    self.log.warning("member %s silent for %.0f s: reconnecting", link.host,
                                     s.heartbeat_timeout)
                    abort_on_close(ws)
                    return
                if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                    raise aiohttp.ClientError(f"/ws closed ({msg.type.name})")
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    self.log.warning("member %s sent non-JSON: %r", link.host, msg.data[:200])
                    continue
                if isinstance(data, dict):
                    link.last_text = time.monotonic()
                    before = link.member()
                    link.update(data)
                    if link.member() != before:
                        self._wake.set()

    async def _push(self, link: MemberLink) -> None:
        """``POST /config`` with the group keys every ``push_retry`` s until a 200 (or the
        member left, or a newer version is to be pushed instead)."""
        version = self.version
        body = self.settings.push_body(self.own_host)

        async def attempt() -> bool | None:
            if link.host not in self.links or version != self.version:
                return False  # no longer wanted
            async with self.session.post(f"http://{link.host}/config", json=body) as r:
                if r.status == 200:
                    link.pushed_version, link.joined = version, True
                    self.log.info("member %s joined (config pushed)", link.host)
                    self._wake.set()
                    return True
                self.log.debug("push to %s: %s %s", link.host, r.status, await r.text())
            return None

        every = self.settings.push_retry
        await retry(attempt, attempts=None, backoff=Backoff(initial=every, maximum=every),
                    retry_on=(aiohttp.ClientError, TimeoutError), log=self.log,
                    what=f"push to {link.host}")

    # -- allocation and frames ----------------------------------------------------------------
    async def _allocator(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await self._wake.wait()
            self._wake.clear()
            await self.step(time.monotonic())

    def _bounded(self, target: int, sent: int | None, floor: float, now: float) -> int:
        """Decrease at once; raise only once no decrease went out for ``response_time``."""
        current = floor if sent is None else sent
        if target <= current or now - self.last_decrease >= self.settings.response_time:
            return target
        return int(current) if sent is not None else min(target, int(floor))

    async def step(self, now: float) -> None:
        s = self.settings
        pending = False  # a member online still shows more than we last sent it
        for link in self.links.values():
            if link.sent is None or link.obeys(link.sent) or \
                    not link.connected(now, s.heartbeat_timeout):
                link.unconfirmed_since = None
            else:
                pending = True
                if link.unconfirmed_since is None:
                    link.unconfirmed_since = now
        if pending:  # no raise until every lowering shows (or the member is held instead)
            self.last_decrease = max(self.last_decrease, now - s.response_time + 0.25)
        p = plan(list(self.links.values()), s, now, self.local)
        self.last_plan = p
        if s.group_max <= 0:
            return
        # decreases first (they also restart the raise wait), then raises
        order = sorted(p.targets, key=lambda h: p.targets[h][0] - self._sent(h))
        for host in order:
            amps, reason = p.targets[host]
            if host == self.own_host:
                self._local_limit(amps, now)
                continue
            link = self.links.get(host)
            if link is not None and p.states.get(host) == "offline" and link.sent is not None:
                # lease over: by its own rule it is at its failsafe current now, whatever we
                # sent before; a later frame above that is a raise
                link.sent, link.reason = None, ""
            if link is None or not (link.joined and link.connected(now, s.heartbeat_timeout)):
                continue  # (a member held for not showing its target still gets frames)
            out = self._bounded(amps, link.sent, s.safe_current, now)
            changed = out != link.sent or reason != link.reason
            due = link.last_frame is None or now - link.last_frame >= s.frame_interval
            if changed or due:
                await self.send_frame(link, out, reason, now)

    def _sent(self, host: str) -> int:
        if host == self.own_host:
            return self.local_sent or 0
        link = self.links.get(host)
        return 0 if link is None or link.sent is None else link.sent

    def _local_limit(self, amps: int, now: float) -> None:
        out = self._bounded(amps, self.local_sent, self.settings.safe_current, now)
        if out != self.local_sent:
            if self.local_sent is None or out < self.local_sent:
                self.last_decrease = now
            self.local_sent = out
            if self.on_local_limit is not None:
                self.on_local_limit(out)

    async def send_frame(self, link: MemberLink, amps: int, reason: str, now: float) -> None:
        ws = link.ws
        if ws is None or ws.closed:
            return
        if amps < (self.settings.safe_current if link.sent is None else link.sent):
            self.last_decrease = now
        frame = {"loadsharing": {"target_current": amps, "reason": reason}}
        try:
            await ws.send_str(json.dumps(frame, separators=(",", ":")))
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self.log.debug("frame to %s not sent: %s", link.host, exc)
            return
        link.record_frame(amps, reason, now)
        self.frames_sent += 1

    def ls_status(self) -> dict[str, Any]:
        """``GET /loadsharing/status``-like view of the group, for the API and the logs."""
        p = self.last_plan
        return {
            "role": "controller", "group_id": self.settings.group_id,
            "online_count": sum(1 for v in (p.states.values() if p else ()) if v == "online"),
            "offline_count": sum(1 for v in (p.states.values() if p else ()) if v != "online"),
            "peers": [{"host": h, "state": (p.states.get(h) if p else None), "joined": x.joined,
                       "identity": x.identity, "status": x.status} for h, x in self.links.items()],
            "allocations": [] if p is None else [
                {"id": h, "target_current": a, "reason": r} for h, (a, r) in p.targets.items()],
        }
