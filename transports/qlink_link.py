"""Connections to a QLink IP-Enabler, and the two ways of using them.

``single`` (the default, and what a real IP-Enabler allows): one persistent connection carries
commands, replies and events. ``split`` (for bridges that accept several connections): an event
connection that only listens, commands on short-lived connections or a small pool, optional
polls on another port. Either way one command is in flight at a time and commands are paced:
everything crosses a 19200-baud serial line, and bursts have crashed controllers.

A reply is matched to the command in flight: events are told apart by shape (the codec), and
a detailed reply must carry the command's tag, so a late reply to a command that timed out is
dropped as stale instead of answering the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from protocols.qlink import (
    Command,
    ErrorReply,
    Event,
    Garbled,
    QLinkParser,
    Reply,
    command,
    escape,
)
from transports.device import PeerUnavailable

EventSink = Callable[[Event], Awaitable[None]]
GarbledSink = Callable[[Garbled, str], None]
Expect = Callable[[Reply | ErrorReply], bool]


class LinkError(PeerUnavailable):
    """The link cannot be used any more: close it and build a new one."""


class LinkRefused(LinkError):
    """A further connection was refused (the controller takes one at a time)."""


class SplitRefused(LinkError):
    """Strategy split: the event connection is up but a second connection was refused."""


class ReplyTimeout(LinkError):
    """No reply within the timeout: the link may be one-way or the controller stuck."""


@dataclass
class LinkStats:
    """Figures for counters and the bench."""

    bytes_out: int = 0
    bytes_in: int = 0
    commands: int = 0
    replies: int = 0
    events: int = 0
    garbled: int = 0
    stale_replies: int = 0
    connects: int = 0
    min_gap: float = 0.0  # smallest send-to-send interval seen (0 until two were sent)


@dataclass(frozen=True)
class LinkOptions:
    """What the connections need from the transport's settings."""

    host: str
    port: int
    command_port: int = 0
    poll_port: int = 0
    command_connections: int = 0
    connect_timeout: float = 5.0
    command_gap: float = 0.12
    keepalive: float = 30.0
    line_end: bytes = b"\r"


def _keepalive(writer: asyncio.StreamWriter, idle: float) -> None:
    """TCP keepalive so a vanished peer is noticed (and does not hold the box's one slot)."""
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is None or idle <= 0:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(idle / 3)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


class Connection:
    """One TCP connection; every byte read goes through the codec, lines are dispatched."""

    def __init__(
        self,
        port: int,
        opts: LinkOptions,
        stats: LinkStats,
        log: logging.Logger,
        *,
        on_event: EventSink | None,
        on_garbled: GarbledSink,
        role: str = "link",
    ) -> None:
        self.port = port
        self.opts = opts
        self.stats = stats
        self.log = log
        self.role = role
        self._on_event = on_event
        self._on_garbled = on_garbled
        self._parser = QLinkParser()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: tuple[Expect, asyncio.Future[Reply | ErrorReply]] | None = None
        self.closed = asyncio.Event()

    async def open(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.opts.host, self.port), self.opts.connect_timeout
            )
        except ConnectionRefusedError as exc:
            raise LinkRefused(f"{self.opts.host}:{self.port} refused the connection") from exc
        except (OSError, TimeoutError) as exc:
            raise LinkError(f"cannot connect to {self.opts.host}:{self.port}: {exc}") from exc
        _keepalive(writer, self.opts.keepalive)
        self._writer = writer
        self.stats.connects += 1
        self._reader_task = asyncio.create_task(self._read(reader), name=f"qlink-{self.role}")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                self.stats.bytes_in += len(data)
                for item in self._parser.feed(data):
                    await self._dispatch(item)
        except (ConnectionError, OSError) as exc:
            self.log.debug("%s connection read failed: %s", self.role, exc)
        finally:
            self.closed.set()
            if self._writer is not None:
                self._writer.close()  # the peer is gone: drop our half as well
            if self._pending is not None and not self._pending[1].done():
                self._pending[1].set_exception(LinkError(f"{self.role} connection closed"))

    async def _dispatch(self, item: Event | Reply | ErrorReply | Garbled) -> None:
        if isinstance(item, Garbled):
            self.stats.garbled += 1
            self._on_garbled(item, self.role)
        elif isinstance(item, Reply | ErrorReply):
            pending = self._pending
            if pending is not None and not pending[1].done() and pending[0](item):
                self.stats.replies += 1
                pending[1].set_result(item)
            else:
                self.stats.stale_replies += 1
                text = item.text if isinstance(item, Reply) else str(item.code)
                self.log.debug("%s: reply %r matches no command in flight", self.role, text)
        elif self._on_event is not None:  # a command connection leaves events to the other
            self.stats.events += 1
            await self._on_event(item)

    async def request(
        self, cmd: Command, timeout: float, expect: Expect | None = None
    ) -> Reply | ErrorReply | None:
        """Send ``cmd`` and wait for its reply (None for a ``!`` command)."""
        if self._writer is None or self.closed.is_set():
            raise LinkError(f"{self.role} connection is closed")
        future: asyncio.Future[Reply | ErrorReply] = asyncio.get_running_loop().create_future()
        if cmd.expects_reply:
            self._pending = (expect or cmd.matches, future)
        data = cmd.encode(self.opts.line_end)
        self.log.debug("%s > %s", self.role, escape(data))
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise LinkError(f"{self.role} write failed: {exc}") from exc
        self.stats.bytes_out += len(data)
        self.stats.commands += 1
        if not cmd.expects_reply:
            return None
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ReplyTimeout(f"no reply to {cmd.text()} within {timeout} s") from None
        finally:
            self._pending = None

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        self.closed.set()


class Link:
    """What the transport uses: paced, one-at-a-time requests, and a ``dead`` flag."""

    strategy = "base"

    def __init__(
        self,
        opts: LinkOptions,
        stats: LinkStats,
        log: logging.Logger,
        *,
        on_event: EventSink,
        on_garbled: GarbledSink,
    ) -> None:
        self.opts = opts
        self.stats = stats
        self.log = log
        self.on_event = on_event
        self.on_garbled = on_garbled
        self._lock = asyncio.Lock()
        self._last_send = -1e9
        self._watcher: asyncio.Task[None] | None = None
        self._conns: list[Connection] = []  # every connection to close with the link
        self.dead = asyncio.Event()

    def _conn(self, port: int, role: str, events: bool) -> Connection:
        self._conns = [c for c in self._conns if not c.closed.is_set()]
        conn = Connection(port, self.opts, self.stats, self.log,
                          on_event=self.on_event if events else None,
                          on_garbled=self.on_garbled, role=role)
        self._conns.append(conn)
        return conn

    async def _pace(self) -> None:
        wait = self._last_send + self.opts.command_gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.monotonic()
        gap = now - self._last_send
        if self.stats.min_gap == 0.0 or gap < self.stats.min_gap:
            self.stats.min_gap = gap
        self._last_send = now

    async def start(self) -> None:
        raise NotImplementedError

    async def request(
        self, cmd: Command, timeout: float, expect: Expect | None = None, poll: bool = False
    ) -> Reply | ErrorReply | None:
        async with self._lock:
            await self._pace()
            return await self._send(cmd, timeout, expect, poll)

    async def _send(
        self, cmd: Command, timeout: float, expect: Expect | None, poll: bool
    ) -> Reply | ErrorReply | None:
        raise NotImplementedError

    async def close(self) -> None:
        self.dead.set()
        if self._watcher is not None:
            self._watcher.cancel()
        for conn in self._conns:
            await conn.close()
        self._conns.clear()


def _watch(conn: Connection, dead: asyncio.Event) -> asyncio.Task[None]:
    async def watch() -> None:
        await conn.closed.wait()
        dead.set()

    return asyncio.create_task(watch())


class SingleLink(Link):
    """One persistent connection for commands, replies and events."""

    strategy = "single"

    async def start(self) -> None:
        self._main = self._conn(self.opts.port, "link", events=True)
        await self._main.open()
        self._watcher = _watch(self._main, self.dead)

    async def _send(
        self, cmd: Command, timeout: float, expect: Expect | None, poll: bool
    ) -> Reply | ErrorReply | None:
        return await self._main.request(cmd, timeout, expect)


class SplitLink(Link):
    """An event connection that only listens; commands (and polls) on other connections."""

    strategy = "split"
    _pool: list[Connection]
    _next = 0
    _poll: Connection | None = None

    async def start(self) -> None:
        self._pool = []
        self._events = self._conn(self.opts.port, "events", events=True)
        await self._events.open()
        self._watcher = _watch(self._events, self.dead)
        try:  # a second connection must work, else the caller falls back to single
            probe = await self._command_conn()
            echo = command("VEC", 1000)
            await probe.request(echo, self.opts.connect_timeout,
                                lambda r: isinstance(r, Reply) and r.values[-1:] == ("1000",))
            await self._release(probe)
        except LinkError as exc:
            await self.close()
            raise SplitRefused(f"a second connection failed: {exc}") from exc

    async def _command_conn(self) -> Connection:
        size = self.opts.command_connections
        port = self.opts.command_port or self.opts.port
        if size > 0:
            self._pool = [c for c in self._pool if not c.closed.is_set()]
            if len(self._pool) >= size:
                self._next = (self._next + 1) % len(self._pool)
                return self._pool[self._next]
        conn = self._conn(port, "command", events=False)
        await conn.open()
        if size > 0:
            self._pool.append(conn)
        return conn

    async def _release(self, conn: Connection) -> None:
        if self.opts.command_connections == 0:
            await conn.close()

    async def _send(
        self, cmd: Command, timeout: float, expect: Expect | None, poll: bool
    ) -> Reply | ErrorReply | None:
        if poll and self.opts.poll_port:
            if self._poll is None or self._poll.closed.is_set():
                self._poll = self._conn(self.opts.poll_port, "poll", events=False)
                await self._poll.open()
            return await self._poll.request(cmd, timeout, expect)
        conn = await self._command_conn()
        try:
            return await conn.request(cmd, timeout, expect)
        except ReplyTimeout:
            await conn.close()
            raise
        finally:
            await self._release(conn)


def make_link(
    strategy: str,
    opts: LinkOptions,
    stats: LinkStats,
    log: logging.Logger,
    *,
    on_event: EventSink,
    on_garbled: GarbledSink,
) -> Link:
    cls = SplitLink if strategy == "split" else SingleLink
    return cls(opts, stats, log, on_event=on_event, on_garbled=on_garbled)
