"""The reconnect loop and the bounded retry, written once (gateway/reconnect.py, issue 22),
driven with real failures: a TCP port on 127.0.0.1 that refuses, then listens, then goes away
again. pytests/test_transport_rules.py keeps them the only ones."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web

from gateway.backoff import Backoff
from gateway.reconnect import GaveUp, LinkKeeper, retry
from pytests.helpers import async_wait_for, free_port
from transports.loadsharing.auth import GroupAuth
from transports.loadsharing.peer_client import PeerClient

#: what a loop awaits between two tries
LOG = "reconnect_test"

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# -- LinkKeeper with real sockets --------------------------------------------------------------
class Peer:
    """A TCP peer on 127.0.0.1 that can be absent (refused), greet each client and hold it, or
    greet it and hang up after ``hold`` seconds."""

    def __init__(self, port: int, hold: float | None = None) -> None:
        self.port = port
        self.hold = hold
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.clients: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and hang up on every client (the peer went away)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in self.clients:
            writer.close()
        self.clients.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.clients.append(writer)
        writer.write(b"hello\n")
        await writer.drain()
        if self.hold is not None:
            await asyncio.sleep(self.hold)
            writer.close()


class Client:
    """What a transport gives the keeper: open a connection, serve it (``up()`` on the
    greeting, lost at EOF), release it. Records the waits the keeper asked for."""

    def __init__(self, port: int, stopping: asyncio.Event, backoff: Backoff,
                 at_once_after: float | None = None) -> None:
        self.port = port
        self.downs: list[str] = []
        self.recoveries = 0
        self.waits: list[float] = []
        self.released = 0
        self.greeted = 0
        self.keeper: LinkKeeper[Stream] = LinkKeeper(
            f"peer on port {port}", logging.getLogger(LOG), backoff=backoff,
            lost=(OSError,), stopping=stopping, at_once_after=at_once_after,
            on_down=self._down, on_recovered=self._recovered, wait=self._wait)
        self.stopping = stopping

    async def _down(self, reason: str) -> None:
        self.downs.append(reason)

    def _recovered(self) -> None:
        self.recoveries += 1

    async def _wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def open(self) -> Stream:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def serve(self, link: Stream) -> None:
        reader, _ = link
        greeting = await asyncio.wait_for(reader.readline(), 10)
        if greeting != b"hello\n":
            raise ConnectionError("no greeting")
        self.greeted += 1
        self.keeper.up()
        stop = asyncio.ensure_future(self.stopping.wait())
        eof = asyncio.ensure_future(reader.read())
        try:
            await asyncio.wait({stop, eof}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            eof.cancel()
        if not self.stopping.is_set():
            raise ConnectionError("peer hung up")

    async def release(self, link: Stream) -> None:
        self.released += 1
        link[1].close()

    async def keep(self) -> None:
        await self.keeper.keep(self.open, self.serve, self.release)


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOG and r.levelno == logging.WARNING and text in r.getMessage()]


def test_failures_then_recovery_log_once_and_reset_the_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        port = free_port()
        stopping = asyncio.Event()
        client = Client(port, stopping, Backoff(initial=0.01, maximum=0.08))
        peer = Peer(port)
        task = asyncio.create_task(client.keep())
        try:
            await async_wait_for(lambda: len(client.downs) >= 5)  # refused, five times
            await peer.start()
            await async_wait_for(lambda: client.greeted == 1)
            assert client.recoveries == 1 and not client.keeper.failure.failing
            growing = list(client.waits)
            assert growing[:4] == [0.01, 0.02, 0.04, 0.08]  # doubling, then capped
            waits_before_drop = len(client.waits)
            await peer.stop()  # the link is lost: backoff starts over from its initial wait
            await async_wait_for(lambda: len(client.waits) > waits_before_drop)
            assert client.waits[waits_before_drop] == 0.01
            await peer.start()
            await async_wait_for(lambda: client.greeted == 2)
            assert client.recoveries == 2
        finally:
            stopping.set()
            await asyncio.wait_for(task, 10)
            await peer.stop()

    with caplog.at_level(logging.DEBUG, LOG):
        asyncio.run(main())
    failed, recovered = _lines(caplog, "failed:"), _lines(caplog, "recovered after")
    assert len(failed) == 2, failed  # one per outage, however many retries
    assert len(recovered) == 2, recovered
    assert "recovered after" in recovered[0] and "failed attempts" in recovered[0]
    retries = [r for r in caplog.records if r.name == LOG and "still failing" in r.getMessage()]
    assert retries and all(r.levelno == logging.DEBUG for r in retries)


def test_stopping_ends_the_backoff_wait_promptly() -> None:
    async def main() -> None:
        stopping = asyncio.Event()
        keeper: LinkKeeper[Stream] = LinkKeeper(
            "nobody", logging.getLogger(LOG), backoff=Backoff(initial=600.0, maximum=600.0),
            lost=(OSError,), stopping=stopping)
        port = free_port()
        task = asyncio.create_task(keeper.keep(
            lambda: asyncio.open_connection("127.0.0.1", port), lambda _: asyncio.sleep(0)))
        await async_wait_for(lambda: keeper.failure.failing)  # now in its 10 minute wait
        stopping.set()
        await asyncio.wait_for(task, 10)  # long before the wait would have ended

    asyncio.run(main())


def test_cancelling_ends_it_too() -> None:
    async def main() -> None:
        keeper: LinkKeeper[Stream] = LinkKeeper(
            "nobody", logging.getLogger(LOG), backoff=Backoff(initial=600.0, maximum=600.0),
            lost=(OSError,))
        port = free_port()
        task = asyncio.create_task(keeper.keep(
            lambda: asyncio.open_connection("127.0.0.1", port), lambda _: asyncio.sleep(0)))
        await async_wait_for(lambda: keeper.failure.failing)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    asyncio.run(main())


def test_gives_up_after_give_up_after(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        port = free_port()
        keeper: LinkKeeper[Stream] = LinkKeeper(
            f"port {port}", logging.getLogger(LOG),
            backoff=Backoff(initial=0.02, maximum=0.05, give_up_after=0.3), lost=(OSError,),
            stopping=asyncio.Event())
        with pytest.raises(GaveUp, match=r"gave up after 0\.3 s") as raised:
            await asyncio.wait_for(keeper.keep(
                lambda: asyncio.open_connection("127.0.0.1", port),
                lambda _: asyncio.sleep(0)), 20)
        assert isinstance(raised.value.__cause__, ConnectionRefusedError)
        assert keeper.failure.failures > 2

    with caplog.at_level(logging.DEBUG, LOG):
        asyncio.run(main())
    assert len(_lines(caplog, "failed:")) == 1


@pytest.mark.parametrize(("hold", "at_once"), [(0.4, True), (0.0, False)])
def test_a_long_lived_link_is_reopened_at_once(hold: float, at_once: bool) -> None:
    """A link that lived ``at_once_after`` and dropped is reopened without a backoff (its loss
    still reported); one that dropped at once waits its backoff."""
    async def main() -> None:
        port = free_port()
        stopping = asyncio.Event()
        peer = Peer(port, hold=hold)
        await peer.start()
        client = Client(port, stopping, Backoff(initial=0.05, maximum=0.05), at_once_after=0.2)
        task = asyncio.create_task(client.keep())
        try:
            await async_wait_for(lambda: peer.accepted >= 3)
        finally:
            stopping.set()
            await asyncio.wait_for(task, 10)
            await peer.stop()
        assert len(client.downs) >= 2 and client.released >= 2
        assert (client.waits == []) is at_once, client.waits

    asyncio.run(main())


def test_an_unexpected_error_is_a_crash_not_an_outage() -> None:
    async def main() -> None:
        released: list[str] = []

        async def open_link() -> str:
            return "link"

        async def serve(_: str) -> None:
            raise KeyError("a bug")

        async def release(link: str) -> None:
            released.append(link)

        keeper: LinkKeeper[str] = LinkKeeper("bug", logging.getLogger(LOG),
                                             backoff=Backoff(), lost=(OSError,))
        with pytest.raises(KeyError):
            await asyncio.wait_for(keeper.keep(open_link, serve, release), 10)
        assert released == ["link"] and not keeper.failure.failing

    asyncio.run(main())


def test_give_up_raises_what_the_caller_names() -> None:
    """DeviceTransport's contract: it gives up with the PeerUnavailable kind it lost with."""
    class Refused(ConnectionRefusedError):
        pass

    async def main() -> None:
        async def open_link() -> None:
            raise Refused("nobody there")

        keeper: LinkKeeper[None] = LinkKeeper(
            "nobody", logging.getLogger(LOG), lost=(OSError,),
            backoff=Backoff(initial=0.01, maximum=0.02, give_up_after=0.1),
            gave_up=lambda message, lost: type(lost)(message))
        with pytest.raises(Refused, match=r"nobody: gave up after 0\.1 s: nobody there"):
            await asyncio.wait_for(keeper.keep(open_link, lambda _: asyncio.sleep(0)), 10)

    asyncio.run(main())


# -- a load-sharing peer, followed through LinkKeeper ----------------------------------------
class Member:
    """An OpenEVSE-like member on loopback: ``/status``, and a ``/ws`` that sends one good
    status frame a second."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/status", self._status)
        app.router.add_get("/ws", self._ws)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response({"amp": 0, "state": 1, "vehicle": 0})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        while not sock.closed:
            await sock.send_str('{"amp": 1000}')
            await asyncio.sleep(1.0)
        return sock


def test_peer_client_logs_an_outage_once_and_its_recovery_once(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        port = free_port()
        member = Member(port)
        async with aiohttp.ClientSession() as session:
            client = PeerClient(f"127.0.0.1:{port}", session, GroupAuth(),
                                logging.getLogger(LOG), timeout=5,
                                on_status=lambda *_: None, on_report=lambda _: None)
            client.backoff.initial, client.backoff.maximum = 0.02, 0.1  # a quick test
            client.start()
            try:
                await async_wait_for(lambda: client.failure.failures >= 4)  # refused
                assert not client.connected
                await member.start()
                await async_wait_for(lambda: client.connected and client.counters["frames"] >= 3)
                assert not client.failure.failing and client.backoff.failing_for == 0.0
            finally:
                await client.stop()
                await member.stop()

    with caplog.at_level(logging.DEBUG, LOG):
        asyncio.run(main())
    assert len(_lines(caplog, "failed:")) == 1
    assert len(_lines(caplog, "recovered after")) == 1


# -- retry --------------------------------------------------------------------------------------
def test_retry_until_the_peer_listens() -> None:
    async def main() -> None:
        port = free_port()
        peer = Peer(port)
        tries = 0

        async def greeting() -> bytes:
            nonlocal tries
            tries += 1
            if tries == 3:
                await peer.start()  # refused twice, then there
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(reader.readline(), 10)
            finally:
                writer.close()

        try:
            got = await retry(greeting, attempts=5, backoff=Backoff(0.01, 0.05),
                              retry_on=(OSError,), log=logging.getLogger(LOG), what="greeting")
        finally:
            await peer.stop()
        assert got == b"hello\n" and tries == 3

    asyncio.run(main())


def test_retry_gives_up_quietly_after_its_attempts(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        port = free_port()
        tries = 0

        async def connect() -> bool:
            nonlocal tries
            tries += 1
            await asyncio.open_connection("127.0.0.1", port)
            return True

        assert await retry(connect, attempts=4, backoff=Backoff(0.01, 0.02),
                           retry_on=(OSError,), log=logging.getLogger(LOG),
                           what="connect") is None
        assert tries == 4

    with caplog.at_level(logging.DEBUG, LOG):
        asyncio.run(main())
    assert not [r for r in caplog.records if r.name == LOG and r.levelno > logging.DEBUG]
    assert len([r for r in caplog.records if "connect failed" in r.getMessage()]) == 4


def test_retry_without_a_bound_stops_when_the_attempt_says_so() -> None:
    async def main() -> None:
        tries = 0

        async def attempt() -> bool | None:
            nonlocal tries
            tries += 1
            return False if tries == 7 else None  # "no longer wanted" on the seventh

        assert await asyncio.wait_for(
            retry(attempt, attempts=None, backoff=Backoff(0.01, 0.01)), 10) is False
        assert tries == 7

    asyncio.run(main())
