"""The gateway in OpenEVSE groups: member of a simulated OpenEVSE controller, controller of
simulated OpenEVSE members. Real HTTP and WebSocket on 127.0.0.1, the simulators in-process.

Size: over the ~400-line guide on purpose: both OpenEVSE roles share the simulator fixtures.
"""


from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.message import Envelope
from pytests.helpers import Harness, async_wait_for, free_port
from pytests.loadsharing_sites import charger_event
from simulators.ev_model import EvModel
from simulators.evse_model import EvseModel
from simulators.openevse_node import OpenEvseNode
from simulators.rapi_device import RapiDevice
from transports.charger import STATUS_EVENT, ChargerStatus
from transports.loadsharing.openevse_controller import (
    GroupSettings,
    MemberLink,
    OpenEvseController,
    plan,
)
from transports.loadsharing.openevse_member import (
    READ_ONLY_MSG,
    MemberState,
    OpenEvseMemberNode,
)
from transports.rapi_serial import RapiSerialSettings, RapiSerialTransport

T = 5  # heartbeat timeout (OpenEVSE's lowest)
log = logging.getLogger("test")


# -- pure rules ----------------------------------------------------------------------------------
def test_member_rules() -> None:
    m = MemberState(hostname="pgw", serial="a1b2c3")
    assert m.add_peer("127.0.0.1:9000", ("127.0.0.1:1",)) == (200, "done")
    assert m.add_peer("127.0.0.1:9000", ("127.0.0.1:1",)) == (200, "already in group")
    assert m.add_peer("nodots", ())[0] == 400
    assert m.limit(0.0) == (None, "")
    push = {"loadsharing_enabled": True, "loadsharing_role": "member",
            "loadsharing_controller_host": "127.0.0.1:9000", "loadsharing_heartbeat_timeout": T,
            "loadsharing_group_max_current": 40}
    assert m.post_config(push, 10.0) == (200, {"config_version": 2, "msg": "done"})
    assert m.failsafe(10.0) and m.limit(10.0) == (6, "failsafe")  # none ever: failsafe
    assert m.post_config({"loadsharing_group_max_current": 10}, 10.0) == (
        403, {"msg": READ_ONLY_MSG})
    assert m.post_config({"max_current_soft": 16}, 10.0)[0] == 200  # not a load-sharing key
    assert m.post_config({**push, "loadsharing_heartbeat_timeout": 2}, 10.0) == (
        400, {"msg": "loadsharing_heartbeat_timeout must be between 5 and 600 seconds"})
    assert m.add_peer("127.0.0.2:1", ())[0] == 403
    frame = {"loadsharing": {"target_current": 13.7, "reason": "equal_share"}}
    assert m.frame(frame, "127.0.0.9", 11.0) is not None  # not from the controller's address
    assert m.frame(frame, "127.0.0.1", 11.0) is None
    assert m.limit(11.0) == (13, "equal_share")
    assert m.limit(11.0 + T) == (13, "equal_share")  # the boundary is still fresh
    assert m.limit(11.1 + T) == (6, "failsafe")
    m.frame({"loadsharing": {"target_current": 4, "reason": "min_subset"}}, "127.0.0.1", 20.0)
    assert m.limit(20.0) == (0, "min_subset")  # below the charger's minimum: pause
    assert m.post_config({"loadsharing_role": "", "loadsharing_enabled": False,
                          "loadsharing_controller_host": ""}, 21.0)[0] == 200
    assert m.limit(21.0) == (None, "")


def test_controller_plan_reserves() -> None:
    s = GroupSettings(group_max=30, heartbeat_timeout=T, offline_margin=2)

    def link(host: str, plugged: bool, now: float, text_at: float, frame_at: float) -> MemberLink:
        x = MemberLink(host, status={"state": 3 if plugged else 1, "vehicle": int(plugged),
                                     "loadsharing_min_current": 6,
                                     "loadsharing_max_current": 32})
        x.joined, x.last_text, x.last_frame = True, text_at, frame_at
        x.recent.append((frame_at, 10))

        class Open:
            closed = False
        x.ws = Open()  # type: ignore[assignment]
        return x

    now = 100.0
    a, b = link("a", True, now, now, now), link("b", True, now, now, now)
    c = link("c", True, now, now - T - 1, now - 1)  # silent: held at 10 A
    p = plan([a, b, c], s, now)
    assert p.states["c"] == "held" and p.targets["a"][0] == 10 and p.targets["b"][0] == 10
    c.last_frame = now - s.lease - 0.1  # lease over: the reserve (6 A) only
    p = plan([a, b, c], s, now)
    assert p.states["c"] == "offline" and p.targets["a"] == (12, "equal_share")
    d = GroupSettings(group_max=30, heartbeat_timeout=T, failsafe_mode="disable")
    assert plan([a, b, c], d, now).targets["a"] == (0, "failsafe_disabled")
    with pytest.raises(ValueError):
        GroupSettings(group_max=30, safe_current=8, peer_assumed_current=6)
    c.status["state"], c.last_text = 254, now  # asleep because we sent it 0: still demanding
    c.record_frame(0, "min_subset", now)
    assert plan([a, b, c], s, now).targets["c"][0] == 10


# -- a gateway node as member of a simulated OpenEVSE controller --------------------------------
async def _member_scenario(tmp: Path) -> None:
    dev = RapiDevice("tcp", tcp_port=0)
    await dev.start()
    dev.plug()
    rapi = Harness(RapiSerialTransport, RapiSerialSettings(
        transport="rapi_serial", port=f"socket://127.0.0.1:{dev.tcp_port}", read_interval=0.3,
        charger_owner="ls"), "rapi", tmp)
    await rapi.start()

    async def to_charger(data: dict[str, Any]) -> None:
        await rapi.send(Envelope("ls", "command", data, target_transport="rapi"))

    member = OpenEvseMemberNode(MemberState(hostname="pgw-member", serial="0a0b0c0d0e0f"),
                                to_charger, charger_heartbeat=3, keepalive=1.0)
    await member.start()

    async def bridge() -> None:
        seen = 0
        while True:
            for e in rapi.emitted[seen:]:
                if e.kind == "event" and e.data.get("event") == STATUS_EVENT:
                    member.charger_reading(ChargerStatus.from_event(e.data))
            seen = len(rapi.emitted)
            await asyncio.sleep(0.1)

    bridging = asyncio.create_task(bridge())
    port = free_port()

    def controller() -> OpenEvseNode:
        return OpenEvseNode(http_port=port, role="controller", group_max=20, plugged=True,
                            peers=[member.host], heartbeat_timeout=T, idle_push=1.0,
                            alloc_interval=1.0)

    def draw() -> float:
        return dev.model.ev.draw_a

    ctl = controller()
    try:
        await ctl.start()
        await async_wait_for(lambda: member.state.is_member, timeout=30)
        assert member.state.controller_host == ctl.host
        await async_wait_for(lambda: 9.5 <= draw() <= 10.5 and member.sent == 10, timeout=40)
        assert member.state.reason == "equal_share"
        # $SY supervision is on: a dead gateway still leaves the charger at the safe current
        beats = [e.data for e in rapi.of_kind("event") if e.data.get("event") == "command_result"
                 and e.data.get("command") == "heartbeat"]
        assert beats and all(b["ok"] for b in beats), beats
        assert (dev.model.hb_interval, dev.model.hb_amps) == (3, 6)
        # the controller dies: failsafe current (6 A) once no frame came for the timeout
        await ctl.stop()
        await async_wait_for(lambda: member.state.failsafe(time.monotonic()), timeout=30)
        await async_wait_for(lambda: 5.5 <= draw() <= 6.5, timeout=30)
        # it comes back on the same address: the allocation is restored
        ctl = controller()
        await ctl.start()
        await async_wait_for(lambda: 9.5 <= draw() <= 10.5, timeout=40)
        assert not member.state.failsafe(time.monotonic())
        # the REST rules toward a user while a member, then the controller's reset
        async with aiohttp.ClientSession() as http:
            url = f"http://{member.host}"
            async with http.post(f"{url}/config",
                                 json={"loadsharing_group_max_current": 80}) as r:
                assert r.status == 403 and (await r.json())["msg"] == READ_ONLY_MSG
            async with http.post(f"{url}/loadsharing/peers",
                                 json={"host": ctl.host, "reciprocal": False}) as r:
                assert r.status == 200 and (await r.json())["msg"] == "already in group"
            async with http.get(f"{url}/config") as r:
                ident = await r.json()
                assert ident["wifi_serial"] == "0A0B0C0D0E0F"
                assert ident["hostname"] == "pgw-member"
            await async_wait_for(lambda: member.charger["amp"] > 9000, timeout=20)
            async with http.get(f"{url}/status") as r:
                st = await r.json()
                assert st["amp"] > 9000 and st["state"] == 3 and st["vehicle"] == 1
                assert st["loadsharing_min_current"] == 6
            async with http.delete(f"{ctl.host and 'http://' + ctl.host}/loadsharing/peers/"
                                   f"{member.host}") as r:
                assert r.status == 200
        await async_wait_for(lambda: not member.state.is_member, timeout=20)
        # removed by the controller: the failsafe current, never the charger's own max (32 A)
        await async_wait_for(lambda: 5.5 <= draw() <= 6.5, timeout=30)
        for _ in range(20):
            assert draw() <= 6.5 and dev.model.capacity_a <= 6
            await asyncio.sleep(0.1)
        # the gateway dies: the charger's own $SY supervision lowers it to the safe current
        await member.stop()
        await rapi.stop()
        await async_wait_for(lambda: 5.5 <= draw() <= 6.5, timeout=30)
    finally:
        bridging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bridging
        await ctl.stop()
        await member.stop()
        await rapi.stop()
        await dev.stop()


def test_gateway_member_of_openevse_controller(tmp_path: Path) -> None:
    asyncio.run(_member_scenario(tmp_path))


# -- a gateway node as controller of three simulated OpenEVSE members ----------------------------
class Proxy:
    """A TCP relay that can be cut both ways (``cut``) or only from the member back to the
    controller (``cut_back``: it still hears the controller's frames); connections stay open."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self.cut_back = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            self._writers.append(writer)  # accept, then say nothing
            return
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers += [writer, w2]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, back: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if not self.cut and not (back and self.cut_back):
                        dst.write(data)
                        await dst.drain()
        await asyncio.gather(pump(reader, w2, False), pump(r2, writer, True))

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


class SlowEv(EvModel):
    """The worst charger the safety argument allows: it draws the highest current offered in
    the last ``LAG`` seconds (a lower limit takes that long to bite; a higher one bites at once)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = 0.0
        self.offers: deque[tuple[float, float]] = deque()

    def step(self, dt: float, offered_a: float) -> float:
        self.clock += dt
        self.offers.append((self.clock, offered_a))
        while self.offers and self.clock - self.offers[0][0] > LAG:
            self.offers.popleft()
        return super().step(dt, max(o for _, o in self.offers))


LAG = 0.8  # below the controller's response_time (1 s)


async def _controller_scenario() -> None:
    nodes = [OpenEvseNode(http_port=0, plugged=i < 2, heartbeat_timeout=T, idle_push=1.0,
                          model=EvseModel(ev=SlowEv())) for i in range(3)]
    for n in nodes:
        await n.start()
    proxies = [Proxy(int(n.host.rsplit(":", 1)[1])) for n in nodes]
    for p in proxies:
        await p.start()
    hosts = [f"127.0.0.1:{p.port}" for p in proxies]
    s = GroupSettings(group_max=30, heartbeat_timeout=T, offline_margin=2.0, response_time=1.0)
    ctl = OpenEvseController(f"127.0.0.1:{free_port()}", s)
    await ctl.start()
    samples: list[tuple[float, float]] = []
    removed_at = float("inf")

    async def sampler() -> None:
        while True:
            samples.append((time.monotonic(), sum(n.model.ev.draw_a for n in nodes)))
            await asyncio.sleep(0.05)

    sampling = asyncio.create_task(sampler())

    def draws() -> list[float]:
        return [round(n.model.ev.draw_a, 1) for n in nodes]

    try:
        for h in hosts:
            assert await ctl.add_member(h) == "done"
        assert await ctl.add_member(hosts[0]) == "already in group"
        await async_wait_for(lambda: all(n.is_member for n in nodes), timeout=30)
        assert nodes[0].config["loadsharing_controller_host"] == ctl.own_host
        await async_wait_for(lambda: draws() == [15.0, 15.0, 0.0], timeout=30)
        # plug-in on the third member: the others come down at once, it gets its share after
        nodes[2].plug()
        await async_wait_for(lambda: draws() == [10.0, 10.0, 10.0], timeout=40)
        # the first member goes silent (it still hears us until we give up on it): held at
        # 10 A until timeout + margin after our last frame, then 6 A reserved
        proxies[0].cut_back = True
        cut_at = time.monotonic()
        await async_wait_for(lambda: ctl.last_plan is not None
                             and ctl.last_plan.states[hosts[0]] == "held", timeout=30)
        await async_wait_for(lambda: nodes[0].member_failsafe, timeout=30)
        await async_wait_for(lambda: draws()[0] == 6.0, timeout=30)
        await async_wait_for(lambda: draws()[1:] == [12.0, 12.0], timeout=40)
        raised_at = time.monotonic()
        assert raised_at - cut_at >= s.lease  # the lease, not a timing bound
        # reconnected: it rejoins the share, the others come down first
        proxies[0].cut_back = False
        await async_wait_for(lambda: draws() == [10.0, 10.0, 10.0], timeout=60)
        # removed cleanly: its role is reset first, the others share the whole budget
        removed_at = time.monotonic()
        assert await ctl.remove_member(hosts[2])
        await async_wait_for(lambda: not nodes[2].is_member, timeout=20)
        await async_wait_for(lambda: draws()[:2] == [15.0, 15.0], timeout=40)
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        await ctl.stop()
        for p in proxies:
            await p.stop()
        for n in nodes:
            await n.stop()
    # removed member 2 draws outside the group from then on: check up to the removal
    over = [(round(t - samples[0][0], 2), d) for t, d in samples
            if d > 30.0 + 0.05 and t < removed_at]
    assert len(samples) > 100 and not over, over[:5]


def test_gateway_controller_of_openevse_members() -> None:
    asyncio.run(_controller_scenario())


# -- the loadsharing transport in either role (openevse_roles.py) -------------------------------
def _role_settings(**extra: Any) -> Any:
    from transports.loadsharing.settings import LoadSharingSettings

    return LoadSharingSettings(**{
        "transport": "loadsharing", "charger": "rapi", "loadsharing_enabled": True,
        "loadsharing_heartbeat_timeout": T, "loadsharing_response_time": 1.0,
        "charger_heartbeat": 0, "discovery": False, "loadsharing_api_open": True, **extra})


def _charging(amps: float) -> Envelope:
    return charger_event("rapi", {"state_code": 3, "vehicle_connected": 1,
                                        "charging_current": amps, "pilot_current": amps,
                                        "voltage": 240})


def _limits(h: Harness) -> list[int]:
    return [e.data["amps"] for e in h.of_kind("command")
            if e.target_transport == "rapi" and e.data.get("command") == "set_current"]


async def _roles_scenario(tmp: Path) -> None:
    from transports.loadsharing.transport import LoadSharing

    port = free_port()
    member = Harness(LoadSharing, _role_settings(  # no group max: the controller owns it
        loadsharing_role="member", node_listen=f"127.0.0.1:{port}"), "ls-member", tmp / "m")
    (tmp / "m").mkdir(exist_ok=True)
    await member.send(_charging(6.0))
    await member.start()  # LoadSharing.run -> openevse_roles.run_openevse_role
    ctl_sim = OpenEvseNode(http_port=0, role="controller", group_max=20, plugged=True,
                           peers=[f"127.0.0.1:{port}"], heartbeat_timeout=T, idle_push=1.0,
                           alloc_interval=1.0)
    cport = free_port()
    ctl = Harness(LoadSharing, _role_settings(
        loadsharing_role="controller", node_listen=f"127.0.0.1:{cport}",
        loadsharing_group_max_current=30), "ls-ctl", tmp / "c")
    (tmp / "c").mkdir(exist_ok=True)
    sims = [OpenEvseNode(http_port=0, plugged=True, heartbeat_timeout=T, idle_push=1.0)
            for _ in range(2)]
    try:
        await ctl_sim.start()
        # member: the simulated controller's frames become set_current commands
        await async_wait_for(lambda: 10 in _limits(member), timeout=40)
        assert _limits(member)[0] == 6  # failsafe until the first frame
        modes = [e.data["loadsharing_mode"] for e in member.of_kind("reading")]
        assert "member" in modes
        await ctl_sim.stop()
        await async_wait_for(lambda: _limits(member)[-1] == 6, timeout=30)
        # controller: its own charger and two simulated members added through its REST API
        await ctl.send(_charging(6.0))
        await ctl.start()
        for n in sims:
            await n.start()
        async with aiohttp.ClientSession() as http:
            await async_wait_for(lambda: _limits(ctl) != [], timeout=20)
            for n in sims:
                async with http.post(f"http://127.0.0.1:{cport}/loadsharing/peers",
                                     json={"host": n.host}) as r:
                    assert r.status == 200 and (await r.json())["msg"] == "done"
            await async_wait_for(lambda: all(n.is_member for n in sims), timeout=30)
            await async_wait_for(lambda: [round(n.model.ev.draw_a) for n in sims] == [10, 10]
                                 and _limits(ctl)[-1] == 10, timeout=40)
            async with http.get(f"http://127.0.0.1:{cport}/loadsharing/peers") as r:
                assert [p["isLocal"] for p in await r.json()] == [True, False, False]
            assert "127.0.0.1:" in (tmp / "c" / "ls-ctl" / "loadsharing_peers.json").read_text()
            async with http.delete(f"http://127.0.0.1:{cport}/loadsharing/peers/"
                                   f"{sims[1].host}") as r:
                assert r.status == 200
            await async_wait_for(lambda: not sims[1].is_member, timeout=20)
    finally:
        await member.stop()
        await ctl.stop()
        await ctl_sim.stop()
        for n in sims:
            await n.stop()


def test_loadsharing_transport_in_both_roles(tmp_path: Path) -> None:
    asyncio.run(_roles_scenario(tmp_path))


def test_a_lying_member_is_taken_within_openevse_ranges() -> None:
    """Infinite, negative, non-numeric or reversed values from a member's /ws: valid inputs,
    never an exception in the allocator (which would stop the whole group)."""
    s = GroupSettings(group_max=30, heartbeat_timeout=T)
    for lie in ({"loadsharing_max_current": float("inf")}, {"loadsharing_min_current": -5},
                {"loadsharing_max_current": -3, "max_current": "x"},
                {"loadsharing_min_current": 50, "loadsharing_max_current": 10},
                {"loadsharing_priority": float("nan")}, {"loadsharing_priority": 1e300}):
        x = MemberLink("127.0.0.1:1", status={"state": 3, "vehicle": 1, **lie})
        x.joined, x.last_text, x.last_frame = True, 0.0, 0.0

        class Open:
            closed = False
        x.ws = Open()  # type: ignore[assignment]
        m = x.member()
        assert 0 <= m.min_current <= m.max_current <= 80, (lie, m)
        assert plan([x], s, 0.0).targets[x.host][0] <= 30
