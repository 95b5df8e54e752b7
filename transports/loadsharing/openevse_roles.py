"""``LoadSharing.run`` for a node in an OpenEVSE group (``loadsharing_role`` member or controller).

The transport keeps what it already does for a masterless node: the charger's readings
(``t.local``), its one writer of the charger (``t.set_limit`` -> ``ChargerWriter``),
supervision and pulses. This module swaps the masterless ``Node`` for the OpenEVSE role:

- ``member``: :class:`~transports.loadsharing.openevse_member.OpenEvseMemberNode` on
  ``node_listen``; an OpenEVSE controller adds it, pushes the group keys and sends its frames.
  Its limit goes into the transport's command queue, like the masterless node's.
- ``controller``: :class:`~transports.loadsharing.openevse_controller.OpenEvseController` with
  this node's own charger as a member, and a REST API on ``node_listen`` where a user adds and
  removes OpenEVSE members (``POST /loadsharing/peers`` with the reciprocal add, ``DELETE
  /loadsharing/peers/{host}`` with the role reset); the list is persisted (``members.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import time
from typing import TYPE_CHECKING, Any

from transports.loadsharing.auth import auth_from
from transports.loadsharing.group_keys import GroupKeys
from transports.loadsharing.http_api import HttpApi
from transports.loadsharing.members import MemberStore, valid_host
from transports.loadsharing.node_config import READING_EVERY
from transports.loadsharing.openevse_controller import GroupSettings, OpenEvseController
from transports.loadsharing.openevse_member import (
    MemberState,
    OpenEvseMemberNode,
)
from transports.loadsharing.settings import node_address

if TYPE_CHECKING:
    from transports.loadsharing.transport import LoadSharing

def _address(t: LoadSharing) -> tuple[str, int, str]:
    """(bind host, port with the instance offset, how peers reach us)."""
    return node_address(t.settings.node_listen, t.settings.node_host, t.ctx.general.instance)


def group_settings(t: LoadSharing) -> GroupSettings:
    s = t.settings
    return GroupSettings.from_keys(
        GroupKeys.from_settings(s),
        offline_margin=max(2.0, 2 * s.loadsharing_clock_tolerance
                           * s.loadsharing_heartbeat_timeout + 1.0),
        response_time=s.loadsharing_response_time)


async def run_openevse_role(t: LoadSharing, role: str,
                            pushed: dict[str, Any] | None = None) -> None:
    """The transport's life in an OpenEVSE group; returns when the transport stops, or when a
    member that joined at run time (``pushed``: the controller's push) is reset."""
    s = t.settings
    if not s.node_listen:
        raise ValueError("loadsharing_role needs node_listen (OpenEVSE peers speak HTTP)")
    bind, port, me = _address(t)
    await t.wait_first_status()
    async with t.driving():
        if role == "member":
            await _member(t, bind, port, me, pushed)
        else:
            await _controller(t, bind, port, me)


class Shown:
    """The transport's readings in a role (the masterless node's keys): on change or every
    ``READING_EVERY`` seconds."""

    def __init__(self, t: LoadSharing, me: str) -> None:
        self.t, self.me = t, me
        self.last: tuple[Any, ...] = ()
        self.at = 0.0

    async def show(self, mode: str, limit: int | None, failsafe: bool, online: int,
                   offline: int) -> None:
        now = time.monotonic()
        shown = (mode, limit, failsafe, online, offline)
        if shown == self.last and now - self.at < READING_EVERY:
            return
        if shown[:3] != self.last[:3]:
            self.t.log.info("load sharing (OpenEVSE %s): limit %s A%s, %d online, %d offline",
                            mode, "-" if limit is None else limit,
                            ", failsafe" if failsafe else "", online, offline)
        self.last, self.at = shown, now
        data: dict[str, Any] = {
            "loadsharing_mode": mode, "loadsharing_failsafe": failsafe,
            "loadsharing_online_count": online, "loadsharing_offline_count": offline}
        if limit is not None:  # no limit while not in a group
            data["loadsharing_limit"] = limit
        await self.t.ctx.emit("reading", data, info=self.t.device_info())


async def _member(t: LoadSharing, bind: str, port: int, me: str,
                  pushed: dict[str, Any] | None) -> None:
    s = t.settings
    state = MemberState(hostname=me, serial=hashlib.sha256(me.encode()).hexdigest()[:12],
                        min_current=s.loadsharing_min_current,
                        max_current=s.loadsharing_max_current,
                        priority=s.loadsharing_priority, charger_min=s.loadsharing_min_current)
    state.config["loadsharing_failsafe_safe_current"] = s.loadsharing_failsafe_safe_current
    if pushed is not None:  # joined at run time (runtime_role.py): the push made us a member
        state.post_config(pushed, time.monotonic())

    async def no_command(data: dict[str, Any]) -> None:
        return None  # the limit goes through the transport's queue below

    node = OpenEvseMemberNode(state, no_command, listen_port=port, listen_host=bind,
                              advertised=me, log=t.log, auth=auth_from(s))
    await node.start()
    t.log.info("OpenEVSE member on %s: waiting for a controller's push", me)
    last: int | None = None
    shown = Shown(t, me)
    # the INI is a ceiling: a controller's frame may lower the charger, never raise it above
    # this node's group maximum (when set) or the charger's maximum (docs/loadsharing.md)
    ceiling = s.loadsharing_group_max_current * s.loadsharing_safety_factor
    try:
        while not t.ctx.stopping.is_set():
            if t.local is not None:
                node.charger_shown(t.local[1])
            state.max_current = t.writer.allocation_max()  # what the controller allocates from
            amps, _ = state.limit(time.monotonic())
            if amps is not None and ceiling > 0:
                amps = min(amps, int(ceiling))
            if amps is None:
                # not yet (or no longer) in the controller's group: the failsafe current, never
                # the charger's own maximum (a restarted member waits for the next push like
                # this; a member that left hands over to the masterless node, which raises it
                # only on agreement)
                amps = int(s.fallback_current)
            if amps != last:
                t.set_limit(amps)
                last = amps
            if pushed is not None and not state.is_member:
                t.log.info("the OpenEVSE controller reset this node's role: back to the "
                           "masterless protocol")
                t.roles.clear()
                return
            now = time.monotonic()
            fs = state.failsafe(now)
            await shown.show("member" if state.is_member else "waiting",
                             state.limit(now)[0], fs, 0 if fs or not state.is_member else 1,
                             1 if fs else 0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await t.ctx.stopping.wait()
    finally:
        await node.stop()


class ControllerService:
    """The REST side of a controller node (:class:`~transports.loadsharing.http_api.Service`)."""

    def __init__(self, t: LoadSharing, ctl: OpenEvseController, store: MemberStore,
                 me: str) -> None:
        self.t, self.ctl, self.store, self.me = t, ctl, store, me
        self.auth = auth_from(t.settings)
        self.started = time.monotonic()

    def status(self) -> dict[str, Any]:
        shown = self.t.local[1] if self.t.local is not None else {}
        s = self.t.settings
        return {"amp": round(float(shown.get("amp", 0.0)) * 1000),
                "voltage": shown.get("voltage", 0), "pilot": shown.get("pilot", 0),
                "state": shown.get("state", 0), "vehicle": shown.get("vehicle", 0),
                "max_current": s.loadsharing_max_current,
                "loadsharing_min_current": s.loadsharing_min_current,
                "loadsharing_max_current": s.loadsharing_max_current,
                "loadsharing_priority": s.loadsharing_priority,
                "loadsharing_joined_peers": list(self.ctl.links),
                "uptime": int(time.monotonic() - self.started)}

    def config_view(self) -> dict[str, Any]:
        g = self.ctl.settings
        return {"hostname": self.me, "wifi_serial": hashlib.sha256(
                    self.me.encode()).hexdigest()[:12].upper(),
                "loadsharing_enabled": True, "loadsharing_role": "controller",
                "loadsharing_controller_host": "", **{
                    k: v for k, v in g.push_body(self.me).items()
                    if k not in ("loadsharing_role", "loadsharing_controller_host",
                                 "loadsharing_enabled")}}

    async def post_config(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Group keys may change here (pushed to every member again); the role may not."""
        keys = {k: v for k, v in body.items() if k.startswith("loadsharing_")}
        if "loadsharing_role" in keys and keys["loadsharing_role"] != "controller":
            return 403, {"msg": "the role of this node is set in its configuration file"}
        g = self.ctl.settings
        try:
            new = GroupSettings.from_keys(GroupKeys.from_wire(keys, g.keys()),
                                          offline_margin=g.offline_margin,
                                          response_time=g.response_time)
        except ValueError as exc:
            return 400, {"msg": str(exc)}
        why = self.t.settings.above_ceiling(keys)
        if why is not None:
            return 400, {"msg": why}
        if new == g:
            return 200, {"msg": "no change"}
        self.ctl.update_settings(new)
        return 200, {"msg": "done"}

    def peers_list(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out = [{"id": self.me, "name": self.me, "host": self.me, "url": f"http://{self.me}",
                "ip": "", "online": True, "joined": True, "isLocal": True}]
        for host, link in self.ctl.links.items():
            out.append({"id": str(link.identity.get("wifi_serial", host)).lower(),
                        "name": link.identity.get("hostname", host), "host": host,
                        "url": f"http://{host}", "ip": host.rsplit(":", 1)[0],
                        "online": link.connected(now, self.ctl.settings.heartbeat_timeout),
                        "joined": link.joined, "isLocal": False})
        return out

    async def add_peer(self, host: str, reciprocal: bool) -> tuple[int, str]:
        why = valid_host(host)
        if why is not None:
            return 400, why
        if host == self.me:
            return 400, "Cannot add local device as peer"
        self.store.add(host)
        return 200, await self.ctl.add_member(host, reciprocal)

    async def delete_peer(self, host: str) -> tuple[int, str]:
        if host == self.me:
            return 400, "Cannot remove local device from group"
        if host not in self.ctl.links:
            return 404, "Peer not found"
        await self.ctl.remove_member(host)
        self.store.remove(host)
        return 200, "done"

    def discover(self) -> None:
        return None

    def ls_status(self) -> dict[str, Any]:
        st = self.ctl.ls_status()
        st["enabled"] = True
        st["computed_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        st["failsafe_active"] = False
        return st

    def ws_frame(self, frame: dict[str, Any], peer: str) -> None:
        return None  # a controller takes no allocation frames


async def _controller(t: LoadSharing, bind: str, port: int, me: str) -> None:
    s = t.settings
    demanding: tuple[bool, int] | None = None
    shown = Shown(t, me)
    ctl = OpenEvseController(me, group_settings(t), log=t.log, on_local_limit=t.set_limit)
    store = MemberStore(t.ctx.state_dir, t.log)
    service = ControllerService(t, ctl, store, me)
    api = HttpApi(service, t.log)
    await ctl.start()
    await api.start(bind, port)
    for host in store.peers:
        await ctl.add_member(host, reciprocal=False)
    t.log.info("OpenEVSE controller on %s with %d member(s)", me, len(store.peers))
    try:
        while not t.ctx.stopping.is_set():
            local = (t.local[0], t.writer.allocation_max()) if t.local is not None else None
            if local is not None and local != demanding:
                demanding = local
                ctl.set_local(local[0], s.loadsharing_min_current, local[1],
                              s.loadsharing_priority)
            api.hub.publish(service.status())  # uptime moves: /ws never goes silent
            states = list(ctl.last_plan.states.values()) if ctl.last_plan else []
            online = sum(1 for x in states if x == "online")
            await shown.show("controller", ctl.local_sent, False, online + 1,
                             len(states) - online)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await t.ctx.stopping.wait()
    finally:
        await api.stop()
        await ctl.stop()
