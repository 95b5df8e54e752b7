"""Nothing bypasses the group limit (issue 17): a role reset, a restart in the middle of a group,
a stranger's push or frame in open mode: the charger is never told more than the node's limit,
and the INI's group maximum stays the ceiling.

Real HTTP/WebSocket on 127.0.0.1; the OpenEVSE controller is ``simulators.openevse_node``; the
charger is the transport's command stream (``set_current`` values it sends).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from pytests.helpers import Harness, async_wait_for, free_port
from pytests.test_loadsharing_openevse import _charging, _limits
from simulators.openevse_node import OpenEvseNode

T = 5
INI_MAX = 10


def _settings(port: int, **extra: Any) -> Any:
    from transports.loadsharing.settings import LoadSharingSettings

    return LoadSharingSettings(**{
        "transport": "loadsharing", "charger": "rapi", "loadsharing_enabled": True,
        "loadsharing_group_max_current": INI_MAX, "loadsharing_heartbeat_timeout": T,
        "loadsharing_response_time": 1.0, "charger_heartbeat": 0, "discovery": False,
        "loadsharing_api_open": True, "node_listen": f"127.0.0.1:{port}", **extra})


def _node(port: int, state: Path, name: str = "ls", **extra: Any) -> Harness:
    from transports.loadsharing.transport import LoadSharing

    state.mkdir(parents=True, exist_ok=True)
    return Harness(LoadSharing, _settings(port, **extra), name, state)


def _serving(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _modes(h: Harness) -> list[str]:
    return [e.data["loadsharing_mode"] for e in h.of_kind("reading")
            if "loadsharing_mode" in e.data]


async def _role_reset(tmp: Path) -> None:
    port = free_port()
    gw = _node(port, tmp / "gw")
    await gw.send(_charging(6.0))
    await gw.start()
    ctl = OpenEvseNode(http_port=0, role="controller", group_max=20, plugged=True,
                       peers=[f"127.0.0.1:{port}"], heartbeat_timeout=T, idle_push=1.0,
                       alloc_interval=1.0)
    try:
        await async_wait_for(lambda: INI_MAX in _limits(gw), timeout=30)
        await ctl.start()  # reciprocal add and push: a member at run time
        await async_wait_for(lambda: "member" in _modes(gw), timeout=40)
        await ctl.stop()
        joined = len(_limits(gw))
        # the reset OpenEVSE's controller sends on removal (in open mode anyone may)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{port}/config",
                                 json={"loadsharing_role": "", "loadsharing_enabled": True,
                                       "loadsharing_controller_host": ""}) as r:
                assert r.status == 200
        await async_wait_for(lambda: _modes(gw)[-1] == "agreed" and _limits(gw)[-1] == INI_MAX,
                             timeout=40)
        await asyncio.sleep(2.0)
        after = _limits(gw)[joined:]
        assert after and max(after) <= INI_MAX, after  # never the charger's own 32 A
        assert _limits(gw)[-1] == INI_MAX  # the masterless limit is said again, not deduped
    finally:
        await gw.stop()
        await ctl.stop()


def test_a_role_reset_leaves_the_charger_at_the_node_limit(tmp_path: Path) -> None:
    asyncio.run(_role_reset(tmp_path))


async def _restart_mid_group(tmp: Path) -> None:
    pa, pb = free_port(), free_port()
    extra = {"loadsharing_group_max_current": 20}
    a = _node(pa, tmp / "a", **extra)
    b = _node(pb, tmp / "b", **extra)
    for h in (a, b):
        await h.send(_charging(6.0))
        await h.start()
    a2: Harness | None = None
    try:
        await async_wait_for(lambda: _limits(a) and _limits(b), timeout=30)  # both serving
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{pa}/loadsharing/peers",
                                 json={"host": f"127.0.0.1:{pb}"}) as r:
                assert r.status == 200
        await async_wait_for(lambda: _limits(a)[-1:] == [10] and _limits(b)[-1:] == [10]
                             and _modes(a)[-1] == "agreed", timeout=60)
        await a.send(_charging(10.0))
        await a.stop()  # the process dies in the middle of the group's life
        a2 = _node(pa, tmp / "a", **extra)
        await a2.send(_charging(10.0))  # the charger still offers what the old node set
        await a2.start()
        await async_wait_for(lambda: _limits(a2)[-1:] == [10] and _modes(a2)[-1] == "agreed",
                             timeout=90)
        first = _limits(a2)[0]
        assert first <= 6, _limits(a2)  # a restart starts from the failsafe current
        assert max(_limits(a) + _limits(a2) + _limits(b)) <= 10
    finally:
        for h in (a, b, a2):
            if h is not None:
                await h.stop()


def test_a_restart_mid_group_never_raises_a_charger(tmp_path: Path) -> None:
    asyncio.run(_restart_mid_group(tmp_path))


async def _stranger(tmp: Path) -> None:
    port = free_port()
    gw = _node(port, tmp / "gw")
    await gw.send(_charging(6.0))
    await gw.start()
    url = f"http://127.0.0.1:{port}"
    try:
        await async_wait_for(lambda: _limits(gw)[-1:] == [INI_MAX], timeout=30)
        async with aiohttp.ClientSession() as http:
            # a person's write above the INI: refused, and says why
            async with http.post(f"{url}/config",
                                 json={"loadsharing_group_max_current": 80}) as r:
                body = await r.json()
                assert r.status == 400 and "the INI is the ceiling" in body["msg"], body
            # not JSON's numbers: refused
            for text in ('{"loadsharing_group_max_current": Infinity}',
                         '{"loadsharing_group_max_current": 1e309}',
                         '{"loadsharing_group_max_current": NaN}'):
                async with http.post(f"{url}/config", data=text) as r:
                    assert r.status == 400, text
            # a peer-style push (sync fields) raising the group maximum: adopted for the
            # group's agreement, but this node's limit stays under its INI
            async with http.get(f"{url}/config") as r:
                cfg = await r.json()
            push = {**{k: v for k, v in cfg.items() if k.startswith("loadsharing_")},
                    "loadsharing_group_max_current": 80,
                    "loadsharing_config_version": cfg["loadsharing_config_version"] + 5,
                    "loadsharing_config_updated_at": cfg["loadsharing_config_updated_at"] + 1}
            async with http.post(f"{url}/config", data=json.dumps(push)) as r:
                assert r.status in (200, 400, 409)
            # allocation frames into /ws from anyone: a masterless node takes none
            async with http.ws_connect(f"{url}/ws") as ws:
                await ws.send_str(json.dumps({"loadsharing": {"target_current": 32,
                                                              "reason": "equal_share"}}))
                await asyncio.sleep(1.0)
            async with http.get(f"{url}/config") as r:
                cfg = await r.json()
                assert json.dumps(cfg, allow_nan=False)  # GET /config is always JSON
        await asyncio.sleep(3.0)
        assert max(_limits(gw)) <= INI_MAX, _limits(gw)
    finally:
        await gw.stop()


def test_a_strangers_push_in_open_mode_cannot_raise_the_group_maximum(tmp_path: Path) -> None:
    asyncio.run(_stranger(tmp_path))


async def _stranger_frames_to_a_member(tmp: Path) -> None:
    port = free_port()
    gw = _node(port, tmp / "gw", loadsharing_role="member")
    await gw.send(_charging(6.0))
    await gw.start()
    url = f"http://127.0.0.1:{port}"
    try:
        await async_wait_for(lambda: _serving(port), timeout=30)
        async with aiohttp.ClientSession() as http:
            push = {"loadsharing_enabled": True, "loadsharing_role": "member",
                    "loadsharing_controller_host": "127.0.0.1:1",
                    "loadsharing_group_max_current": 80}
            async with http.post(f"{url}/config", json=push) as r:
                assert r.status == 200
            async with http.ws_connect(f"{url}/ws") as ws:
                for _ in range(4):
                    await ws.send_str(json.dumps({"loadsharing": {"target_current": 32,
                                                                  "reason": "equal_share"}}))
                    await asyncio.sleep(0.5)
        await async_wait_for(lambda: _limits(gw)[-1:] == [INI_MAX], timeout=20)
        assert max(_limits(gw)) <= INI_MAX, _limits(gw)
    finally:
        await gw.stop()


def test_a_controller_frame_cannot_raise_a_member_above_its_ini(tmp_path: Path) -> None:
    asyncio.run(_stranger_frames_to_a_member(tmp_path))


async def _controller_ceiling(tmp: Path) -> None:
    port = free_port()
    gw = _node(port, tmp / "ctl", loadsharing_role="controller")
    await gw.send(_charging(6.0))
    await gw.start()
    url = f"http://127.0.0.1:{port}"
    try:
        await async_wait_for(lambda: _serving(port), timeout=30)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/config",
                                 json={"loadsharing_group_max_current": 80}) as r:
                body = await r.json()
                assert r.status == 400 and "the INI is the ceiling" in body["msg"], body
            async with http.post(f"{url}/config",
                                 json={"loadsharing_group_max_current": 8}) as r:
                assert r.status == 200  # lowering is allowed
            async with http.get(f"{url}/config") as r:
                assert (await r.json())["loadsharing_group_max_current"] == 8
        await async_wait_for(lambda: _limits(gw)[-1:] == [8], timeout=20)
        assert max(_limits(gw)) <= INI_MAX
    finally:
        await gw.stop()


def test_a_controller_takes_no_group_maximum_above_its_ini(tmp_path: Path) -> None:
    asyncio.run(_controller_ceiling(tmp_path))
