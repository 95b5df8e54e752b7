"""The node's HTTP side, on its own port: OpenEVSE-compatible REST and ``/ws``.

Routes (docs/openapi/loadsharing.yaml): ``GET /status``, ``GET /ws``, ``GET|POST /config``,
``GET|POST /loadsharing/peers``, ``DELETE /loadsharing/peers/{host}``, ``POST
/loadsharing/discover``, ``GET /loadsharing/status``. Bodies are JSON, errors ``{"msg": ...}``,
a wrong method is 405 ``{"msg": "Method not allowed"}`` (OpenEVSE's words).

What the routes *do* lives in :class:`Service` (``network.py`` implements it); this module only
speaks HTTP: parsing, status codes, write authentication (``auth.py``) and the ``/ws`` hub, which
sends the full status on connect, then only changed keys, answers ``{"ping": n}`` with
``{"pong": 1}``, and cuts a client that floods or sends oversized frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import time
from typing import Any, Protocol
from urllib.parse import unquote

from aiohttp import WSMsgType, web

from gateway.backoff import RepeatLog
from transports.loadsharing.auth import GroupAuth

MAX_BODY = 16 * 1024  # a /config body or a /ws frame from a client (a full config is ~1 kB)
#: the ConfigWrite keys the OpenAPI document declares as strings (a type error is a 400 here,
#: before the service sees the body; ranges and cross-key rules are the service's)
STRING_KEYS = ("loadsharing_group_id", "loadsharing_failsafe_mode", "loadsharing_role",
               "loadsharing_controller_host")
#: the methods each route answers (a 405 names them in ``Allow``)
ALLOWED = {"/config": "GET, POST", "/loadsharing/peers": "GET, POST",
           "/loadsharing/peers/{host}": "DELETE", "/loadsharing/discover": "POST",
           "/loadsharing/status": "GET", "/status": "GET", "/ws": "GET"}
WS_RATE = 20.0  # frames per second a /ws client may send, sustained
WS_BURST = 40.0
WS_QUEUE = 256  # frames queued for a slow client before it is cut


class Service(Protocol):
    auth: GroupAuth

    def status(self) -> dict[str, Any]: ...
    def config_view(self) -> dict[str, Any]: ...
    async def post_config(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]: ...
    def peers_list(self) -> list[dict[str, Any]]: ...
    async def add_peer(self, host: str, reciprocal: bool) -> tuple[int, str]: ...
    async def delete_peer(self, host: str) -> tuple[int, str]: ...
    def discover(self) -> None: ...
    def ls_status(self) -> dict[str, Any]: ...
    def ws_frame(self, frame: dict[str, Any], peer: str) -> None: ...


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 15:
        raise ValueError(f"{text[:20]}... is too large")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(raw: bytes | str) -> Any:
    """JSON without NaN, Infinity or numbers too large for a float (1e309): no current is."""
    return json.loads(raw, parse_float=_finite, parse_int=_int, parse_constant=_no_constant)


def _msg(code: int, text: str) -> web.Response:
    return web.json_response({"msg": text}, status=code)


def _not_allowed(route: str, text: str = "Method not allowed") -> web.Response:
    return web.json_response({"msg": text}, status=405, headers={"Allow": ALLOWED[route]})


class _ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log for this API: a request it cannot parse (a NUL in a header, a
    broken request line) is the client's fault: one WARNING per kind with repeats counted,
    no traceback."""

    def __init__(self, log: logging.Logger, repeats: RepeatLog) -> None:
        super().__init__(log, {})
        self.repeats = repeats

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **_kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        what = " ".join(str(getattr(exc, "message", exc)).split())[:200]
        kind = type(exc).__name__ if exc is not None else "error"
        text = (str(msg) % args if args else str(msg))[:200]
        self.repeats.warn(f"http {kind}", "%s: %s: %s", text, kind, what)


class TokenBucket:
    """``rate`` per second, ``burst`` at most; monotonic time."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class WsHub:
    """Every ``/ws`` client: full status on connect, then deltas, reports as they come."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.clients: set[asyncio.Queue[str | None]] = set()
        self.last: dict[str, Any] = {}
        self.cut = 0

    def publish(self, status: dict[str, Any]) -> None:
        """Send the keys of ``status`` that changed since the last publish."""
        delta = {k: v for k, v in status.items() if self.last.get(k, object()) != v}
        self.last = dict(status)
        if delta:
            self.send(delta)

    def send(self, frame: dict[str, Any]) -> None:
        text = json.dumps(frame, separators=(",", ":"))
        for q in list(self.clients):
            if q.qsize() >= WS_QUEUE:
                self.cut += 1
                self.clients.discard(q)
                q.put_nowait(None)  # a client too slow to keep up is disconnected
            else:
                q.put_nowait(text)


class HttpApi:
    def __init__(self, service: Service, log: logging.Logger) -> None:
        self.service = service
        self.log = log
        self.hub = WsHub(log)
        self.counters = {"ws_flood": 0, "ws_oversize": 0, "ws_bad": 0, "auth_refused": 0}
        self.refusals = RepeatLog(log)  # a fuzzer's thousand refusals: one line per kind
        self.app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY)
        r = self.app.router
        r.add_get("/status", self.get_status)
        r.add_get("/ws", self.ws)
        r.add_route("*", "/config", self.config)
        r.add_route("*", "/loadsharing/peers", self.peers)
        r.add_route("*", "/loadsharing/peers/{host:.+}", self.peer)
        r.add_route("*", "/loadsharing/discover", self.discover)
        r.add_route("*", "/loadsharing/status", self.ls_status)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     logger=_ServerLog(self.log, self.refusals))
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()

    def bound_port(self) -> int:
        """The port the API listens on (after :meth:`start` with port 0)."""
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        for q in list(self.hub.clients):
            q.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- plumbing ---------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if (request.content_length or 0) > MAX_BODY:  # refused before a byte of it is read
            response = _msg(413, "Request too large")
            response.force_close()  # the unread body is not ours to drain
            return response
        try:
            return await handler(request)
        except web.HTTPMethodNotAllowed as exc:
            return web.json_response({"msg": "Method not allowed"}, status=405,
                                     headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
        except web.HTTPNotFound:
            return _msg(404, "Not found")
        except web.HTTPRequestEntityTooLarge:
            return _msg(413, "Request too large")

    async def _authorised(self, request: web.Request, body: bytes) -> web.Response | None:
        why = self.service.auth.check_request(request.method, request.path, body, request.headers)
        if why is None:
            return None
        self.counters["auth_refused"] += 1
        self.refusals.warn(f"auth {why}", "refused %s %s from %s: %s", request.method,
                           request.path[:100], request.remote, why)
        return _msg(401, why)

    async def _json(self, request: web.Request) -> tuple[Any, web.Response | None]:
        raw = await request.read()
        refused = await self._authorised(request, raw)
        if refused is not None:
            return None, refused
        try:
            return loads(raw), None
        except (UnicodeDecodeError, ValueError):
            return None, _msg(400, "Invalid JSON")

    # -- routes -----------------------------------------------------------------------------
    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.service.status())

    async def config(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(self.service.config_view())
        if request.method != "POST":
            return _not_allowed("/config")
        raw = await request.read()
        refused = await self._authorised(request, raw)
        if refused is not None:
            return refused
        if not raw.strip():
            return _msg(400, "No Body")
        try:
            body = loads(raw)
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            return _msg(400, "Could not parse JSON")
        for key in STRING_KEYS:
            if key in body and not isinstance(body[key], str):
                return _msg(400, f"{key} must be a string")
        code, answer = await self.service.post_config(body)
        return web.json_response(answer, status=code)

    async def peers(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(self.service.peers_list())
        if request.method == "DELETE":
            return await self.peers_delete(request)
        if request.method != "POST":
            return _not_allowed("/loadsharing/peers")
        body, err = await self._json(request)
        if err is not None:
            return err
        if not isinstance(body, dict):
            return _msg(400, "Invalid JSON")
        if "host" not in body:
            return _msg(400, "Missing required 'host' parameter")
        host = body["host"]
        if not isinstance(host, str):
            return _msg(400, "Invalid host format - must contain domain or IP")
        reciprocal = body.get("reciprocal", True) is not False
        code, text = await self.service.add_peer(host.strip(), reciprocal)
        return _msg(code, text)

    async def peers_delete(self, request: web.Request) -> web.Response:
        return _not_allowed("/loadsharing/peers", "Use DELETE /loadsharing/peers/{host}")

    async def peer(self, request: web.Request) -> web.Response:
        if request.method != "DELETE":
            return _not_allowed("/loadsharing/peers/{host}")
        raw = await request.read()
        refused = await self._authorised(request, raw)
        if refused is not None:
            return refused
        host = unquote(request.match_info["host"])
        code, text = await self.service.delete_peer(host)
        return _msg(code, text)

    async def discover(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return _not_allowed("/loadsharing/discover")
        refused = await self._authorised(request, await request.read())
        if refused is not None:
            return refused
        self.service.discover()
        return _msg(200, "done")

    async def ls_status(self, request: web.Request) -> web.Response:
        if request.method != "GET":
            return _not_allowed("/loadsharing/status")
        return web.json_response(self.service.ls_status())

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(max_msg_size=MAX_BODY, heartbeat=None)
        await sock.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        peer = f"{request.remote}"
        full = self.service.status()
        await sock.send_str(json.dumps(full, separators=(",", ":")))
        self.hub.clients.add(queue)
        sender = asyncio.create_task(self._ws_send(sock, queue))
        bucket = TokenBucket(WS_RATE, WS_BURST)
        try:
            async for msg in sock:
                if msg.type == WSMsgType.ERROR:
                    self.counters["ws_oversize"] += 1
                    self.refusals.warn("ws error", "/ws client %s: %s", peer,
                                       str(sock.exception())[:200])
                    break
                if msg.type != WSMsgType.TEXT:
                    continue
                if not bucket.take():
                    self.counters["ws_flood"] += 1
                    self.refusals.warn("ws flood", "/ws client %s floods: disconnected", peer)
                    break
                self._ws_in(sock, msg.data, peer, queue)
        finally:
            self.hub.clients.discard(queue)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            await sock.close()
        return sock

    def _ws_in(self, sock: web.WebSocketResponse, data: str, peer: str,
               queue: asyncio.Queue[str | None]) -> None:
        try:
            frame = loads(data)
        except ValueError:
            self.counters["ws_bad"] += 1
            self.refusals.warn("ws non-JSON", "/ws client %s sent non-JSON: %s", peer,
                               data[:200].encode("unicode_escape").decode("ascii")[:200])
            return
        if isinstance(frame, dict) and "ping" in frame:
            queue.put_nowait('{"pong":1}')
        elif isinstance(frame, dict):
            self.service.ws_frame(frame, peer)

    async def _ws_send(self, sock: web.WebSocketResponse, queue: asyncio.Queue[str | None]) -> None:
        while True:
            text = await queue.get()
            if text is None:
                await sock.close()
                return
            await sock.send_str(text)
