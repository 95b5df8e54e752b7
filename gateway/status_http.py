"""The supervisor's small HTTP server: the status page, its JSON and event stream, /metrics.

    GET /                 the status page (gateway/web/index.html: one file, no build step,
                          nothing loaded from outside the box)
    GET /api/state        transports, devices' latest values, load-sharing groups (JSON)
    GET /api/events       the same picture as Server-Sent Events, one event a second
    GET /api/transports   the transports alone (``protocol-gateway status`` reads this)
    GET /health           200 ok, or 503 naming the failed transports
    GET /metrics          Prometheus text format (docs/metrics.md)

Served on ``[general] http_host:http_port`` (plus the instance offset) from the supervisor's
own event loop by :mod:`gateway.http11` (asyncio streams and h11), not aiohttp: the supervisor
runs for as long as the gateway does, on a Raspberry Pi, and aiohttp cost it ~12.5 MB of RSS
for six GET routes; h11 costs ~0.5 MB. The bounds a LAN-facing server needs (head size,
request deadline, connection cap, garbage answered 400) are http11's. Server-Sent Events
rather than a WebSocket: one-way is all the page needs, and the browser reconnects by itself
when the gateway restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable
from importlib import resources
from typing import Any

import gateway
from gateway.http11 import HttpServer, Request, Response, json_response
from gateway.live import LiveState

log = logging.getLogger("supervisor.http")
EVENT_INTERVAL = 1.0


def _page() -> bytes:
    return resources.files("gateway").joinpath("web/index.html").read_bytes()


def make_server(live: LiveState | Callable[[], list[dict[str, Any]]],
                **bounds: Any) -> HttpServer:
    """The routes on an :class:`HttpServer` (not listening yet); ``bounds`` go to it."""
    if not isinstance(live, LiveState):
        live = LiveState(live)
    state = live
    page = _page()
    server = HttpServer({}, log=log, **bounds)

    async def index(_: Request) -> Response:
        return Response(200, [("Content-Type", "text/html; charset=utf-8"),
                              ("Cache-Control", "no-cache")], page)

    async def health(_: Request) -> Response:
        transports = state.transports()
        failed = [t["name"] for t in transports if t["state"] == "failed"]
        body = {"status": "degraded" if failed else "ok", "failed": failed,
                "transports": len(transports), "version": gateway.__version__}
        return json_response(body, status=503 if failed else 200)

    async def list_transports(_: Request) -> Response:
        return json_response({"transports": state.transports()})

    async def full_state(_: Request) -> Response:
        return json_response(state.state())

    async def event_stream() -> AsyncGenerator[bytes, None]:
        yield b"retry: 2000\n\n"
        while not server.closing.is_set():  # set on shutdown: the stream ends at once
            data = json.dumps(state.state(), separators=(",", ":"), default=str)
            yield f"event: state\ndata: {data}\n\n".encode()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(EVENT_INTERVAL):
                    await server.closing.wait()

    async def events(_: Request) -> Response:
        return Response(200, [("Content-Type", "text/event-stream"),
                              ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")],
                        stream=event_stream())

    async def metrics(_: Request) -> Response:
        from gateway import metrics as prom  # prometheus-client only when scraped

        return Response(200, [("Content-Type", prom.CONTENT_TYPE)], prom.render(state))

    server.routes.update({"/": index, "/health": health, "/api/transports": list_transports,
                          "/api/state": full_state, "/api/events": events,
                          "/metrics": metrics})
    return server


async def start(live: LiveState | Callable[[], list[dict[str, Any]]], host: str,
                port: int) -> HttpServer | None:
    """Start serving (stop with ``await server.close()``, which does not wait on open event
    streams); a port in use is reported once and the gateway runs on without the page."""
    if port == 0:
        return None
    server = make_server(live)
    try:
        await server.start(host, port)
    except OSError as exc:
        log.error("status page not started: cannot listen on %s:%d: %s", host, port,
                  exc.strerror or exc)
        return None
    shown = f"[{host}]" if ":" in host else host
    log.info("status page on http://%s:%d/ (JSON: /api/state, Prometheus: /metrics)", shown, port)
    return server
