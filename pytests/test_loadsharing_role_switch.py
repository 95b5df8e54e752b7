"""A masterless gateway node added from an OpenEVSE controller's side (its UI: reciprocal add,
then the push) becomes its member at run time, keeps that across a restart, and goes back to the
masterless protocol when the controller resets its role (``runtime_role.py``). A node that shares
its breaker with other gateway nodes refuses the push (409) and keeps its group.
Real HTTP/WebSocket on 127.0.0.1; the controller is ``simulators.openevse_node``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from pytests.helpers import Harness, async_wait_for, free_port
from pytests.test_loadsharing_openevse import _charging, _limits
from simulators.openevse_node import OpenEvseNode
from transports.loadsharing.runtime_role import FILE_NAME

T = 5


def _settings(port: int, **extra: Any) -> Any:
    from transports.loadsharing.settings import LoadSharingSettings

    return LoadSharingSettings(**{
        "transport": "loadsharing", "charger": "rapi", "loadsharing_enabled": True,
        "loadsharing_group_max_current": 32, "loadsharing_heartbeat_timeout": T,
        "loadsharing_response_time": 1.0, "charger_heartbeat": 0, "discovery": False,
        "loadsharing_api_open": True,
        "node_listen": f"127.0.0.1:{port}", **extra})


def _modes(h: Harness) -> list[str]:
    return [e.data["loadsharing_mode"] for e in h.of_kind("reading")
            if "loadsharing_mode" in e.data]


async def _scenario(tmp: Path) -> None:
    from transports.loadsharing.transport import LoadSharing

    port = free_port()
    host = f"127.0.0.1:{port}"
    state = tmp / "gw"
    state.mkdir()

    def node() -> Harness:
        return Harness(LoadSharing, _settings(port), "ls", state)

    gw = node()
    await gw.send(_charging(6.0))
    await gw.start()
    ctl = OpenEvseNode(http_port=0, role="controller", group_max=20, plugged=True,
                       peers=[host], heartbeat_timeout=T, idle_push=1.0, alloc_interval=1.0)
    try:
        # alone and masterless: the whole 32 A
        await async_wait_for(lambda: 32 in _limits(gw), timeout=30)
        assert "agreed" in _modes(gw)
        # the controller adds it (reciprocal add, then its push): a member at run time, kept
        await ctl.start()
        await async_wait_for(lambda: _limits(gw)[-1] == 10, timeout=40)
        assert "member" in _modes(gw)
        assert (state / "ls" / FILE_NAME).exists()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}/config") as r:
                cfg = await r.json()
            assert cfg["loadsharing_role"] == "member"
            assert cfg["loadsharing_controller_host"] == ctl.host
            async with http.post(f"http://{host}/config",
                                 json={"loadsharing_group_max_current": 80}) as r:
                assert r.status == 403  # read-only on a member
        # restarted, it is still the controller's member (no masterless detour)
        await gw.stop()
        gw = node()
        await gw.send(_charging(10.0))
        await gw.start()
        await async_wait_for(lambda: _limits(gw) != [] and _limits(gw)[-1] == 10, timeout=40)
        assert "agreed" not in _modes(gw)
        # the controller removes it (resets its role first): back to masterless, 32 A again
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"http://{ctl.host}/loadsharing/peers/{host}") as r:
                assert r.status == 200
        await async_wait_for(lambda: not (state / "ls" / FILE_NAME).exists(), timeout=30)
        await async_wait_for(lambda: _limits(gw)[-1] == 32 and _modes(gw)[-1] == "agreed",
                             timeout=40)
    finally:
        await gw.stop()
        await ctl.stop()


def test_masterless_node_joins_and_leaves_an_openevse_group(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


async def _refusal(tmp: Path) -> None:
    from transports.loadsharing.transport import LoadSharing

    a_port, b_port = free_port(), free_port()
    a = Harness(LoadSharing, _settings(a_port), "a", tmp / "a")
    b = Harness(LoadSharing, _settings(b_port), "b", tmp / "b")
    for d in ("a", "b"):
        (tmp / d).mkdir(exist_ok=True)
    for h in (a, b):
        await h.send(_charging(6.0))
        await h.start()
    try:
        async with aiohttp.ClientSession() as http:
            await async_wait_for(lambda: _limits(a) != [], timeout=30)
            async with http.post(f"http://127.0.0.1:{a_port}/loadsharing/peers",
                                 json={"host": f"127.0.0.1:{b_port}"}) as r:
                assert r.status == 200
            push = {"loadsharing_enabled": True, "loadsharing_role": "member",
                    "loadsharing_controller_host": "127.0.0.1:1",
                    "loadsharing_group_max_current": 20}
            async with http.post(f"http://127.0.0.1:{a_port}/config", json=push) as r:
                body = await r.json()
                assert r.status == 409, body
                assert f"127.0.0.1:{b_port}" in body["msg"]
            async with http.get(f"http://127.0.0.1:{a_port}/config") as r:
                cfg = await r.json()
            assert cfg.get("loadsharing_role", "") != "member"
            assert f"127.0.0.1:{b_port}" in cfg["loadsharing_members"]
        assert not (tmp / "a" / "a" / FILE_NAME).exists()
    finally:
        await a.stop()
        await b.stop()


def test_node_in_a_masterless_group_refuses_an_openevse_push(tmp_path: Path) -> None:
    asyncio.run(_refusal(tmp_path))
