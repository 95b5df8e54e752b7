"""The load-sharing node's HTTP side: REST answers, /ws, peers that lie, auth, persistence.

Nodes run in this process (a transport in a thread with its own loop, its HTTP server on a free
loopback port); peers that misbehave are real aiohttp servers. The API is also checked against
docs/openapi/loadsharing.yaml with schemathesis (``PGW_LS_SCHEMA_EXAMPLES``, default 8).

Size: over the ~400-line guide on purpose: the REST/WS contract is checked route by route against
one spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from websockets.sync.client import connect

from gateway.message import Envelope
from pytests.helpers import Harness, free_port, wait_for
from pytests.loadsharing_sites import charger_event, http
from transports.loadsharing import config_sync as cs
from transports.loadsharing.auth import GroupAuth
from transports.loadsharing.members import MemberStore
from transports.loadsharing.messages import Report, Status, encode
from transports.loadsharing.peer_client import PeerClient
from transports.loadsharing.settings import LoadSharingSettings
from transports.loadsharing.transport import LoadSharing

ROOT = Path(__file__).resolve().parent.parent
BASE: dict[str, Any] = dict(
    transport="loadsharing", charger="openevse", loadsharing_enabled=True,
    loadsharing_group_max_current=32, loadsharing_heartbeat_timeout=5,
    loadsharing_response_time=0.5, charger_heartbeat=0, discovery=False,
    loadsharing_api_open=True)  # OpenEVSE's LAN trust: what these tests speak


def reading(state: int = 3, vehicle: int = 1) -> Envelope:
    return charger_event("openevse", {
        "state_code": state, "vehicle_connected": vehicle, "pilot_current": 32,
        "charging_current": 10.0, "voltage": 240.0})


class NodeThread:
    """One node (the real transport) on its own loop and thread."""

    def __init__(self, state: Path, **extra: Any) -> None:
        self.port = free_port()
        settings = LoadSharingSettings(**{**BASE, "node_listen": f"127.0.0.1:{self.port}",
                                          **extra})  # type: ignore[arg-type]
        self.member = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.member}"
        self.harness = Harness(LoadSharing, settings, f"ls{self.port}", state)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start())
        wait_for(lambda: self.transport.node is not None)

    async def _start(self) -> None:
        await self.harness.send(reading())
        await self.harness.start()

    def call(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def transport(self) -> Any:
        return self.harness.transport

    def stop(self) -> None:
        self.call(self.harness.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    n = NodeThread(tmp_path / "a")
    yield n
    n.stop()


def test_rest_answers_like_openevse(node: NodeThread) -> None:
    url = node.url
    peers = f"{url}/loadsharing/peers"
    req = __import__("urllib.request").request
    bad = req.Request(peers, data=b"{nope", method="POST")
    try:
        req.urlopen(bad, timeout=5)
    except req.HTTPError as exc:
        assert (exc.code, json.loads(exc.read())) == (400, {"msg": "Invalid JSON"})
    assert http("POST", peers, {}) == (400, {"msg": "Missing required 'host' parameter"})
    assert http("POST", peers, {"host": ""}) == (400, {"msg": "Host cannot be empty"})
    assert http("POST", peers, {"host": "nodots"}) == \
        (400, {"msg": "Invalid host format - must contain domain or IP"})
    assert http("POST", peers, {"host": node.member}) == \
        (400, {"msg": "Cannot add local device as peer"})
    other = f"127.0.0.1:{free_port()}"  # nobody there: the reciprocal add just fails
    assert http("POST", peers, {"host": other, "reciprocal": False}) == (200, {"msg": "done"})
    assert http("POST", peers, {"host": other}) == (200, {"msg": "already in group"})
    listed = http("GET", peers)[1]
    assert [p["isLocal"] for p in listed] == [True, False]
    assert {p["host"] for p in listed} == {node.member, other}
    assert all(set(p) >= {"id", "name", "host", "url", "ip", "online", "joined", "isLocal"}
               for p in listed)
    assert http("DELETE", peers) == (405, {"msg": "Use DELETE /loadsharing/peers/{host}"})
    assert http("POST", f"{url}/loadsharing/status") == (405, {"msg": "Method not allowed"})
    assert http("DELETE", f"{peers}/{node.member}") == \
        (400, {"msg": "Cannot remove local device from group"})
    assert http("DELETE", f"{peers}/nobody.local?x=1") == (404, {"msg": "Peer not found"})
    assert http("DELETE", f"{peers}/{other.replace(':', '%3A')}") == (200, {"msg": "done"})
    assert http("POST", f"{url}/loadsharing/discover") == (200, {"msg": "done"})
    status = http("GET", f"{url}/loadsharing/status")[1]
    assert status["config_consistent"] is True and status["online_count"] == 1
    assert status["computed_at"].endswith("Z")
    # the member list survived in the state directory, in OpenEVSE's shape
    stored = json.loads((node.harness.ctx.state_dir / "loadsharing_peers.json").read_text())
    assert stored == {"peers": []}


@pytest.mark.parametrize(("body", "msg"), [
    ({"loadsharing_group_max_current": -1}, "loadsharing_group_max_current must be >= 0"),
    ({"loadsharing_safety_factor": 1.2}, "loadsharing_safety_factor must be between 0.0 and 1.0"),
    ({"loadsharing_heartbeat_timeout": 4},
     "loadsharing_heartbeat_timeout must be between 5 and 600 seconds"),
    ({"loadsharing_failsafe_safe_current": 81},
     "loadsharing_failsafe_safe_current must be between 0 and 80 amps"),
    ({"loadsharing_failsafe_peer_assumed_current": -1},
     "loadsharing_failsafe_peer_assumed_current must be between 0 and 80 amps"),
    ({"loadsharing_failsafe_mode": "maybe"},
     "loadsharing_failsafe_mode must be 'safe_current' or 'disable'"),
    ({"loadsharing_group_max_current": 5},
     "loadsharing_failsafe_safe_current must not exceed loadsharing_group_max_current"),
])
def test_config_rejects_with_openevse_messages(node: NodeThread, body: dict, msg: str) -> None:
    before = http("GET", f"{node.url}/config")[1]
    assert http("POST", f"{node.url}/config", body) == (400, {"msg": msg})
    assert http("GET", f"{node.url}/config")[1] == before


def test_config_change(node: NodeThread) -> None:
    url = f"{node.url}/config"
    v0 = http("GET", url)[1]["loadsharing_config_version"]
    code, body = http("POST", url, {"loadsharing_group_max_current": 20, "other_key": 1})
    assert code == 200 and body["msg"] == "done"
    cfg = http("GET", url)[1]
    assert cfg["loadsharing_group_max_current"] == 20.0
    assert cfg["loadsharing_config_version"] == v0 + 1
    wait_for(lambda: node.transport.node.limit == 20)
    # a push naming no controller host is not an OpenEVSE controller's: the role is kept
    # (an OpenEVSE push switches the node: test_loadsharing_role_switch.py)
    assert http("POST", url, {"loadsharing_role": "member"})[0] == 200
    assert http("POST", url, {"loadsharing_group_max_current": 30}) == \
        (403, {"msg": "Load sharing configuration is read-only on members"})
    assert http("POST", url, {"loadsharing_role": ""})[0] == 200
    assert http("POST", url, {"loadsharing_group_max_current": 30})[0] == 200


def test_ws_full_status_then_deltas_and_ping(node: NodeThread) -> None:
    with connect(f"ws://{node.member}/ws", open_timeout=5) as ws:
        first = json.loads(ws.recv(5))
        assert {"amp", "voltage", "pilot", "state", "vehicle", "status", "max_current",
                "pgw_report", "loadsharing_config_hash"} <= set(first)
        assert first["amp"] == 10000  # mA on the OpenEVSE wire
        ws.send(json.dumps({"ping": 3}))
        seen = [json.loads(ws.recv(5)) for _ in range(6)]
        assert {"pong": 1} in seen
        # deltas: later frames hold only what changed (a report, a version counter ...)
        assert all("max_current" not in f for f in seen)
        node.call(node.harness.send(reading(state=1, vehicle=0)))
        wait_for(lambda: any(f.get("vehicle") == 0 for f in seen if "vehicle" in f)
                 or seen.append(json.loads(ws.recv(5))))


def test_ws_cuts_floods_and_oversize_frames(node: NodeThread) -> None:
    with connect(f"ws://{node.member}/ws", open_timeout=5, max_size=None) as ws:
        ws.recv(5)
        for i in range(200):
            try:
                ws.send(json.dumps({"ping": i}))
            except Exception:  # noqa: BLE001 - closed by the node, as wanted
                break
        wait_for(lambda: node.transport.net.api.counters["ws_flood"] >= 1)
    with connect(f"ws://{node.member}/ws", open_timeout=5, max_size=None) as ws:
        ws.recv(5)
        ws.send("x" * (70 * 1024))
        wait_for(lambda: node.transport.net.api.counters["ws_oversize"] >= 1)


# -- a peer that lies ----------------------------------------------------------------------
class LyingPeer:
    """A fake member: its /status and /ws send what a test tells them to."""

    def __init__(self, frames: list[str]) -> None:
        self.frames = frames
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/status", self.status)
        app.router.add_get("/ws", self.ws)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"amp": 0, "state": 1, "vehicle": 0})

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        while True:
            for f in self.frames:
                await sock.send_str(f)
            await asyncio.sleep(0.05)
            if sock.closed:
                return sock
            try:
                async with asyncio.timeout(0.01):
                    msg = await sock.receive()
            except TimeoutError:
                continue
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                return sock


def forged_report(node: str, **status: Any) -> str:
    r = Report(node=node, epoch=1, seq=int(time.time() * 1000), group="x",
               status=Status(**status), view=(node,), view_age=100.0, ready=True)
    return encode(r).decode()


@pytest.mark.parametrize("kind", ["garbage", "negative", "huge", "impersonation", "flood"])
def test_lying_peer_is_dropped_and_never_raises(tmp_path: Path, kind: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        frames = {
            "garbage": ["\x00\xffnot json", "[1,2]"],
            "negative": [json.dumps({"amp": -5000})],
            "huge": [json.dumps({"amp": 10_000_000}), json.dumps({"pilot": 10000})],
            "impersonation": [json.dumps({"pgw_report": forged_report("someone.else:1")})],
            "flood": [json.dumps({"amp": 1})] * 400,
        }[kind]
        peer = LyingPeer(frames)
        await peer.start()
        import aiohttp
        seen: list[Any] = []
        async with aiohttp.ClientSession() as session:
            client = PeerClient(peer.host, session, GroupAuth(), logging.getLogger("t"),
                                timeout=5, on_status=lambda h, d: seen.append(d),
                                on_report=seen.append)
            client.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                c = client.counters
                if (c["bad"] if kind != "flood" else c["flood"]) >= 3:
                    break
                await asyncio.sleep(0.05)
            await client.stop()
        await peer.runner.cleanup()
        c = client.counters
        if kind == "flood":
            assert c["flood"] >= 3  # excess dropped (and counted), the rest taken
        else:
            assert c["bad"] >= 3 and c["reports"] == 0
            assert all("pgw_report" not in d for d in seen if isinstance(d, dict))
            assert not any(isinstance(d, dict) and d.get("amp", 0) < 0 for d in seen)
    asyncio.run(main())


def test_a_member_that_lies_leaves_the_node_at_its_fallback(tmp_path: Path) -> None:
    """Two-member group whose other member only lies: never agreed, never above 6 A."""
    liar = LyingPeer([json.dumps({"amp": 10_000_000, "pgw_report": "{}"})])
    node = NodeThread(tmp_path / "n")
    try:
        node.call(liar.start())
        assert http("POST", f"{node.url}/loadsharing/peers",
                    {"host": liar.host, "reciprocal": False}) == (200, {"msg": "done"})
        limits = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            limits.append(node.transport.node.limit)
            time.sleep(0.1)
        assert max(limits[3:]) <= 6
        client = node.transport.net.clients[liar.host]
        assert client.counters["bad"] >= 1 and client.counters["reports"] == 0
    finally:
        node.call(liar.runner.cleanup())
        node.stop()


# -- authentication ------------------------------------------------------------------------
def test_group_secret_signs_reports_and_guards_writes(tmp_path: Path) -> None:
    secret = {"loadsharing_group_secret": "s3cret", "loadsharing_api_token": "tok",
              "loadsharing_api_open": False}
    a = NodeThread(tmp_path / "a", **secret)
    b = NodeThread(tmp_path / "b", **secret)
    c = NodeThread(tmp_path / "c", loadsharing_group_secret="other", loadsharing_api_token="t",
                   loadsharing_api_open=False)
    try:
        body = {"host": b.member}
        assert http("POST", f"{a.url}/loadsharing/peers", body) == \
            (401, {"msg": "Authentication required"})
        assert http("POST", f"{a.url}/loadsharing/peers", body,
                    headers={"Authorization": "Bearer nope"}) == (401, {"msg": "Invalid token"})
        assert http("POST", f"{a.url}/loadsharing/peers", body,
                    headers={"Authorization": "Bearer tok"}) == (200, {"msg": "done"})
        # the reciprocal add and the config push are signed by a: b takes them
        wait_for(lambda: a.member in b.transport.net.members.peers, 10)
        wait_for(lambda: a.transport.node.mode == "agreed" and b.transport.node.mode == "agreed"
                 and a.transport.node.limit == 16 and b.transport.node.limit == 16, 40)
        # a stranger with another secret can't sign its way in, nor be heard
        assert http("POST", f"{c.url}/loadsharing/peers", {"host": a.member},
                    headers={"Authorization": "Bearer t"}) == (200, {"msg": "done"})
        time.sleep(2)
        assert c.member not in a.transport.net.members.peers
        assert c.transport.net.clients[a.member].counters["reports"] == 0
        assert a.transport.net.api.counters["auth_refused"] >= 1
    finally:
        for n in (a, b, c):
            n.stop()


def test_auth_rules_offline() -> None:
    auth = GroupAuth("k", "tok", window=60)
    sig = auth.sign_report("{}", now=1000)
    assert auth.check_report(sig, "{}", now=1030) is None
    assert "window" in (auth.check_report(sig, "{}", now=1100) or "")
    assert auth.check_report(sig, '{"x":1}', now=1000) == "bad report signature"
    assert GroupAuth().check_report({}, "{}") is None  # no secret: OpenEVSE's trust model
    h = auth.sign_request("POST", "/config", b"{}", now=1000)
    assert auth.check_request("POST", "/config", b"{}", h, now=1001) is None
    assert auth.check_request("POST", "/config", b"{}", h, now=1002) == "Replayed request"
    assert auth.check_request("POST", "/config", b"{ }", auth.sign_request(
        "POST", "/config", b"{}", now=1000), now=1000) == "Invalid signature"


# -- persistence and the sync rule ---------------------------------------------------------
def test_members_persist_atomically_and_corrupt_is_empty(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("members")
    store = MemberStore(tmp_path, log)
    assert store.peers == ()
    assert store.add("b.local") and store.add("10.0.0.3:80") and not store.add("b.local")
    assert MemberStore(tmp_path, log).peers == ("10.0.0.3:80", "b.local")
    assert [p.name for p in tmp_path.iterdir()] == ["loadsharing_peers.json"]  # no temp left
    (tmp_path / "loadsharing_peers.json").write_bytes(b'{"peers": ["a.local", \xff')
    with caplog.at_level(logging.WARNING):
        assert MemberStore(tmp_path, log).peers == ()
    assert "corrupt" in caplog.text and "\\xff" in caplog.text


def test_sync_rule_version_then_updated_at_then_device_id() -> None:
    assert cs.wins((3, "a", 0.0, "z"), (2, "b", 9.0, "a"))
    assert not cs.wins((2, "a", 9.0, "a"), (3, "b", 0.0, "z"))
    assert not cs.wins((2, "same", 9.0, "a"), (2, "same", 0.0, "z"))
    assert cs.wins((2, "a", 9.0, "z"), (2, "b", 8.0, "a"))
    assert cs.wins((2, "a", 8.0, "a"), (2, "b", 8.0, "b"))
    assert not cs.wins((2, "a", 8.0, "b"), (2, "b", 8.0, "a"))


def test_hash_is_deterministic() -> None:
    values = {k: getattr(LoadSharingSettings(**{**BASE, "node_listen": "127.0.0.1:1"}), k)
              for k in cs.SYNCED}
    a = cs.config_hash(values, ("b:1", "a:1"))
    assert a == cs.config_hash({**values, "loadsharing_group_max_current": 32}, ("a:1", "b:1"))
    assert a != cs.config_hash(values, ("a:1",))


# -- the published API -------------------------------------------------------------------
def _has_long_integer(value: Any) -> bool:
    """An integer of more than 15 digits anywhere (the API's JSON reader refuses those)."""
    if isinstance(value, dict):
        return any(_has_long_integer(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_long_integer(v) for v in value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15


def test_server_matches_openapi(node: NodeThread) -> None:
    """schemathesis with every check on (also the negative ones: 405 with Allow, bodies the
    document forbids refused); examples per operation and the seed from the environment
    (PGW_LS_SCHEMA_EXAMPLES, PGW_LS_SCHEMA_SEED): modest in CI, larger by hand."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, assume, given, seed, settings
    from schemathesis.checks import positive_data_acceptance

    schema = schemathesis.openapi.from_path(ROOT / "docs/openapi/loadsharing.yaml")
    schema.config.update(base_url=node.url)
    examples = int(os.environ.get("PGW_LS_SCHEMA_EXAMPLES", "8"))
    run_seed = int(os.environ.get("PGW_LS_SCHEMA_SEED", "23"))
    # cross-key rules OpenAPI cannot state (ConfigWrite's description lists them): a body
    # valid key by key may be refused for these, and only these, reasons
    cross_key = ("must not exceed loadsharing_group_max_current",
                 "must be >= loadsharing_failsafe_safe_current", "in failsafe",
                 "group max x safety factor", "the INI is the ceiling")

    for op in schema.get_all_operations():
        operation = op.ok()
        if operation.method.upper() == "POST" and operation.path == "/loadsharing/peers":
            continue  # random hosts would be resolved and dialled: covered by hand above

        @seed(run_seed)
        @settings(max_examples=examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            # an OpenEVSE controller's push (role member with its host) turns the node into
            # that controller's member: test_loadsharing_role_switch.py, not fuzzed here
            body = case.body if isinstance(case.body, dict) else {}
            assume(not (body.get("loadsharing_role") == "member"
                        and body.get("loadsharing_controller_host")))
            if not (case.method.upper() == "POST" and case.path == "/config"):
                case.call_and_validate()
                return
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            if response.status_code == 400 and case.meta and case.meta.generation.mode.is_positive:
                msg = response.json().get("msg", "")
                if msg == "Could not parse JSON":  # the body's number limit (ConfigWrite says)
                    assert _has_long_integer(case.body), case.body
                    return
                assert any(rule in msg for rule in cross_key), (msg, case.body)

        check()


def test_hostile_http_requests_are_refused_in_one_line_each(
    node: NodeThread, caplog: pytest.LogCaptureFixture
) -> None:
    """NUL in a header, a body over the limit, a 405's Allow, a non-string host, 50 refused
    writes: clear answers, no traceback, refusals collapsed into one line with a count."""
    import socket

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.sendall(request)
            out = b""
            with contextlib.suppress(TimeoutError):  # an answer not followed by a close
                while chunk := sock.recv(65536):
                    out += chunk
        return out

    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        answer = raw(b"GET /status HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n")
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    big = raw(b"POST /config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Length: 1000000\r\n\r\n" + b"{" * 1000)
    assert big.startswith(b"HTTP/1.1 413")
    put = raw(b"PUT /loadsharing/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Length: 0\r\n\r\n")
    assert put.startswith(b"HTTP/1.1 405") and b"\r\nAllow: GET\r\n" in put
    delete = raw(b"DELETE /loadsharing/peers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert delete.startswith(b"HTTP/1.1 405") and b"\r\nAllow: GET, POST\r\n" in delete
    status, answer = http("POST", node.url + "/config", {"loadsharing_controller_host": {}})
    assert status == 400 and "must be a string" in answer["msg"]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    bad_http = [r for r in warnings if "BadHttpMessage" in r.getMessage()]
    assert len(bad_http) == 1, [r.getMessage() for r in bad_http]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# -- OpenEVSE nodes on the other end (simulators/openevse_node.py plays the firmware) --------
def test_an_openevse_controller_can_take_this_node_as_member(node: NodeThread) -> None:
    from simulators.openevse_node import OpenEvseNode

    ctl = OpenEvseNode(http_port=0, role="controller", group_max=32, plugged=True,
                       heartbeat_timeout=5)
    node.call(ctl.start())
    try:
        # a user adds this node on the controller: the reciprocal add reaches us while our
        # role is still "" (answered 200), then the controller pushes its keys and polls us
        code, _ = http("POST", f"http://{ctl.host}/loadsharing/peers", {"host": node.member})
        assert code == 200
        wait_for(lambda: http("GET", f"{node.url}/config")[1]["loadsharing_role"] == "member")
        cfg = http("GET", f"{node.url}/config")[1]
        assert cfg["loadsharing_controller_host"] == ctl.host
        # alone, it became the controller's member at run time (runtime_role.py): the
        # controller is not one of its masterless peers, and the role is kept on disk
        assert ctl.host not in node.transport.net.members.peers
        assert node.transport.roles.load() is not None
        peer = wait_for(lambda: next(
            (p for p in ctl.poller.snapshot()
             if p["host"] == node.member and p["online"] and p["config_pushed"]), None), 30)
        assert peer["connected"]
        # as a member, its keys are read-only for people
        wait_for(lambda: http("POST", f"{node.url}/config",
                              {"loadsharing_group_max_current": 40}) ==
                 (403, {"msg": "Load sharing configuration is read-only on members"}), 15)
    finally:
        node.call(ctl.stop())


def test_discovered_nodes_are_listed_but_not_joined(tmp_path: Path) -> None:
    """Two nodes advertising ``_openevse._tcp`` on loopback find each other (zeroconf)."""
    mdns = {"discovery": True, "discovery_interfaces": "127.0.0.1"}
    a = NodeThread(tmp_path / "a", mdns_name="pgw-test-a", **mdns)
    b = NodeThread(tmp_path / "b", mdns_name="pgw-test-b", **mdns)
    try:
        def listed() -> dict[str, Any] | None:
            assert http("POST", f"{a.url}/loadsharing/discover") == (200, {"msg": "done"})
            return next((p for p in http("GET", f"{a.url}/loadsharing/peers")[1]
                         if p["host"] == b.member), None)

        entry = wait_for(listed, 20, 0.5)
        assert entry["joined"] is False and entry["name"] == "pgw-test-b.local"
        assert entry["id"] == b.transport.net.device_id
        assert not any(p["host"] == a.member and not p["isLocal"]
                       for p in http("GET", f"{a.url}/loadsharing/peers")[1])
    finally:
        a.stop()
        b.stop()
