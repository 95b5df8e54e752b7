"""The simulated OpenEVSE node against the firmware facts in LOADSHARING.md.

Pure rules first (allocation, validation), then one node's REST and ``/ws`` on loopback, then
a simulated controller with simulated members converging, losing its controller, and removing
a member. Waits poll with generous deadlines; nothing is judged by the wall clock.

Size: over the ~400-line guide on purpose: every firmware fact is checked against one simulator.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from pytests.helpers import async_wait_for, free_port
from simulators import openevse_loadsharing as ls
from simulators.ev_model import EvModel
from simulators.evse_model import EvseModel
from simulators.openevse_node import OpenEvseNode

# -- pure: the firmware's allocation -----------------------------------------------------------


def member(i: int, state: int = 3, online: bool = True, **kw: Any) -> ls.MemberInput:
    return ls.MemberInput(
        id=f"n{i}",
        online=online,
        vehicle=kw.pop("vehicle", 1),
        state=state,
        min_current=kw.pop("min_current", 6.0),
        max_current=kw.pop("max_current", 32.0),
        **kw,
    )


def targets(members: list[ls.MemberInput], group_max: float, **kw: Any) -> list[float]:
    allocs, _ = ls.allocate(members, ls.GroupConfig(group_max=group_max, **kw), ls.Rotation(), 0)
    return [a.target_current for a in allocs]


@pytest.mark.parametrize(
    ("count", "group_max", "expected"),
    [
        (1, 50, [32.0]),
        (2, 50, [25.0, 25.0]),
        (3, 60, [20.0, 20.0, 20.0]),
        (4, 20, [6.0, 6.0, 6.0, 0.0]),
    ],
)
def test_expected_results(count: int, group_max: float, expected: list[float]) -> None:
    assert targets([member(i) for i in range(count)], group_max) == expected


def test_offline_member_reserves_assumed_current() -> None:
    allocs, failsafe = ls.allocate(
        [member(0), member(1), member(2, online=False)],
        ls.GroupConfig(group_max=50),
        ls.Rotation(),
        0,
    )
    assert [(a.target_current, a.reason) for a in allocs] == [
        (22.0, "equal_share"),
        (22.0, "equal_share"),
        (0.0, "offline"),
    ]
    assert failsafe
    allocs, _ = ls.allocate(
        [member(0), member(1, online=False)],
        ls.GroupConfig(group_max=50, failsafe_mode="disable"),
        ls.Rotation(),
        0,
    )
    assert {(a.target_current, a.reason) for a in allocs} == {(0.0, "failsafe_disabled")}


def test_state_b_gets_connected_min_outside_the_budget() -> None:
    allocs, _ = ls.allocate(
        [member(0), member(1), member(2, state=2), member(3, state=1, vehicle=0)],
        ls.GroupConfig(group_max=20),
        ls.Rotation(),
        0,
    )
    assert [(a.target_current, a.reason) for a in allocs] == [
        (10.0, "equal_share"),
        (10.0, "equal_share"),
        (6.0, "connected_min"),
        (0.0, "idle"),
    ]
    # sleeping (254) is not demanding, so a member put to sleep by a 0 A target stays at 0;
    # disabled (255) is, and gets connected_min
    assert targets([member(0, state=254), member(1, state=255)], 20) == [0.0, 6.0]
    assert targets([member(0, state=1, vehicle=0)], 20, keep_awake=True) == [6.0]
    assert targets([member(0)], 0) == []


def test_rotation_under_scarcity() -> None:
    cfg = ls.GroupConfig(group_max=13, rotation_interval=100)
    rotation = ls.Rotation()
    chosen = []
    for now in (0, 50, 100, 200, 300):
        allocs, _ = ls.allocate([member(i) for i in range(3)], cfg, rotation, now)
        chosen.append(tuple(a.id for a in allocs if a.reason == "min_subset"))
    assert chosen == [("n0", "n1"), ("n0", "n1"), ("n1", "n2"), ("n0", "n2"), ("n0", "n1")]
    # priority first: the lower number wins whatever the id
    allocs, _ = ls.allocate(
        [member(0, priority=1), member(1, priority=0)],
        ls.GroupConfig(group_max=10, rotation_interval=0),
        ls.Rotation(),
        0,
    )
    assert [a.reason for a in allocs] == ["insufficient", "min_subset"]


def test_demand_cap_is_sticky_and_probes() -> None:
    cap = ls.DemandCap()
    kw = {"pilot": 20.0, "amps": 10.0, "min_a": 6.0, "max_a": 32.0}
    assert cap.effective_max("a", True, **kw) == 10.0
    cap.offered("a", 10.0)
    capped = [cap.effective_max("a", True, **{**kw, "pilot": 10.0}) for _ in range(5)]
    assert capped == [10.0] * 5
    assert cap.effective_max("a", True, **{**kw, "pilot": 10.0}) == 32.0  # the probe
    assert cap.effective_max("a", False, **kw) == 32.0
    assert cap.effective_max("b", True, **{**kw, "amps": 2.0}) == 6.0  # floored at the minimum


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"loadsharing_group_max_current": -1}, ls.MSG_GROUP_MAX),
        ({"loadsharing_safety_factor": 1.5}, ls.MSG_SAFETY),
        ({"loadsharing_heartbeat_timeout": 4}, ls.MSG_TIMEOUT),
        ({"loadsharing_heartbeat_timeout": 601}, ls.MSG_TIMEOUT),
        ({"loadsharing_failsafe_safe_current": 81}, ls.MSG_SAFE),
        ({"loadsharing_failsafe_peer_assumed_current": -1}, ls.MSG_ASSUMED),
        ({"loadsharing_failsafe_mode": "off"}, ls.MSG_MODE),
        (
            {"loadsharing_group_max_current": 10, "loadsharing_failsafe_safe_current": 12},
            ls.MSG_SAFE_OVER_MAX,
        ),
    ],
)
def test_validation_messages(body: dict[str, Any], message: str) -> None:
    assert ls.validate(body, ls.DEFAULT_CONFIG) == message


# -- one node on loopback -----------------------------------------------------------------------


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, raw: str | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    async with session.request(method, url, data=data) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


def test_status_units_and_rest_messages() -> None:
    async def main() -> None:
        model = EvseModel(ev=EvModel(max_rate_a=16.0))
        node = OpenEvseNode(plugged=True, model=model, hostname="openevse-test")
        await node.start()
        base = f"http://{node.host}"
        try:
            async with aiohttp.ClientSession() as s:
                await async_wait_for(lambda: node.model.ev.draw_a > 0)
                code, st = await call(s, "GET", f"{base}/status")
                assert code == 200
                assert (st["amp"], st["voltage"], st["pilot"]) == (16000, 240, 32)
                assert (st["state"], st["vehicle"], st["status"]) == (3, 1, "active")
                assert st["loadsharing_min_current"] == 6
                assert st["loadsharing_max_current"] == 32
                assert st["loadsharing_priority"] == 0
                assert (await call(s, "PUT", f"{base}/status"))[1] == {"msg": "Method not allowed"}

                peers = f"{base}/loadsharing/peers"
                for raw, expected in [
                    ("{nope", (400, "Invalid JSON")),
                    ('{"x": 1}', (400, "Missing required 'host' parameter")),
                    ('{"host": "  "}', (400, "Host cannot be empty")),
                    (json.dumps({"host": node.host}), (400, "Cannot add local device as peer")),
                    ('{"host": "openevse-test"}', (400, "Cannot add local device as peer")),
                    (
                        '{"host": "garage"}',
                        (400, "Invalid host format - must contain domain or IP"),
                    ),
                    ('{"host": "127.0.0.1:9", "reciprocal": false}', (200, "done")),
                    ('{"host": "127.0.0.1:9", "reciprocal": false}', (200, "already in group")),
                ]:
                    code, body = await call(s, "POST", peers, raw=raw)
                    assert (code, body["msg"]) == expected, raw
                code, rows = await call(s, "GET", peers)
                assert [(r["host"], r["isLocal"]) for r in rows] == [
                    (node.host, True),
                    ("127.0.0.1:9", False),
                ]
                assert set(rows[1]) == {
                    "id",
                    "name",
                    "host",
                    "url",
                    "ip",
                    "online",
                    "joined",
                    "isLocal",
                }
                assert (await call(s, "DELETE", peers))[0] == 405
                assert (await call(s, "DELETE", f"{peers}/127.0.0.2%3A9?x=1"))[1] == {
                    "msg": "Peer not found"
                }
                assert (await call(s, "DELETE", f"{peers}/{node.host}"))[0] == 400
                assert (await call(s, "PUT", f"{peers}/127.0.0.1:9"))[0] == 405
                assert await call(s, "DELETE", f"{peers}/127.0.0.1%3A9") == (200, {"msg": "done"})
                assert await call(s, "POST", f"{base}/loadsharing/discover") == (
                    200,
                    {"msg": "done"},
                )

                code, status = await call(s, "GET", f"{base}/loadsharing/status")
                assert code == 200
                for key in (
                    "enabled",
                    "group_id",
                    "computed_at",
                    "failsafe_active",
                    "online_count",
                    "offline_count",
                    "peers",
                    "allocations",
                ):
                    assert key in status
                assert status["peers"][0]["status"]["amp"] == 16000

                cfg = f"{base}/config"
                assert await call(s, "POST", cfg, raw="") == (400, {"msg": "No Body"})
                assert await call(s, "POST", cfg, raw="{nope") == (
                    400,
                    {"msg": "Could not parse JSON"},
                )
                assert await call(s, "DELETE", f"{peers}/") == (400, {"msg": "Invalid path"})
                code, body = await call(s, "POST", cfg, {"loadsharing_safety_factor": 2})
                assert (code, body["msg"]) == (400, ls.MSG_SAFETY)
                code, body = await call(s, "POST", cfg, {"loadsharing_group_id": "garage"})
                assert (code, body["msg"]) == (200, "done")
                code, body = await call(s, "POST", cfg, {"loadsharing_group_id": "garage"})
                assert (code, body["msg"]) == (200, "no change")
                code, got = await call(s, "GET", cfg)
                assert got["loadsharing_group_id"] == "garage"
                assert got["wifi_serial"] == node.serial.upper()
                assert got["hostname"] == "openevse-test"

                code, ev = await call(s, "POST", f"{base}/sim/unplug")
                assert (ev["plugged"], ev["draw_a"]) == (False, 0.0)
                code, ev = await call(s, "GET", f"{base}/sim/ev")
                assert ev["state"] == 1
        finally:
            await node.stop()

    run(main)


def test_member_is_read_only_but_takes_its_controller_push() -> None:
    async def main() -> None:
        node = OpenEvseNode(plugged=True)
        await node.start()
        base = f"http://{node.host}"
        push = {
            "loadsharing_enabled": True,
            "loadsharing_role": "member",
            "loadsharing_controller_host": "127.0.0.1:1",
            "loadsharing_group_max_current": 32,
        }
        try:
            async with aiohttp.ClientSession() as s:
                # role "": the controller's reciprocal add is accepted
                body = {"host": "127.0.0.1:1", "reciprocal": False}
                assert (await call(s, "POST", f"{base}/loadsharing/peers", body))[0] == 200
                assert (await call(s, "POST", f"{base}/config", push))[0] == 200
                assert node.is_member
                for write in (
                    {"loadsharing_group_max_current": 64},
                    {"loadsharing_role": "controller"},
                ):
                    assert await call(s, "POST", f"{base}/config", write) == (
                        403,
                        {"msg": ls.MSG_READ_ONLY},
                    )
                assert (await call(s, "POST", f"{base}/config", {"max_current_soft": 16}))[0] == 200
                for method, url in (
                    ("POST", f"{base}/loadsharing/peers"),
                    ("DELETE", f"{base}/loadsharing/peers/127.0.0.1%3A1"),
                ):
                    code, body = await call(s, method, url, {"host": "127.0.0.1:5"})
                    assert (code, body["msg"]) == (403, ls.MSG_READ_ONLY)
                # a member without any frame yet is in failsafe: safe current 6 A
                await async_wait_for(lambda: node.model.ev.draw_a == 6.0)
                code, status = await call(s, "GET", f"{base}/loadsharing/status")
                assert status["failsafe_active"] is True
                # a frame from any /ws client is applied
                async with s.ws_connect(f"{base}/ws") as ws:
                    await ws.send_str(
                        json.dumps({"loadsharing": {"target_current": 12.5, "reason": "x"}})
                    )
                    await async_wait_for(lambda: node.model.ev.draw_a == 12.0)
                    await ws.send_str(
                        json.dumps({"loadsharing": {"target_current": 0, "reason": "idle"}})
                    )
                    await async_wait_for(lambda: node.model.state == 254)
                reset = {
                    "loadsharing_enabled": False,
                    "loadsharing_role": "",
                    "loadsharing_controller_host": "",
                }
                assert (await call(s, "POST", f"{base}/config", reset))[0] == 200
                assert not node.is_member
                await async_wait_for(lambda: node.model.ev.draw_a == 16.0)  # its own max again
        finally:
            await node.stop()

    run(main)


def test_ws_full_status_then_deltas_and_pong() -> None:
    async def main() -> None:
        node = OpenEvseNode(idle_push=0)
        await node.start()
        try:
            async with aiohttp.ClientSession() as s, s.ws_connect(f"http://{node.host}/ws") as ws:
                first = json.loads((await ws.receive(timeout=10)).data)
                assert set(node.status()) <= set(first)
                await ws.send_str('{"ping": 7}')
                assert json.loads((await ws.receive(timeout=10)).data) == {"pong": 1}
                node.plug()
                seen: dict[str, Any] = {}
                while not {"amp", "voltage", "power"} <= set(seen):
                    msg = json.loads((await ws.receive(timeout=10)).data)
                    assert len(msg) < len(first)  # a delta, not the full document again
                    seen.update(msg)
                assert seen["state"] == 3
                assert seen["vehicle"] == 1
                assert seen["amp"] == 32000
        finally:
            await node.stop()

    run(main)


# -- a group on loopback ------------------------------------------------------------------------


def make_member(ev_max: float = 32.0, plugged: bool = True) -> OpenEvseNode:
    return OpenEvseNode(
        plugged=plugged, model=EvseModel(ev=EvModel(max_rate_a=ev_max)), heartbeat_timeout=5
    )


def draws(nodes: list[OpenEvseNode]) -> list[float]:
    return [n.model.ev.draw_a for n in nodes]


def test_group_converges_caps_a_slow_ev_and_fails_safe_without_controller() -> None:
    async def main() -> None:
        members = [make_member(), make_member(), make_member(ev_max=8.0)]
        for m in members:
            await m.start()
        controller = OpenEvseNode(
            role="controller", group_max=36, plugged=True, heartbeat_timeout=5
        )
        await controller.start()
        nodes = [controller, *members]
        try:
            async with aiohttp.ClientSession() as s:
                for m in members:
                    code, body = await call(
                        s, "POST", f"http://{controller.host}/loadsharing/peers", {"host": m.host}
                    )
                    assert (code, body["msg"]) == (200, "done")
                # the reciprocal add and the config push make each one a member
                await async_wait_for(lambda: all(m.is_member for m in members), 30)
                for m in members:
                    assert m.group_peers == [controller.host]
                    assert m.config["loadsharing_controller_host"] == controller.host
                    assert m.config["loadsharing_group_max_current"] == 36
                # four charging: 36 A equal share is 9 A; the 8 A EV is capped to its draw and
                # the other three share the rest: (36 - 8) / 3
                expected = [28 / 3, 28 / 3, 28 / 3, 8.0]

                def converged() -> bool:
                    got = {a.id: a.target_current for a in controller.poller.allocations}
                    want = dict(zip([n.host for n in nodes], expected, strict=True))
                    return got.keys() == want.keys() and all(
                        abs(got[k] - want[k]) < 0.05 for k in want
                    )

                await async_wait_for(converged, 45)
                await async_wait_for(lambda: draws(nodes) == [9.0, 9.0, 9.0, 8.0], 20)
                assert sum(draws(nodes)) <= 36
                code, status = await call(s, "GET", f"http://{controller.host}/loadsharing/status")
                assert status["online_count"] == 4
                # the controller learnt each member's identity with one GET /config
                assert [p["id"] for p in status["peers"][1:]] == [m.serial for m in members]
                assert [p["name"] for p in status["peers"][1:]] == [m.hostname for m in members]
                assert {a["reason"] for a in status["allocations"]} == {"equal_share"}
                # state B: connected_min outside the budget, the others share all 36 A
                await call(s, "POST", f"http://{members[0].host}/sim/ev", {"wants_charge": False})
                await async_wait_for(lambda: members[0].limit == 6.0, 20)

                await controller.stop()
                nodes.remove(controller)
                # every member falls back to the safe current after the heartbeat timeout
                await async_wait_for(lambda: draws(members[1:]) == [6.0, 6.0], 30)
                assert all(m.member_failsafe for m in members)
                code, status = await call(s, "GET", f"http://{members[1].host}/loadsharing/status")
                assert status["failsafe_active"] is True
        finally:
            for n in nodes:
                await n.stop()

    run(main)


def test_removed_member_is_reset_and_offline_member_reserved() -> None:
    async def main() -> None:
        members = [make_member(), make_member()]
        for m in members:
            await m.start()
        controller = OpenEvseNode(
            role="controller",
            group_max=30,
            heartbeat_timeout=5,
            peers=[m.host for m in members],
            plugged=True,
        )
        await controller.start()
        nodes = [controller, *members]
        try:
            await async_wait_for(lambda: draws(nodes) == [10.0, 10.0, 10.0], 45)
            # a member that dies is offline after the heartbeat timeout: 6 A reserved for it
            await members[1].stop()
            nodes.remove(members[1])
            await async_wait_for(lambda: draws(nodes) == [12.0, 12.0], 45)
            reasons = [a.reason for a in controller.poller.allocations]
            assert reasons == ["equal_share", "equal_share", "offline"]
            async with aiohttp.ClientSession() as s:
                url = f"http://{controller.host}/loadsharing/peers/{members[0].host}"
                assert await call(s, "DELETE", url) == (200, {"msg": "done"})
            assert members[0].role == ""
            assert members[0].config["loadsharing_enabled"] is False
            assert members[0].host not in controller.group_peers
        finally:
            for n in nodes:
                await n.stop()

    run(main)


def test_silent_member_is_dropped_and_reconnected_at_once() -> None:
    async def main() -> None:
        quiet = OpenEvseNode(idle_push=0, heartbeat_timeout=5)  # idle and silent on /ws
        await quiet.start()
        controller = OpenEvseNode(
            role="controller", group_max=30, heartbeat_timeout=5, peers=[quiet.host]
        )
        await controller.start()
        try:
            peer = controller.poller.peers[quiet.host]
            await async_wait_for(lambda: peer.connects >= 1 and quiet.is_member, 20)
            # nothing but the first texts: offline after 5 s, the socket reopened at once
            await async_wait_for(lambda: peer.connects >= 3, 40)
            assert peer.retry == 0
        finally:
            await controller.stop()
            await quiet.stop()

    run(main)


def test_command_line_prints_ready_and_serves() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulators.openevse_node",
            "--http-port",
            str(port),
            "--plugged",
            "--role",
            "controller",
            "--group-max",
            "20",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready" in line and f"127.0.0.1:{port}" in line

        async def main() -> None:
            async with aiohttp.ClientSession() as s:
                code, ev = await call(s, "GET", f"http://127.0.0.1:{port}/sim/ev")
                assert code == 200 and ev["plugged"] is True

                async def limited() -> bool:
                    return (await call(s, "GET", f"http://127.0.0.1:{port}/sim/ev"))[1][
                        "draw_a"
                    ] == 20.0

                for _ in range(300):
                    if await limited():
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError("the controller never limited itself to the group max")

        run(main)
    finally:
        proc.terminate()
        proc.wait(10)


def test_mdns_advertisement_on_loopback() -> None:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    name = f"openevse-test{os.getpid()}"  # unique: two test runs may share the loopback

    async def main() -> None:
        node = OpenEvseNode(mdns=True, hostname=name, serial="0A1B2C3D4E5F")
        await node.start()
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            info = AsyncServiceInfo("_openevse._tcp.local.", f"{name}._openevse._tcp.local.")
            assert await info.async_request(zc.zeroconf, 10_000)
            assert info.port == node.http_port
            assert info.parsed_addresses() == ["127.0.0.1"]
            assert info.properties[b"id"] == b"0a1b2c3d4e5f"
            assert info.properties[b"type"] == b"openevse_wifi_v1"
            assert info.properties[b"version"]
        finally:
            await zc.async_close()
            await node.stop()

    run(main)


def test_sim_state_endpoint_answers_json() -> None:
    """GET /sim/state once answered 500: its handler shadowed the function it called."""
    import json
    import urllib.request

    async def main() -> dict:
        from simulators.openevse_node import OpenEvseNode

        node = OpenEvseNode(http_port=0)
        await node.start()
        try:
            url = f"http://{node.host}/sim/state"
            return await asyncio.to_thread(
                lambda: json.load(urllib.request.urlopen(url, timeout=5)))
        finally:
            await node.stop()

    state = asyncio.run(main())
    assert "role" in state
