"""The load-sharing node: settings, messages, the state machine's rules, and the transport
over real UDP on 127.0.0.1 with the bridge captured by the Harness."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.message import Envelope
from pytests.helpers import Harness, async_wait_for
from pytests.loadsharing_sites import charger_event
from transports import get
from transports.charger import ChargerStatus
from transports.loadsharing import allocation as al
from transports.loadsharing.messages import MessageError, Report, Status, decode, encode
from transports.loadsharing.node import AGREED, DemandTracker, Node, NodeConfig
from transports.loadsharing.settings import LoadSharingSettings, check_keys
from transports.loadsharing.transport import LoadSharing

BASE: dict[str, Any] = {
    "transport": "loadsharing", "charger": "rapi", "loadsharing_enabled": True,
    "loadsharing_group_max_current": 32,
}


def settings(**extra: Any) -> LoadSharingSettings:
    return LoadSharingSettings(**{**BASE, **extra})


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value", "message"), [
    ("loadsharing_group_max_current", -1, "loadsharing_group_max_current must be >= 0"),
    ("loadsharing_safety_factor", 1.5, "loadsharing_safety_factor must be between 0.0 and 1.0"),
    ("loadsharing_heartbeat_timeout", 4, "must be between 5 and 600 seconds"),
    ("loadsharing_heartbeat_timeout", 601, "must be between 5 and 600 seconds"),
    ("loadsharing_failsafe_safe_current", 81,
     "loadsharing_failsafe_safe_current must be between 0 and 80 amps"),
    ("loadsharing_failsafe_peer_assumed_current", -1,
     "loadsharing_failsafe_peer_assumed_current must be between 0 and 80 amps"),
    ("loadsharing_failsafe_mode", "off",
     "loadsharing_failsafe_mode must be 'safe_current' or 'disable'"),
])
def test_openevse_messages(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**{key: value})
    assert check_keys({key: value}) is not None
    assert message in str(check_keys({key: value}))


def test_cross_key_rules() -> None:
    with pytest.raises(ValidationError, match="must not exceed loadsharing_group_max_current"):
        settings(loadsharing_group_max_current=5, loadsharing_failsafe_safe_current=6)
    with pytest.raises(ValidationError, match="peer_assumed_current must be >= "):
        settings(loadsharing_failsafe_peer_assumed_current=4)
    with pytest.raises(ValidationError, match=r"3 members .* draw 18 A in failsafe"):
        settings(loadsharing_group_max_current=16, listen="127.0.0.1:4000",
                 peers="127.0.0.1:4001, 127.0.0.1:4002")
    with pytest.raises(ValidationError, match="peers need listen"):
        settings(peers="127.0.0.1:4001")
    with pytest.raises(ValidationError, match="expected host:port"):
        settings(listen="127.0.0.1:4000", peers="nowhere")
    with pytest.raises(ValidationError, match="charger"):
        LoadSharingSettings(transport="loadsharing")
    assert check_keys({"loadsharing_group_max_current": 40}) is None
    assert check_keys({"loadsharing_failsafe_safe_current": 10,
                       "loadsharing_failsafe_peer_assumed_current": 8}) is not None
    # disable mode: the fallback is 0, so any group size fits
    ok = settings(loadsharing_group_max_current=10, loadsharing_failsafe_safe_current=6,
                  loadsharing_failsafe_mode="disable", listen="127.0.0.1:4000",
                  peers="127.0.0.1:4001, 127.0.0.1:4002")
    assert ok.fallback_current == 0
    assert get("loadsharing") is LoadSharing


# -- messages -----------------------------------------------------------------------------------
def test_report_round_trip_and_garbage() -> None:
    r = Report(node="a", epoch=3, seq=9, group="g", status=Status(demanding=True, version=2),
               view=("a", "b"), view_age=12.5, inputs={"a": (3, 2), "b": (1, 1)},
               echo={"b": (1, 7, 0.25)}, ready=True, limit=16.0, mode="agreed")
    assert decode(encode(r)) == r
    with pytest.raises(MessageError, match=r"not JSON.*\\x00garbage"):
        decode(b"\x00garbage")
    with pytest.raises(MessageError, match="not a version 1"):
        decode(b'{"hello": 1}')
    bad = encode(r).replace(b'"seq":9', b'"seq":"9"')
    with pytest.raises(MessageError, match="expected an integer"):
        decode(bad)


# -- the state machine, by hand -------------------------------------------------------------------
@dataclass
class ManualClock:
    t: float = 100.0

    def now(self) -> float:
        return self.t


@dataclass
class Outbox:
    sent: list[Report] = field(default_factory=list)

    def send(self, peer_id: str, message: Report) -> None:
        self.sent.append(message)

    def broadcast(self, message: Report) -> None:
        self.sent.append(message)


def make_node(members: tuple[str, ...] = ("a",), **cfg: Any) -> tuple[Node, ManualClock, Outbox,
                                                                      list[int]]:
    clock, out, limits = ManualClock(), Outbox(), []
    config = NodeConfig(node_id="a", members=members, limits=al.Limits(32.0), timeout=30.0,
                        response_time=1.0, **cfg)
    return Node(config, clock, out, limits.append), clock, out, limits


def test_alone_the_node_takes_the_budget_after_the_response_wait() -> None:
    node, clock, out, limits = make_node()
    assert limits == [0] and node.mode == AGREED  # alone: its own view is the group
    node.set_local(True)
    assert node.limit == 0  # not raised before raise_wait
    clock.t += node.config.raise_wait
    node.tick()
    assert limits == [0, 32]
    node.set_local(False)  # demand gone: lower at once
    assert limits == [0, 32, 0]
    assert out.sent and out.sent[-1].limit == 0


def peer_report(node: Node, peer: str, seq: int, **kw: Any) -> Report:
    """What ``peer`` would send after hearing ``node``'s latest report just now."""
    mine = node.link.sent[-1]  # type: ignore[attr-defined]
    base = dict(node=peer, epoch=1, seq=seq, group=node.config.group,
                status=Status(demanding=True, version=1), view=node.view, view_age=0.0,
                inputs={}, echo={"a": (mine.epoch, mine.seq, 0.0)}, ready=False, limit=0.0)
    base.update(kw)
    return Report(**base)


def test_offline_boundary_duplicates_and_strangers() -> None:
    node, clock, _, _ = make_node(("a", "b"))
    node.receive(peer_report(node, "b", 1))
    assert node.online("b", clock.now()) and node.view == ("a", "b")
    node.receive(peer_report(node, "b", 1))  # duplicate
    assert node.counters.stale == 1
    node.receive(peer_report(node, "zz", 1))
    assert node.counters.foreign == 1
    clock.t += node.config.timeout  # exactly the timeout: still online (> is offline)
    assert node.online("b", clock.now())
    clock.t += 0.001
    node.tick()
    assert not node.online("b", clock.now()) and node.view == ("a",)


def test_echo_bounds_the_age_of_a_late_report() -> None:
    """A report that sat in the network is as old as the echo proves, not as its arrival."""
    node, clock, _, _ = make_node(("a", "b"))
    mine = node.link.sent[-1]  # type: ignore[attr-defined]
    clock.t += 29.0  # our report left 29 s ago; b answered at once but it arrived only now
    node.receive(Report(node="b", epoch=1, seq=1, group=node.config.group, status=Status(),
                        view=("a", "b"), view_age=0.0, echo={"a": (mine.epoch, mine.seq, 0.0)}))
    assert node.online("b", clock.now())
    clock.t += 1.5
    node.tick()
    assert not node.online("b", clock.now())  # 30.5 s since it can have left


def test_a_different_group_configuration_never_agrees() -> None:
    node, clock, _, _ = make_node(("a", "b"))
    node.set_local(True)
    for i in range(1, 40):
        clock.t += 5
        node.tick()
        node.receive(peer_report(node, "b", i, group="other", view=node.view, view_age=500.0,
                                 inputs=node._inputs(node.view), ready=True))
    assert node.counters.group_mismatch > 0
    assert not node.ready and node.limit <= 6


def test_demand_tracker() -> None:
    def st(state: str, vehicle: bool | None = True) -> ChargerStatus:
        return ChargerStatus(state=state, vehicle_connected=vehicle)

    d = DemandTracker()
    assert d.update(st("charging")) is True
    assert d.update(st("idle", False)) is False
    d.commanded(0)
    assert d.update(st("paused")) is True  # our own pause: still wants charge
    d.commanded(16)
    assert d.update(st("paused")) is True  # resume not seen yet
    assert d.update(st("charging")) is True
    assert d.update(st("paused")) is False  # someone else put it to sleep
    d.commanded(0)
    assert d.update(st("disabled", None)) is True  # our disable, vehicle unknown: still wants
    d.commanded(16)
    assert d.update(st("charging")) is True
    assert d.update(st("disabled")) is False  # the user disabled it at the charger
    assert d.update(st("fault")) is True  # a fault counts as demanding


# -- the transport over UDP ---------------------------------------------------------------------
def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reading(**data: Any) -> Envelope:
    base = {"state_code": 3, "pilot_current": 6, "charging_current": 5.9, "voltage": 240.0,
            "vehicle_connected": 1}
    return charger_event("rapi", {**base, **data})


def commands(h: Harness) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.data.items() if k != "request_id"}
            for e in h.of_kind("command") if e.target_transport == "rapi"]


def test_transport_alone_commands_its_charger(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(LoadSharing, settings(loadsharing_response_time=0.1), "ls", tmp_path)
        await h.send(reading())
        await h.start()
        await async_wait_for(lambda: {"command": "set_current", "amps": 32, "volatile": True}
                             in commands(h))
        sent = commands(h)
        # supervision first, then the fallback current (lowered from nothing), then the share
        assert sent[:4] == [
            {"command": "heartbeat", "interval": 30, "amps": 6, "self_pulse": False},
            {"command": "set_current", "amps": 6, "volatile": True},
            {"command": "enable"},
            {"command": "set_current", "amps": 32, "volatile": True},
        ]
        await h.send(reading(vehicle_connected=0, state_code=1))
        await async_wait_for(lambda: commands(h)[-1] == {"command": "sleep"})
        await h.send(Envelope("rapi", "event", {"event": "charger_status", "state": "x"}))
        assert h.ctx.counters.errors == 1
        assert h.running
        await h.stop()
        assert (tmp_path / "ls" / "epoch").read_text().strip()

    asyncio.run(main())


def test_transport_disabled_does_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(LoadSharing, settings(loadsharing_enabled=False), "ls", tmp_path)
        await h.start()
        await async_wait_for(lambda: h.of_kind("status"))
        assert h.of_kind("status")[0].data == {"available": False, "reason": "disabled"}
        assert commands(h) == []
        await h.stop()

    asyncio.run(main())


def test_two_transports_share_over_udp_and_survive_garbage(tmp_path: Path) -> None:
    async def main() -> None:
        pa, pb = udp_port(), udp_port()
        common = dict(loadsharing_heartbeat_timeout=5, loadsharing_response_time=0.1,
                      loadsharing_heartbeat_interval=0.5, charger_heartbeat=0)
        a = Harness(LoadSharing, settings(listen=f"127.0.0.1:{pa}", peers=f"127.0.0.1:{pb}",
                                          **common), "a", tmp_path)
        b = Harness(LoadSharing, settings(listen=f"127.0.0.1:{pb}", peers=f"127.0.0.1:{pa}",
                                          **common), "b", tmp_path)
        for h in (a, b):
            await h.send(reading())
            await h.start()
        share = {"command": "set_current", "amps": 16, "volatile": True}
        await async_wait_for(lambda: share in commands(a) and share in commands(b), timeout=60)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\xffnot a report", ("127.0.0.1", pa))
        await async_wait_for(lambda: a.ctx.counters.extra["bad_reports"] == 1)
        assert a.transport.node is not None and a.transport.node.mode == AGREED
        assert all(c.get("amps", 0) <= 16 for c in commands(a) + commands(b))
        for h in (a, b):
            await h.stop()

    asyncio.run(main())


def test_a_node_whose_epoch_went_back_moves_past_its_old_self() -> None:
    node, _, out, _ = make_node(("a", "b"))
    node.receive(Report(node="b", epoch=1, seq=1, group=node.config.group, status=Status(),
                        view=("a", "b"), view_age=0.0, echo={"a": (50, 7, 1.0)}))
    assert node.epoch == 51
    node.tick()
    assert out.sent[-1].epoch == 51


def test_one_file_for_every_member_with_instance_offsets() -> None:
    from transports.loadsharing.node_config import from_settings as node_config

    s = settings(loadsharing_group_max_current=40, listen="127.0.0.1:8190",
                 peers="127.0.0.1:8190, 127.0.0.1:8290, 127.0.0.1:8390")
    assert s.member_count == 3
    one = node_config(s, instance=1)
    assert one.node_id == "127.0.0.1:8290"
    assert one.members == ("127.0.0.1:8190", "127.0.0.1:8290", "127.0.0.1:8390")
