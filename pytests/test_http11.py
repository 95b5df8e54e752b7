"""The supervisor's HTTP layer (gateway/http11.py on h11) and the status server on it.

Real sockets on 127.0.0.1: the routes through the standard library's client (another HTTP
implementation than the server's), hostile input through raw streams. Also: the supervisor's
process must not import aiohttp (issue 22: ~12.5 MB of RSS on a Raspberry Pi), checked in a
fresh interpreter that serves a request and polls a group the way ``run`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import status_http
from gateway.http11 import (
    HttpClientError,
    HttpServer,
    Request,
    Response,
    get_json,
    json_response,
)
from gateway.live import GroupPoller, GroupSource, LatestReadings, LiveState
from pytests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 20.0  # generous: a bound on a hang, not a timing requirement


def _transports(failed: bool = False) -> list[dict[str, Any]]:
    return [{"name": "house", "kind": "system", "state": "failed" if failed else "running",
             "restarts": 0, "envelopes_in": 0, "envelopes_out": 3, "dropped": 0, "errors": 0,
             "last_error": "", "pid": 1, "uptime": 1.0, "counters": {}}]


def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def _fetch(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_get, port, path, method)


async def _raw(port: int, data: bytes, until_eof: bool = True) -> bytes:
    """Send ``data`` and read what comes back until the server closes (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(DEADLINE):
            return await reader.read() if until_eof else await reader.read(65536)
    finally:
        writer.close()


async def _until(condition: Callable[[], Any]) -> Any:
    async with asyncio.timeout(DEADLINE):
        while not (value := condition()):
            await asyncio.sleep(0.02)
        return value


def _serve(test: Callable[[HttpServer], Awaitable[None]],
           live: Any = None, **bounds: Any) -> None:
    async def main() -> None:
        server = status_http.make_server(live or _transports, **bounds)
        await server.start("127.0.0.1", 0)
        try:
            await test(server)
        finally:
            await server.close()

    asyncio.run(main())


def test_every_route_answers_as_the_page_and_scrapers_expect() -> None:
    async def check(server: HttpServer) -> None:
        port = server.port
        status, headers, body = await _fetch(port, "/")
        assert status == 200 and b"<html" in body.lower()
        assert headers["Content-Type"].startswith("text/html")
        assert headers["Cache-Control"] == "no-cache"
        status, headers, body = await _fetch(port, "/", "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
        status, _, body = await _fetch(port, "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, _, body = await _fetch(port, "/api/transports")
        assert status == 200 and json.loads(body)["transports"][0]["name"] == "house"
        status, _, body = await _fetch(port, "/api/state")
        state = json.loads(body)
        assert status == 200 and {"time", "version", "transports", "devices", "groups"} <= set(
            state)
        status, headers, body = await _fetch(port, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "pgw_transport_up" in names
        status, _, _ = await _fetch(port, "/api/state?pretty=1")
        assert status == 200
        assert (await _fetch(port, "/nowhere"))[0] == 404
        status, headers, _ = await _fetch(port, "/api/state", "POST")
        assert status == 405 and headers["Allow"] == "GET, HEAD"

    _serve(check)


def test_health_names_the_failed_transports() -> None:
    async def check(server: HttpServer) -> None:
        status, _, body = await _fetch(server.port, "/health")
        assert status == 503
        assert json.loads(body) == {"status": "degraded", "failed": ["house"],
                                    "transports": 1, "version": json.loads(body)["version"]}

    _serve(check, lambda: _transports(failed=True))


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async def check(server: HttpServer) -> None:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for _ in range(3):
                writer.write(request)
                async with asyncio.timeout(DEADLINE):
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    body = await reader.readexactly(length)
                assert head.startswith(b"HTTP/1.1 200 ") and b'"ok"' in body
        finally:
            writer.close()

    _serve(check)


def test_event_stream_sends_states_then_ends_at_once_on_close(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(status_http, "EVENT_INTERVAL", 0.05)

    async def main() -> None:
        server = status_http.make_server(_transports)
        await server.start("127.0.0.1", 0)
        idle = await asyncio.open_connection("127.0.0.1", server.port)  # cancelled on close
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            async with asyncio.timeout(DEADLINE):
                while received.count(b"event: state\n") < 4:
                    chunk = await reader.read(65536)
                    assert chunk, received
                    received += chunk
            head = received.split(b"\r\n\r\n")[0].decode().lower()
            assert "content-type: text/event-stream" in head
            assert "transfer-encoding: chunked" in head
            assert b"retry: 2000\n\n" in received
            data = received.split(b"event: state\ndata: ")[1].split(b"\n\n")[0]
            assert json.loads(data)["transports"][0]["name"] == "house"
            # the close (the gateway's stop) must not wait for the open stream: it sets
            # `closing`, the stream sends its last chunk and the connection closes
            closed = asyncio.create_task(server.close(grace=30.0))
            async with asyncio.timeout(DEADLINE):
                rest = await reader.read()
                await closed
            assert (received + rest).endswith(b"0\r\n\r\n")  # the chunked body's end
            async with asyncio.timeout(DEADLINE):
                assert await idle[0].read() == b""
        finally:
            writer.close()
            idle[1].close()
            await server.close()

    asyncio.run(main())
    # a stop is not an error (Python 3.11 logs a cancelled connection task as one)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_garbage_gets_400_and_the_server_runs_on() -> None:
    async def check(server: HttpServer) -> None:
        for garbage in (b"\x00\x01\x02 nonsense\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                        b"GET /\xff HTTP/1.1\r\nbad header line\r\n\r\n"):
            answer = await _raw(server.port, garbage)
            assert answer.startswith(b"HTTP/1.1 400 "), (garbage, answer)
        assert (await _fetch(server.port, "/health"))[0] == 200

    _serve(check)


def test_an_oversized_head_is_refused() -> None:
    async def check(server: HttpServer) -> None:
        big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 8192 + b"\r\n\r\n"
        answer = await _raw(server.port, big)
        assert answer.startswith(b"HTTP/1.1 431 ")
        # endless header lines, never the blank line that ends the head
        answer = await _raw(server.port, b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert (await _fetch(server.port, "/health"))[0] == 200

    _serve(check, max_head=4096)


def test_an_oversized_body_is_refused() -> None:
    async def check(server: HttpServer) -> None:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
        assert (await _raw(server.port, request)).startswith(b"HTTP/1.1 413 ")

    _serve(check, max_body=1024)


def test_silent_and_trickling_clients_are_dropped_after_the_deadline() -> None:
    async def check(server: HttpServer) -> None:
        started = time.monotonic()
        assert await _raw(server.port, b"") == b""  # silent: closed, nothing said
        # a request begun and never finished: told so
        assert (await _raw(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n")).startswith(
            b"HTTP/1.1 408 ")
        assert time.monotonic() - started >= 0.5  # dropped by the deadline, not at once
        await _until(lambda: server.connections == 0)
        assert (await _fetch(server.port, "/health"))[0] == 200

    _serve(check, request_deadline=0.3)


def test_connections_beyond_the_cap_are_refused_then_served_again() -> None:
    async def check(server: HttpServer) -> None:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        await _until(lambda: server.connections == 3)
        answer = await _raw(server.port, b"")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer.lower()
        assert server.connections == 3
        for _, writer in held:
            writer.close()
        await _until(lambda: server.connections == 0)
        assert (await _fetch(server.port, "/health"))[0] == 200

    _serve(check, max_connections=3)


def test_a_failing_handler_costs_its_request_only() -> None:
    async def broken(_: Request) -> Response:
        raise RuntimeError("bug")

    async def fine(_: Request) -> Response:
        return json_response({"ok": True})

    async def main() -> None:
        server = HttpServer({"/broken": broken, "/fine": fine})
        await server.start("127.0.0.1", 0)
        try:
            assert (await _fetch(server.port, "/broken"))[0] == 500
            assert await get_json("127.0.0.1", server.port, "/fine") == {"ok": True}
        finally:
            await server.close()

    asyncio.run(main())


def test_a_port_in_use_is_logged_and_no_server_returned(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        first = await status_http.start(_transports, "127.0.0.1", free_port())
        assert first is not None
        try:
            second = await status_http.start(_transports, "127.0.0.1", first.port)
            assert second is None
        finally:
            await first.close()

    asyncio.run(main())
    refused = [r for r in caplog.records if "status page not started" in r.getMessage()]
    assert len(refused) == 1


def test_client_errors_say_why() -> None:
    async def big(_: Request) -> Response:
        return json_response(["x" * 100] * 100)

    async def main() -> None:
        mute = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.1", 0)
        mute_port = mute.sockets[0].getsockname()[1]
        server = status_http.make_server(_transports)
        server.routes["/big"] = big
        await server.start("127.0.0.1", 0)
        try:
            assert (await get_json("127.0.0.1", server.port, "/api/transports"))[
                "transports"][0]["name"] == "house"
            with pytest.raises(HttpClientError, match=r"cannot reach 127\.0\.0\.1:"):
                await get_json("127.0.0.1", free_port(), "/x")
            with pytest.raises(HttpClientError, match="HTTP 404"):
                await get_json("127.0.0.1", server.port, "/nowhere")
            with pytest.raises(HttpClientError, match="not JSON"):
                await get_json("127.0.0.1", server.port, "/")
            with pytest.raises(HttpClientError, match="over 1000 bytes"):
                await get_json("127.0.0.1", server.port, "/big", max_body=1000)
            with pytest.raises(HttpClientError, match=r"no answer .* within 0\.3 s"):
                await get_json("127.0.0.1", mute_port, "/x", timeout=0.3)
        finally:
            mute.close()
            await server.close()

    asyncio.run(main())


def test_group_poller_reads_a_node_and_reports_one_that_is_down() -> None:
    async def group_status(_: Request) -> Response:
        return json_response({"mode": "agreed", "limit": 16, "failsafe_active": False,
                              "allocations": [{"id": "n1", "target_current": 16,
                                               "reason": "equal_share"}]})

    async def node_status(_: Request) -> Response:
        return json_response({"loadsharing_group_current_total": 12.5})

    async def main() -> None:
        node = HttpServer({"/loadsharing/status": group_status, "/status": node_status})
        await node.start("127.0.0.1", 0)
        up = GroupSource("up", f"http://127.0.0.1:{node.port}/loadsharing/status", 32.0, "n1")
        down = GroupSource("down", f"http://127.0.0.1:{free_port()}/loadsharing/status", 32.0)
        poller = GroupPoller([up, down], interval=0.05)
        task = asyncio.create_task(poller.run())
        try:
            group = await _until(lambda: poller.groups["up"]["reachable"]
                                 and poller.groups["up"])
            assert group["allocated"] == 16.0 and group["drawn"] == 12.5
            assert group["members"][0]["state"] == "this node"
            await _until(lambda: poller.groups["down"]["error"] != "not polled yet")
            assert poller.groups["down"]["reachable"] is False
            assert "cannot reach" in poller.groups["down"]["error"]
            await node.close()
            await _until(lambda: not poller.groups["up"]["reachable"])
        finally:
            task.cancel()
            await node.close()

    asyncio.run(main())


SUPERVISOR = """
import asyncio, json, sys
from gateway import status_http  # what gateway/cli.py run_gateway imports for the supervisor
from gateway.live import GroupPoller, GroupSource, LatestReadings, LiveState, group_sources
from gateway.supervisor import Supervisor
from gateway.http11 import get_json

async def main(port):
    source = GroupSource("ls", f"http://127.0.0.1:{port}/api/state", 32.0)
    groups = GroupPoller([source], interval=0.05)
    live = LiveState(lambda: [], LatestReadings(), groups)
    server = await status_http.start(live, "127.0.0.1", port)
    poller = asyncio.create_task(groups.run())
    try:
        state = await asyncio.wait_for(get_json("127.0.0.1", port, "/api/state"), 20)
        async with asyncio.timeout(20):
            while not groups.groups["ls"]["reachable"]:
                await asyncio.sleep(0.05)
    finally:
        poller.cancel()
        await server.close()
    print(json.dumps({"served": "transports" in state, "aiohttp": "aiohttp" in sys.modules}))

asyncio.run(main(int(sys.argv[1])))
"""


def test_the_supervisor_serves_its_page_without_importing_aiohttp() -> None:
    """Issue 22: aiohttp cost the supervisor ~12.5 MB of RSS; it has no business there."""
    run = subprocess.run([sys.executable, "-c", SUPERVISOR, str(free_port())], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"served": True, "aiohttp": False}


def test_the_live_state_feeds_the_page_unchanged() -> None:
    """The routes read the same LiveState the CLI builds (readings, groups)."""
    live = LiveState(_transports, LatestReadings(), GroupPoller([]))

    async def check(server: HttpServer) -> None:
        state = json.loads((await _fetch(server.port, "/api/state"))[2])
        assert state["transports"] == _transports() and state["groups"] == []

    _serve(check, live)
