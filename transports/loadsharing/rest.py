"""What the REST routes do (``http_api.py`` speaks HTTP; this decides), OpenEVSE's answers.

A mixin of :class:`~transports.loadsharing.network.NetworkNode`: the attributes it uses
(``group``, ``config``, ``members``, ``clients``, ``t`` ...) are set there.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from transports.loadsharing import config_sync as cs
from transports.loadsharing.members import valid_host

if TYPE_CHECKING:
    from transports.loadsharing.network import NetworkNode

from transports.loadsharing.settings import MSG_READ_ONLY as READ_ONLY

#: our allocation reasons -> OpenEVSE's words on the wire (ours kept in ``pgw_reason``)
REASONS = {"capped_at_max": "equal_share", "failsafe": "failsafe_disabled"}
LEAVE = {"loadsharing_enabled": False, "loadsharing_role": "", "loadsharing_controller_host": ""}


def _same_host(a: str, b: str) -> bool:
    return a.lower().rstrip(".") == b.lower().rstrip(".")


class RestService:
    # -- /config ------------------------------------------------------------------------------
    def config_view(self: NetworkNode) -> dict[str, Any]:
        s, cfg = self.t.settings, self.group
        return {
            "wifi_serial": self.device_id.upper(), "hostname": self.node_id,
            "config_version": self.general_version,
            "loadsharing_enabled": self.enabled,
            **cfg.wire(self.device_id),
            "loadsharing_priority": self.priority,
            "loadsharing_rotation_interval": s.loadsharing_rotation_interval,
            "loadsharing_role": self.role,
            "loadsharing_controller_host": self.controller_host,
            "loadsharing_min_current": s.loadsharing_min_current,
            "loadsharing_max_current": s.loadsharing_max_current,
            "loadsharing_auth": self.auth.enabled,
        }

    async def post_config(self: NetworkNode, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if cs.VERSION in body:  # a peer's push
            ok, why = self.adopt(body, "pushed")
            if ok or (why == "stale" and body.get(cs.HASH) == self.group.hash):
                return 200, {"msg": "done", "config_version": self.general_version}
            if why == "stale":
                return 409, {"msg": "stale config version", **self.group.wire(self.device_id)}
            return 400, {"msg": why}
        ls = {k: v for k, v in body.items() if k.startswith("loadsharing_")}
        role = body.get("loadsharing_role", None)
        if self.role == "member" and ls and role not in ("member", ""):
            return 403, {"msg": READ_ONLY}
        controller = ls.get("loadsharing_controller_host")
        if role == "member" and isinstance(controller, str) and controller:
            return self.join_openevse(body, controller)  # an OpenEVSE controller's push
        synced = {k: ls[k] for k in cs.SYNCED if k in ls}
        merged = {**self.group.values, **synced}
        msg = cs.check_group(merged, len(self.group.members)) if synced else None
        if msg is None:
            msg = self.t.settings.above_ceiling(synced)
        if msg is None and "loadsharing_priority" in ls:
            p = ls["loadsharing_priority"]
            if isinstance(p, bool) or not isinstance(p, int):
                msg = "loadsharing_priority must be an integer"
        if msg is None and "loadsharing_group_id" in synced \
                and not isinstance(synced["loadsharing_group_id"], str):
            msg = "loadsharing_group_id must be a string"
        if msg is not None:
            return 400, {"msg": msg}
        before = self.group
        if ls.get("loadsharing_enabled") is False and self.members.peers:
            self.log.warning("load sharing disabled over REST: leaving the group %s",
                             ", ".join(self.members.peers))
            self.config.local_change(synced, members=())
        elif synced:
            self.config.local_change(synced)
        if isinstance(role, str) and role in ("", "member", "controller"):
            self.role = role
        if isinstance(ls.get("loadsharing_controller_host"), str):
            self.controller_host = ls["loadsharing_controller_host"]
        changed_priority = "loadsharing_priority" in ls and ls["loadsharing_priority"] != \
            self.priority
        if changed_priority:
            self.priority = ls["loadsharing_priority"]
        self.general_version += 1
        if changed_priority and self.group is before:
            self.on_group_change()
        self.group_changed(before)
        self.publish()
        return 200, {"msg": "done", "config_version": self.general_version}

    # -- /loadsharing/peers -------------------------------------------------------------------
    def _entry(self: NetworkNode, host: str) -> dict[str, Any]:
        c = self.clients.get(host)
        st = c.status if c is not None else {}
        node = self.t.node
        ip = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return {
            "id": str(st.get("id", "")), "name": str(st.get("hostname", host)), "host": host,
            "url": f"http://{host}", "ip": ip,
            "online": node is not None and host in node.view, "joined": True,
            "isLocal": False,
        }

    def peers_list(self: NetworkNode) -> list[dict[str, Any]]:
        ip = self.node_id.rsplit(":", 1)[0]
        out = [{"id": self.device_id, "name": self.node_id, "host": self.node_id,
                "url": f"http://{self.node_id}", "ip": ip, "online": True, "joined": True,
                "isLocal": True}]
        out += [self._entry(h) for h in self.members.peers]
        if self.discovery is not None:
            for f in self.discovery.found():
                if f.host not in self.members.peers and f.host != self.node_id:
                    out.append({"id": f.id, "name": f.hostname, "host": f.host,
                                "url": f"http://{f.host}", "ip": f.ip, "online": True,
                                "joined": False, "isLocal": False})
        return out

    async def add_peer(self: NetworkNode, host: str, reciprocal: bool) -> tuple[int, str]:
        if self.role == "member":
            return 403, READ_ONLY
        bad = valid_host(host)
        if bad is not None:
            return 400, bad
        if _same_host(host, self.node_id):
            return 400, "Cannot add local device as peer"
        if host in self.members.peers:
            return 200, "already in group"
        before = self.group
        self.config.local_change(members=(*self.members.peers, host))
        self.log.info("member %s added (group version %d)", host, self.group.version)
        self.group_changed(before)
        if reciprocal:
            self.spawn(self.post_to(host, "/loadsharing/peers",
                                    {"host": self.node_id, "reciprocal": False}))
        return 200, "done"

    async def delete_peer(self: NetworkNode, host: str) -> tuple[int, str]:
        if self.role == "member":
            return 403, READ_ONLY
        if _same_host(host, self.node_id):
            return 400, "Cannot remove local device from group"
        if host not in self.members.peers:
            return 404, "Peer not found"
        await self.post_to(host, "/config", LEAVE, attempts=1)
        before = self.group
        self.config.local_change(members=tuple(p for p in self.members.peers if p != host))
        self.log.info("member %s removed (group version %d)", host, self.group.version)
        self.group_changed(before)
        return 200, "done"

    def discover(self: NetworkNode) -> None:
        if self.discovery is not None:
            self.discovery.refresh_soon()

    # -- /loadsharing/status ------------------------------------------------------------------
    def config_issues(self: NetworkNode) -> list[str]:
        issues = []
        mine = self.group
        for host, seen in sorted(self.peer_sync.items()):
            c = self.clients.get(host)
            if c is None or c.last_seen is None:
                continue
            if seen.get(cs.HASH) != mine.hash:
                issues.append(f"{host}: config version {seen.get(cs.VERSION)} hash "
                              f"{seen.get(cs.HASH)} differs from ours (version {mine.version} "
                              f"hash {mine.hash})")
        return issues

    def ls_status(self: NetworkNode) -> dict[str, Any]:
        node = self.t.node
        now = time.monotonic()
        peers = []
        for host in self.members.peers:
            entry = self._entry(host)
            c = self.clients[host] if host in self.clients else None
            st = c.status if c is not None else {}
            entry.update({
                "version": st.get(cs.VERSION, st.get("version", "")),
                "last_seen": None if c is None or c.last_seen is None
                else round(c.last_seen - self.started, 3),
                "status": {
                    "amp": st.get("amp", 0), "voltage": st.get("voltage", 0),
                    "pilot": st.get("pilot", 0), "vehicle": st.get("vehicle", 0),
                    "state": st.get("state", 0),
                    "min_current": st.get("loadsharing_min_current", 0),
                    "max_current": st.get("loadsharing_max_current",
                                          st.get("max_current", 0)),
                    "priority": st.get("loadsharing_priority", 0),
                },
                "connected": c is not None and c.connected,
                "age": None if c is None or c.last_seen is None
                else round(now - c.last_seen, 3),
            })
            peers.append(entry)
        allocations = []
        if node is not None:
            for a in node.allocations():
                allocations.append({"id": a["id"], "target_current": a["target_current"],
                                    "reason": REASONS.get(a["reason"], a["reason"]),
                                    "pgw_reason": a["reason"]})
        issues = self.config_issues()
        online = len(node.view) if node is not None else 1
        return {
            "enabled": self.enabled, "group_id": self.group.values["loadsharing_group_id"],
            "computed_at": datetime.now(UTC).isoformat(timespec="seconds").replace(
                "+00:00", "Z"),
            "failsafe_active": node is None or node.failsafe_active,
            "online_count": online,
            "offline_count": len(self.group.members) - online,
            "peers": peers, "allocations": allocations,
            "config_consistent": not issues, "config_issues": issues,
            "config_version": self.group.version, "config_hash": self.group.hash,
            "mode": node.mode if node is not None else "starting",
            "limit": node.limit if node is not None else None,
            "charger": self.t.charger_view(),
            **(self.led_group.snapshot(node) if self.led_group and self.led_group.hosts else {}),
        }

    def ws_frame(self: NetworkNode, frame: dict[str, Any], peer: str) -> None:
        if "loadsharing" in frame:
            self.counters["controller_frames"] += 1
            if self.counters["controller_frames"] == 1:
                self.log.info("an OpenEVSE controller at %s sends allocations: a masterless node "
                              "does not take them (it allocates itself)", peer)
