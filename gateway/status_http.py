"""The supervisor's small HTTP server: the status page, its JSON and event stream, /metrics.

    GET /                 the status page (gateway/web/index.html: one file, no build step,
                          nothing loaded from outside the box)
    GET /api/state        transports, devices' latest values, load-sharing groups (JSON)
    GET /api/events       the same picture as Server-Sent Events, one event a second
    GET /api/transports   the transports alone (``protocol-gateway status`` reads this)
    GET /health           200 ok, or 503 naming the failed transports
    GET /metrics          Prometheus text format (docs/metrics.md)

Served on ``[general] http_host:http_port`` (plus the instance offset) from the supervisor's
own event loop with aiohttp (already a dependency of influxdb-client's async API). Server-Sent
Events rather than a WebSocket: one-way is all the page needs, and the browser reconnects by
itself when the gateway restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

import gateway
from gateway.live import LiveState

log = logging.getLogger("supervisor.http")
EVENT_INTERVAL = 1.0


def _page() -> bytes:
    return resources.files("gateway").joinpath("web/index.html").read_bytes()


def make_app(live: LiveState | Callable[[], list[dict[str, Any]]]) -> web.Application:
    if not isinstance(live, LiveState):
        live = LiveState(live)
    state = live
    page = _page()
    closing = asyncio.Event()  # set on shutdown: open event streams end at once

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def health(_: web.Request) -> web.Response:
        transports = state.transports()
        failed = [t["name"] for t in transports if t["state"] == "failed"]
        body = {"status": "degraded" if failed else "ok", "failed": failed,
                "transports": len(transports), "version": gateway.__version__}
        return web.json_response(body, status=503 if failed else 200)

    async def list_transports(_: web.Request) -> web.Response:
        return web.json_response({"transports": state.transports()})

    async def full_state(_: web.Request) -> web.Response:
        return web.json_response(state.state())

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await response.write(b"retry: 2000\n\n")
            while not closing.is_set():
                data = json.dumps(state.state(), separators=(",", ":"), default=str)
                await response.write(f"event: state\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closing.wait(), EVENT_INTERVAL)
        return response

    async def on_shutdown(_: web.Application) -> None:
        closing.set()

    async def metrics(_: web.Request) -> web.Response:
        from gateway import metrics as prom  # prometheus-client only when scraped

        return web.Response(body=prom.render(state),
                            headers={"Content-Type": prom.CONTENT_TYPE})

    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/api/transports", list_transports)
    app.router.add_get("/api/state", full_state)
    app.router.add_get("/api/events", events)
    app.router.add_get("/metrics", metrics)
    return app


async def start(live: LiveState | Callable[[], list[dict[str, Any]]], host: str,
                port: int) -> web.AppRunner | None:
    """Start serving; a port in use is reported once and the gateway runs on without it."""
    if port == 0:
        return None
    # shutdown_timeout: open event streams must not hold up the gateway's stop
    runner = web.AppRunner(make_app(live), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        log.error("status page not started: cannot listen on %s:%d: %s", host, port,
                  exc.strerror or exc)
        await runner.cleanup()
        return None
    shown = f"[{host}]" if ":" in host else host
    log.info("status page on http://%s:%d/ (JSON: /api/state, Prometheus: /metrics)", shown, port)
    return runner
