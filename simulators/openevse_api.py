"""The simulated OpenEVSE node's HTTP side: the firmware's REST API, ``/ws``, and ``/sim/*``.

Firmware routes (shapes, codes and messages as in LOADSHARING.md and the branch's
``web_server_loadsharing.cpp``): ``GET /status``, ``GET /ws``, ``GET/POST /config``,
``GET/POST /loadsharing/peers``, ``DELETE /loadsharing/peers/{host}``, ``POST
/loadsharing/discover``, ``GET /loadsharing/status``. A wrong method is 405
``{"msg":"Method not allowed"}``.

Simulator control (not in the firmware), for tests and the demo::

    GET  /sim/ev       the EV: {"draw_a", "pilot", "state", "plugged", "soc", ...}
    GET  /sim/state    the node: role, limit, member failsafe, frames, peers, EV
    POST /sim/plug, /sim/unplug
    POST /sim/ev       {"max_rate": 16, "soc": 0.9, "wants_charge": false}

Size: a little over the ~400-line guide: every route of the firmware's API in one table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from simulators import openevse_loadsharing as ls
from simulators.evse_model import DISABLED, SLEEPING

if TYPE_CHECKING:
    from simulators.openevse_node import OpenEvseNode

log = logging.getLogger("openevse_node.api")


def _msg(code: int, text: str) -> web.Response:
    return web.json_response({"msg": text}, status=code)


async def _not_allowed(_: web.Request) -> web.Response:
    return _msg(405, "Method not allowed")


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.text())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def build_app(node: OpenEvseNode) -> web.Application:
    app = web.Application()
    r = web.RouteTableDef()

    # -- status and /ws ---------------------------------------------------------------------------
    @r.get("/status")
    async def status(_: web.Request) -> web.Response:
        return web.json_response(node.status())

    @r.get("/ws")
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(autoping=True)
        await sock.prepare(request)
        node.ws_clients.add(sock)
        try:
            node.broadcast(node.status())  # the firmware sends it to every client
            async for msg in sock:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    log.debug("ws: not JSON: %r", msg.data[:200])
                    continue
                if not isinstance(data, dict):
                    continue
                if "ping" in data:
                    await sock.send_str('{"pong":1}')
                frame = data.get("loadsharing")
                if isinstance(frame, dict) and "target_current" in frame:
                    node.on_frame(frame)
        finally:
            node.ws_clients.discard(sock)
        return sock

    # -- /config ----------------------------------------------------------------------------------
    @r.get("/config")
    async def config_get(_: web.Request) -> web.Response:
        m = node.model
        doc: dict[str, Any] = {
            "firmware": m.firmware,
            "protocol": "-",
            "buildenv": ls_build(),
            "version": ls_version(),
            "evse_serial": "",
            "wifi_serial": node.serial.upper(),
            "hostname": node.hostname,
            "max_current_soft": m.configured_max_a,
            "min_current_hard": m.min_a,
            "max_current_hard": m.hw_max_a,
        }
        doc.update(node.config)
        return web.json_response(doc)

    @r.post("/config")
    async def config_post(request: web.Request) -> web.Response:
        text = await request.text()
        if not text:
            return _msg(400, "No Body")
        body = await _body(request)
        if body is None:
            return _msg(400, "Could not parse JSON")
        node.config_posts.append(body)
        if ls.member_write_forbidden(node.role, body):
            return _msg(403, ls.MSG_READ_ONLY)
        error = ls.validate(body, node.config)
        if error:
            return _msg(400, error)
        changed = False
        group_changed = False
        old_role = node.role
        for key, value in body.items():
            if key in node.config and node.config[key] != value:
                node.config[key] = value
                changed = True
                group_changed |= key in ls.GROUP_KEYS
        if "max_current_soft" in body and body["max_current_soft"] != node.model.configured_max_a:
            node.model.configured_max_a = int(body["max_current_soft"])
            changed = True
        if node.role != old_role:
            node.set_role(node.role)
        if changed:
            node.config_version += 1
            node.push_changes()
        if group_changed and node.is_controller:
            node.poller.config_changed()
        return web.json_response(
            {"config_version": node.config_version, "msg": "done" if changed else "no change"}
        )

    # -- /loadsharing -----------------------------------------------------------------------------
    @r.get("/loadsharing/peers")
    async def peers_get(_: web.Request) -> web.Response:
        return web.json_response(_peer_list(node))

    @r.post("/loadsharing/peers")
    async def peers_post(request: web.Request) -> web.Response:
        body = await _body(request)
        if body is None:
            return _msg(400, "Invalid JSON")
        if "host" not in body:
            return _msg(400, "Missing required 'host' parameter")
        host = str(body["host"]).strip()
        reciprocal = bool(body.get("reciprocal", True))
        if node.is_member:
            return _msg(403, ls.MSG_READ_ONLY)
        if not host:
            return _msg(400, "Host cannot be empty")
        if node.is_local(host):
            return _msg(400, "Cannot add local device as peer")
        if "." not in host and ":" not in host:
            return _msg(400, "Invalid host format - must contain domain or IP")
        if not node.poller.add(host):
            return _msg(200, "already in group")
        if reciprocal:
            node.spawn(node.poller.reciprocal_add(host))
        return _msg(200, "done")

    @r.delete("/loadsharing/peers")
    async def peers_delete_all(_: web.Request) -> web.Response:
        return _msg(405, "Use DELETE /loadsharing/peers/{host}")

    @r.route("*", "/loadsharing/peers/")
    async def peer_none(_: web.Request) -> web.Response:
        return _msg(400, "Invalid path")

    @r.route("*", "/loadsharing/peers/{host:.+}")
    async def peer_one(request: web.Request) -> web.Response:
        if request.method != "DELETE":
            return _msg(405, "Method not allowed")
        host = unquote(request.match_info["host"])
        if node.is_member:
            return _msg(403, ls.MSG_READ_ONLY)
        if node.is_local(host):
            return _msg(400, "Cannot remove local device from group")
        await node.poller.push_reset(host)
        if not node.poller.remove(host):
            return _msg(404, "Peer not found")
        return _msg(200, "done")

    @r.post("/loadsharing/discover")
    async def discover(_: web.Request) -> web.Response:
        return _msg(200, "done")

    @r.get("/loadsharing/status")
    async def ls_status(_: web.Request) -> web.Response:
        return web.json_response(_group_status(node))

    # -- simulator control ------------------------------------------------------------------------
    @r.get("/sim/ev")
    async def sim_ev(_: web.Request) -> web.Response:
        return web.json_response(_ev(node))

    @r.get("/sim/state")
    async def sim_state_route(_: web.Request) -> web.Response:
        return web.json_response(sim_state(node))

    @r.post("/sim/plug")
    async def sim_plug(_: web.Request) -> web.Response:
        node.plug()
        return web.json_response(_ev(node))

    @r.post("/sim/unplug")
    async def sim_unplug(_: web.Request) -> web.Response:
        node.unplug()
        return web.json_response(_ev(node))

    @r.post("/sim/ev")
    async def sim_ev_set(request: web.Request) -> web.Response:
        body = await _body(request)
        if body is None:
            return _msg(400, "body must be a JSON object")
        car = node.model.ev
        try:
            if "max_rate" in body:
                car.max_rate_a = float(body["max_rate"])
            if "soc" in body:
                car.soc = min(1.0, max(0.0, float(body["soc"])))
            if "wants_charge" in body:
                car.wants_charge = bool(body["wants_charge"])
        except (TypeError, ValueError) as exc:
            return _msg(400, f"bad EV value: {exc}")
        node.push_changes()
        return web.json_response(_ev(node))

    app.add_routes(r)
    # the firmware's 405 for the other methods on its fixed paths
    for path in (
        "/status",
        "/config",
        "/loadsharing/peers",
        "/loadsharing/discover",
        "/loadsharing/status",
    ):
        app.router.add_route("*", path, _not_allowed)
    return app


def ls_build() -> str:
    from simulators.openevse_node import BUILD

    return BUILD


def ls_version() -> str:
    from simulators.openevse_node import FIRMWARE_VERSION

    return FIRMWARE_VERSION


def _ev(node: OpenEvseNode) -> dict[str, Any]:
    m = node.model
    return {
        "draw_a": m.ev.draw_a,
        "pilot": m.capacity_a,
        "state": m.state,
        "plugged": m.ev.plugged,
        "wants_charge": m.ev.wants_charge,
        "max_rate": m.ev.max_rate_a,
        "soc": round(m.ev.soc, 4),
        "limit": node.limit,
    }


def _peer_list(node: OpenEvseNode) -> list[dict[str, Any]]:
    import time

    now = time.monotonic()
    rows = [
        {
            "id": node.serial,
            "name": node.hostname,
            "host": node.host,
            "url": f"http://{node.host}",
            "ip": "127.0.0.1",
            "online": True,
            "joined": True,
            "isLocal": True,
        }
    ]
    for host in node.group_peers:
        peer = node.poller.peers.get(host)
        online = peer is not None and peer.online(now, node.poller.timeout)
        ident = peer.identity if peer is not None else {}
        rows.append(
            {
                "id": ident.get("wifi_serial", host).lower(),
                "name": ident.get("hostname", host),
                "host": host,
                "url": f"http://{host}",
                "ip": host.rsplit(":", 1)[0],
                "online": online,
                "joined": True,
                "isLocal": False,
            }
        )
    return rows


def _group_status(node: OpenEvseNode) -> dict[str, Any]:
    poller = node.poller
    peers = []
    for row in _peer_list(node):
        entry = dict(row)
        entry.pop("isLocal", None)
        if row["isLocal"]:
            st = node.status()
            entry["version"] = ls_version()
            entry["last_seen"] = int(node.uptime())
        else:
            peer = poller.peers.get(row["host"])
            st = peer.status if peer is not None and peer.has_status else {}
            entry["version"] = peer.identity.get("version", "") if peer is not None else ""
            entry["last_seen"] = int(peer.last_seen_uptime) if peer is not None else 0
        if st:
            entry["status"] = {
                "amp": st.get("amp"),
                "voltage": st.get("voltage"),
                "pilot": st.get("pilot"),
                "vehicle": st.get("vehicle"),
                "state": st.get("state"),
                "min_current": st.get("loadsharing_min_current"),
                "max_current": st.get("loadsharing_max_current"),
                "priority": st.get("loadsharing_priority"),
            }
        peers.append(entry)
    online, offline = poller.online_count()
    failsafe = node.member_failsafe if node.is_member else poller.failsafe_active
    return {
        "enabled": bool(node.config["loadsharing_enabled"]),
        "group_id": node.config["loadsharing_group_id"],
        "computed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "failsafe_active": failsafe,
        "online_count": online,
        "offline_count": offline,
        "peers": peers,
        "allocations": [a.as_json() for a in poller.allocations],
    }


def status_document(node: OpenEvseNode) -> dict[str, Any]:
    """``GET /status``: OpenEVSE units (amp mA, voltage V, pilot A)."""
    m = node.model
    voltage = round(m.voltage_mv / 1000)
    state = m.state
    return {
        "mode": "STA",
        "wifi_client_connected": 1,
        "net_connected": 1,
        "srssi": -60,
        "ipaddress": "127.0.0.1",
        "evse_connected": 1,
        "amp": m.charging_ma,
        "voltage": voltage,
        "power": round(m.ev.draw_a * voltage, 1),
        "pilot": m.capacity_a,
        "max_current": m.configured_max_a,
        "temp": round(m.temperature_c * 10),
        "state": state,
        "vehicle": 1 if m.vflags & 0x0100 else 0,
        "status": "disabled" if state in (SLEEPING, DISABLED) else "active",
        "elapsed": int(m.elapsed_s),
        "session_energy": round(m.session_ws / 3600, 1),
        "total_energy": round(m.total_wh / 1000, 3),
        "config_version": node.config_version,
        "loadsharing_min_current": m.min_a,
        "loadsharing_max_current": m.configured_max_a,
        "loadsharing_priority": node.config["loadsharing_priority"],
        "loadsharing_peers_version": node.poller.peers_version,
        "loadsharing_status_version": node.poller.status_version,
        "loadsharing_joined_peers": list(node.group_peers),
        "loadsharing_group_current_total": node.poller.group_current_total(),
    }


def sim_state(node: OpenEvseNode) -> dict[str, Any]:
    """``GET /sim/state``: what the simulator knows that the firmware does not show."""
    m = node.model
    return {
        "host": node.host,
        "hostname": node.hostname,
        "role": node.role,
        "enabled": node.config["loadsharing_enabled"],
        "controller_host": node.config["loadsharing_controller_host"],
        "limit": node.limit,
        "limit_reason": node.limit_reason,
        "member_failsafe": node.member_failsafe,
        "frames": len(node.frames),
        "last_frame": node.frames[-1] if node.frames else None,
        "state": m.state,
        "pilot": m.capacity_a,
        "plugged": m.ev.plugged,
        "draw_a": m.ev.draw_a,
        "ev_max_rate": m.ev.max_rate_a,
        "soc": round(m.ev.soc, 4),
        "wants_charge": m.ev.wants_charge,
        "ws_clients": len(node.ws_clients),
        "peers": node.poller.snapshot(),
    }
