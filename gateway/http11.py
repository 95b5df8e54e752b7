"""A small HTTP/1.1 server and client on asyncio streams and h11, for the supervisor.

The supervisor serves its status page and polls its load-sharing nodes on loopback; aiohttp
did both and cost it ~12.5 MB of RSS on a Raspberry Pi. h11 (python-hyper/h11, ~0.5 MB
imported) is a sans-I/O codec: bytes in, events out, and sending an event gives the bytes to
write. This module adds only the I/O and the bounds a server facing a LAN needs:

- a request head is at most ``max_head`` bytes (h11's ``max_incomplete_event_size``: 431), a
  request body at most ``max_body`` (413): nothing a client sends grows without limit;
- a request must arrive within ``request_deadline`` seconds of the connection (or of the
  previous response, on a kept-alive connection): a silent or trickling client (slowloris) is
  dropped, with a 408 if it had begun a request;
- at most ``max_connections`` at once; one more is answered 503 and closed at once;
- every write has ``write_deadline``: a client that stops reading (an event stream nobody
  drains) is dropped rather than held;
- garbage is answered 400 (h11's ``RemoteProtocolError``) and that connection closed; unknown
  paths 404, methods other than GET and HEAD 405. Nothing a client sends stops the server.

Keep-alive is h11's: a connection serves requests until either side says close. A handler
returns a :class:`Response`, with a body or a stream (an async generator of chunks, sent
chunked: Server-Sent Events); :meth:`HttpServer.close` sets :attr:`HttpServer.closing`, which
a stream watches to end at once, and cancels whatever has not finished after a short grace,
so open streams never hold up the gateway's stop.

:func:`get_json` is the client: one GET with ``Connection: close``, a bounded body, one
deadline for the whole exchange, and every failure as :class:`HttpClientError` with a message
a person can read on the status page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11

MAX_HEAD = 16 * 1024  # h11's own default, stated: a browser's head is 1-2 KiB
MAX_BODY = 64 * 1024  # the routes are GETs: a body is read only to keep the connection usable
REQUEST_DEADLINE = 10.0
WRITE_DEADLINE = 10.0
MAX_CONNECTIONS = 32  # a few browser tabs (one event stream each), scrapers and the CLI
CLOSE_GRACE = 1.0
READ_CHUNK = 8192
METHODS = (b"GET", b"HEAD")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Response:
    """What a handler answers: a body, or a stream of chunks (sent chunked, ended by the
    generator returning; the server closes it when the client goes or the server stops)."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncGenerator[bytes, None] | None = None


Handler = Callable[[Request], Awaitable[Response]]


def json_response(value: Any, status: int = 200) -> Response:
    body = json.dumps(value, default=str).encode()
    return Response(status, [("Content-Type", "application/json; charset=utf-8")], body)


def text_response(status: int, text: str = "") -> Response:
    body = (text or f"{status}: {_reason(status).decode()}").encode() + b"\n"
    return Response(status, [("Content-Type", "text/plain; charset=utf-8")], body)


def _reason(status: int) -> bytes:
    with contextlib.suppress(ValueError):
        return HTTPStatus(status).phrase.encode()
    return b""


class _Refusal(Exception):
    """A request refused before a handler sees it (status to answer, then close)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class HttpServer:
    """GET routes on one listening socket; see the module docstring for the bounds."""

    def __init__(self, routes: dict[str, Handler], *, max_head: int = MAX_HEAD,
                 max_body: int = MAX_BODY, request_deadline: float = REQUEST_DEADLINE,
                 write_deadline: float = WRITE_DEADLINE,
                 max_connections: int = MAX_CONNECTIONS,
                 log: logging.Logger | None = None) -> None:
        self.routes = routes
        self.max_head = max_head
        self.max_body = max_body
        self.request_deadline = request_deadline
        self.write_deadline = write_deadline
        self.max_connections = max_connections
        self.log = log or logging.getLogger("http")
        #: Set by :meth:`close`; streams watch it to end at once.
        self.closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        # each connection's task, and whether it is busy with a request (idle ones are
        # waiting for the next request and can be cancelled at once on close)
        self._connections: dict[asyncio.Task[Any], bool] = {}

    async def start(self, host: str, port: int) -> None:
        """Listen (OSError when the address is taken); port 0 picks a free one."""
        self._server = await asyncio.start_server(self._connection, host, port)

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def close(self, grace: float = CLOSE_GRACE) -> None:
        """Stop listening, end streams, cancel what is left after ``grace`` seconds."""
        self.closing.set()
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        pending = set(self._connections)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=grace)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._server.wait_closed()

    # -- one connection ------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.closing.is_set() or len(self._connections) >= self.max_connections:
            self.log.debug("connection refused: %d open", len(self._connections))
            conn = h11.Connection(h11.SERVER)
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._send_refusal(conn, writer, 503)
            writer.close()
            return
        self._connections[task] = False
        try:
            await self._serve(reader, writer, task)
        except (OSError, TimeoutError, h11.LocalProtocolError) as exc:
            self.log.debug("connection dropped: %s", exc or type(exc).__name__)
        except asyncio.CancelledError:
            # only close() (or the loop's end) cancels a connection, and the task must end
            # normally: Python 3.11's streams callback logs a cancelled one as an error
            self.log.debug("connection closed: the server stops")
        finally:
            del self._connections[task]
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     task: asyncio.Task[Any]) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        while not self.closing.is_set():
            self._connections[task] = False
            began = [False]
            try:
                async with asyncio.timeout(self.request_deadline):
                    received = await self._read_request(conn, reader, began)
            except TimeoutError:
                if began[0]:  # a trickle, not an idle keep-alive: say why it goes
                    await self._send_refusal(conn, writer, 408)
                return
            except h11.RemoteProtocolError as exc:
                self.log.debug("bad request: %s", exc)
                await self._send_refusal(conn, writer, exc.error_status_hint)
                return
            except _Refusal as refusal:
                await self._send_refusal(conn, writer, refusal.status)
                return
            if received is None:
                return
            self._connections[task] = True
            event, request = received
            await self._send(conn, writer, event, await self._answer(request))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader,
                            began: list[bool]) -> tuple[h11.Request, Request] | None:
        """The next whole request (its body read and dropped), or None when the client
        closed between requests."""
        event: Any = None
        body = 0
        while True:
            got = conn.next_event()
            if got is h11.NEED_DATA:
                data = await reader.read(READ_CHUNK)
                began[0] = began[0] or bool(data)
                conn.receive_data(data)
            elif isinstance(got, h11.Request):
                event = got
            elif isinstance(got, h11.Data):
                body += len(got.data)
                if body > self.max_body:
                    raise _Refusal(413)
            elif isinstance(got, h11.EndOfMessage):
                target = event.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                headers = tuple((k.decode("latin-1"), v.decode("latin-1"))
                                for k, v in event.headers)
                return event, Request(event.method.decode("ascii", "replace"), path, query,
                                      headers)
            elif isinstance(got, h11.ConnectionClosed):
                return None
            else:  # PAUSED cannot happen: a cycle starts only once both sides are done
                return None

    async def _answer(self, request: Request) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            return text_response(404)
        if request.method.encode() not in METHODS:
            response = text_response(405)
            response.headers.append(("Allow", "GET, HEAD"))
            return response
        try:
            return await handler(request)
        except Exception:  # a handler's bug costs its request, never the server
            self.log.exception("%s %s failed", request.method, request.path)
            return text_response(500)

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                    event: h11.Request, response: Response) -> None:
        headers = list(response.headers)
        if response.stream is None:
            headers.append(("Content-Length", str(len(response.body))))
        if self.closing.is_set():
            headers.append(("Connection", "close"))
        with_body = event.method != b"HEAD"
        await self._write(writer, conn.send(h11.Response(
            status_code=response.status, headers=headers, reason=_reason(response.status))))
        if response.stream is not None:
            async with contextlib.aclosing(response.stream) as chunks:
                if with_body:
                    async for chunk in chunks:
                        await self._write(writer, conn.send(h11.Data(data=chunk)))
        elif with_body and response.body:
            await self._write(writer, conn.send(h11.Data(data=response.body)))
        await self._write(writer, conn.send(h11.EndOfMessage()))

    async def _send_refusal(self, conn: h11.Connection, writer: asyncio.StreamWriter,
                            status: int) -> None:
        """Answer ``status`` and let the connection close, if h11 still may answer."""
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = text_response(status).body
        try:
            data = (conn.send(h11.Response(status_code=status, reason=_reason(status), headers=[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))), ("Connection", "close")]))
                    + (conn.send(h11.Data(data=body)) or b"")
                    + (conn.send(h11.EndOfMessage()) or b""))
        except h11.LocalProtocolError:
            return
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._write(writer, data)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes | None) -> None:
        if not data:
            return
        writer.write(data)
        async with asyncio.timeout(self.write_deadline):
            await writer.drain()


# -- the client ------------------------------------------------------------------------------

class HttpClientError(Exception):
    """A GET that gave no usable answer; the message says why, for a person."""


async def get_json(host: str, port: int, path: str, timeout: float = 2.0,
                   max_body: int = 1024 * 1024) -> Any:
    """GET ``path`` and parse its JSON body, all within ``timeout`` seconds."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            status, body = await _get(host, port, shown, path, max_body)
    except TimeoutError:
        raise HttpClientError(f"no answer from {shown} within {timeout:g} s") from None
    except h11.ProtocolError as exc:
        raise HttpClientError(f"bad HTTP from {shown}: {exc}") from None
    except OSError as exc:
        raise HttpClientError(f"cannot reach {shown}: {exc.strerror or exc}") from None
    if not 200 <= status < 300:
        raise HttpClientError(f"HTTP {status} from {shown}{path}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise HttpClientError(f"not JSON from {shown}{path}: {exc}") from None


async def _get(host: str, port: int, shown: str, path: str,
               max_body: int) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        writer.write(conn.send(h11.Request(method="GET", target=path, headers=[
            ("Host", shown), ("Accept", "application/json"), ("Connection", "close"),
            ("User-Agent", "protocol-gateway")])) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        status = 0
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_CHUNK))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise HttpClientError(f"answer from {shown}{path} over {max_body} bytes")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, bytes(body)
    finally:
        writer.close()
