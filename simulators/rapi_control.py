"""The RAPI simulator's HTTP control interface (loopback), so tests and the demo can drive it.

    GET  /state                      the simulated EV's draw, state, energy... as JSON
    POST /plug, /unplug              the cable
    POST /ev      {"max_rate": 16, "soc": 0.9, "battery_kwh": 60, "wants_charge": true}
    POST /fault   {"name": "gfci", "active": true}     (names: gfci no_ground stuck_relay
                                                         over_temperature; active false clears)
    POST /noise   {"bytes": 64} or {"text": "..."}     garbage to the client, for robustness
    POST /quirks  {"echo_seq": false, "legacy": true, "mute": false, "hold_async": true}

Every POST answers with the state, like GET /state.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from simulators.evse_model import FAULTS

if TYPE_CHECKING:
    from simulators.rapi_device import RapiDevice


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def _routes(device: RapiDevice) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    def state() -> web.Response:
        return web.json_response(device.snapshot())

    @routes.get("/state")
    async def get_state(_: web.Request) -> web.Response:
        return state()

    @routes.post("/plug")
    async def plug(_: web.Request) -> web.Response:
        device.plug()
        return state()

    @routes.post("/unplug")
    async def unplug(_: web.Request) -> web.Response:
        device.unplug()
        return state()

    @routes.post("/ev")
    async def ev(request: web.Request) -> web.Response:
        body = await _json(request)
        car = device.model.ev
        try:
            if "max_rate" in body:
                car.max_rate_a = float(body["max_rate"])
            if "soc" in body:
                car.soc = min(1.0, max(0.0, float(body["soc"])))
            if "battery_kwh" in body:
                car.battery_kwh = max(0.1, float(body["battery_kwh"]))
            if "wants_charge" in body:
                car.wants_charge = bool(body["wants_charge"])
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"bad EV value: {exc}") from None
        device.notify()
        return state()

    @routes.post("/fault")
    async def fault(request: web.Request) -> web.Response:
        body = await _json(request)
        name = body.get("name")
        if name not in FAULTS:
            raise web.HTTPBadRequest(text=f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        if body.get("active", True):
            device.inject_fault(name)
        else:
            device.clear_fault(name)
        return state()

    @routes.post("/noise")
    async def noise(request: web.Request) -> web.Response:
        body = await _json(request)
        if "text" in body:
            data = str(body["text"]).encode("latin-1", "replace")
        else:
            data = os.urandom(max(0, min(int(body.get("bytes", 64)), 65536)))
        device.send(data)
        return state()

    @routes.post("/capacity")
    async def capacity(request: web.Request) -> web.Response:
        """The current changed at the charger itself (its display, its WiFi page)."""
        body = await _json(request)
        try:
            amps = int(body["amps"])
        except (KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"bad amps: {exc}") from None
        device.model.set_current(amps, "volatile")
        device.notify()
        return state()

    @routes.post("/quirks")
    async def quirks(request: web.Request) -> web.Response:
        body = await _json(request)
        q = device.responder.quirks
        for key in ("echo_seq", "legacy", "mute", "hold_async", "reject_seq", "no_g0"):
            if key in body:
                setattr(q, key, bool(body[key]))
        return state()

    return routes


async def start_http(device: RapiDevice, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the control interface; returns the runner (to clean up) and the bound port."""
    app = web.Application()
    app.add_routes(_routes(device))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # the only way to learn the port bound for port 0
    server: Any = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None else port
    return runner, int(bound)
