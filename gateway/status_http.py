"""The supervisor's small HTTP API: ``GET /health`` and ``GET /api/transports``.

Served on ``[general] http_host:http_port`` (plus the instance offset) from the supervisor's
own event loop with aiohttp (already a dependency of influxdb-client's async API).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

import gateway

log = logging.getLogger("supervisor.http")


def make_app(snapshot: Callable[[], list[dict[str, Any]]]) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        transports = snapshot()
        failed = [t["name"] for t in transports if t["state"] == "failed"]
        body = {"status": "degraded" if failed else "ok", "failed": failed,
                "transports": len(transports), "version": gateway.__version__}
        return web.json_response(body, status=503 if failed else 200)

    async def list_transports(_: web.Request) -> web.Response:
        return web.json_response({"transports": snapshot()})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/api/transports", list_transports)
    return app


async def start(snapshot: Callable[[], list[dict[str, Any]]], host: str,
                port: int) -> web.AppRunner | None:
    """Start serving; a port in use is reported once and the gateway runs on without it."""
    if port == 0:
        return None
    runner = web.AppRunner(make_app(snapshot), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        log.error("status API not started: cannot listen on %s:%d: %s", host, port,
                  exc.strerror or exc)
        await runner.cleanup()
        return None
    log.info("status API on http://%s:%d/api/transports", host, port)
    return runner
