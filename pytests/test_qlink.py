"""The qlink transport against the controller simulator over real TCP on 127.0.0.1.

Small timeouts in the settings keep this quick; every wait polls a condition.

Size: over the ~400-line guide on purpose: one simulator fixture serves every connection scenario
of the issue.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.message import Envelope
from pytests.helpers import Harness, async_wait_for, free_port, wait_for
from pytests.test_qlink_codec import PROJECT
from simulators.qlink_controller import QLinkControllerSimulator, build_model
from simulators.qlink_model import Monitoring
from transports.qlink import QLinkTransport
from transports.qlink_config import QLinkSettings

ROOT = Path(__file__).resolve().parent.parent
LOADS = "kitchen_pendant=127@1.1.2.1, hall=12@1.1.1.3, porch=14@1.1.1.4"
KEYPADS = "entry=1.23"
FAST = {
    "command_gap": 0.005, "reply_timeout": 2.0, "ping_interval": 30.0, "connect_timeout": 2.0,
    "reconnect_initial": 0.05, "reconnect_max": 0.2, "read_interval": 0,
}


@contextlib.asynccontextmanager
async def rig(
    limit: int = 1, latency: float = 0.002, loads: str = LOADS, project: str = "",
    extra_ports: tuple[int, ...] = (), **overrides: Any,
) -> AsyncIterator[tuple[QLinkControllerSimulator, Harness]]:
    """A simulator on a free port and a started transport, torn down afterwards."""
    port = free_port()
    model = build_model(project=project) if project else build_model(LOADS, KEYPADS)
    sim = QLinkControllerSimulator(model, [port, *extra_ports], limit=limit, latency=latency)
    await sim.start()
    names: dict[str, Any] = {"project_file": project} if project else {
        "loads": loads, "keypads": KEYPADS, "writable_leds": "entry"}
    keys: dict[str, Any] = {"transport": "qlink", "port": port, "writable_loads": "*",
                            "writable_buttons": "*", **names, **FAST, **overrides}
    harness = Harness(QLinkTransport, QLinkSettings(**keys), "qlink", tempfile.mkdtemp())
    await harness.start()
    try:
        await async_wait_for(lambda: statuses(harness)[-1:] == [True])
        yield sim, harness
    finally:
        await harness.stop()
        await sim.stop()


def statuses(h: Harness) -> list[bool]:
    return [e.data["available"] for e in h.of_kind("status")]


def results(h: Harness) -> dict[str, dict[str, Any]]:
    return {e.data["request_id"]: e.data for e in h.of_kind("event")
            if e.data.get("event") == "command_result"}


def readings(h: Harness) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for e in h.of_kind("reading"):
        out.update(e.data)
    return out


async def send(h: Harness, request_id: str, **data: Any) -> None:
    await h.send(Envelope("mqtt", "command", {"request_id": request_id, **data}))


def test_connect_sets_format_enables_monitoring_and_polls() -> None:
    async def main() -> None:
        async with rig() as (sim, h):
            assert sim.lines_in[0] == b"VCL# 1 0"
            assert sim.model.mon.switches and sim.model.mon.loads and sim.model.mon.leds == 1
            await async_wait_for(lambda: "entry_led_1" in readings(h))
            assert readings(h)["kitchen_pendant"] == 0
            described = [e for e in h.of_kind("event") if e.data["event"] == "describe"]
            assert described[0].data["values"]["hall"]["unit"] == "%"
            assert h.emitted[0].source_transport_info["device_manufacturer"] == "Vantage"

    asyncio.run(main())


@pytest.mark.parametrize(("reply_format", "reply"), [("detailed", "RSW# 1 23 1 6"),
                                                      ("regular", "6")])
def test_events_between_and_ahead_of_replies(reply_format: str, reply: str) -> None:
    async def main() -> None:
        async with rig(reply_format=reply_format) as (sim, h):
            await sim.press("entry", 2)  # between commands: a finger on the wall
            await async_wait_for(lambda: readings(h).get("hall") == 100)
            presses = [e.data for e in h.of_kind("event") if e.data["event"] == "button"]
            assert [p["action"] for p in presses] == ["press", "release"]
            assert presses[0]["name"] == "entry_button_2"
            # VSW tap: SW, LO and LE lines come ahead of the reply and are not taken for it
            await send(h, "tap", command="write", values={"entry_button_1": "press"})
            await async_wait_for(lambda: "tap" in results(h))
            assert results(h)["tap"]["ok"] and results(h)["tap"]["replies"] == [reply]
            order = [e.data for e in h.emitted]
            done = next(i for i, d in enumerate(order) if d.get("request_id") == "tap")
            assert any(d.get("name") == "entry_button_1" for d in order[:done])
            assert any(d.get("kitchen_pendant") == 100 for d in order[:done])
            assert readings(h)["entry_led_1"] == "on"
            assert h.ctx.counters.extra["link_stale_replies"] == 0
            assert h.ctx.counters.extra.get("garbled_lines") is None

    asyncio.run(main())


def test_without_load_monitoring_a_set_level_is_read_from_its_reply() -> None:
    async def main() -> None:
        async with rig(monitor_loads=False, monitor_leds="off") as (sim, h):
            assert not sim.model.mon.loads and sim.model.mon.leds == 0  # never turned off either
            await send(h, "w", command="set_level", load="hall", level=25)
            await async_wait_for(lambda: readings(h).get("hall") == 25)
            assert h.ctx.counters.extra["link_events"] == 0

    asyncio.run(main())


def test_burst_is_paced_one_in_flight_and_all_answered() -> None:
    async def main() -> None:
        async with rig(command_gap=0.02, latency=0.001) as (sim, h):
            for i in range(25):
                await send(h, f"r{i}", command="write", values={"porch": i * 4})
            await async_wait_for(lambda: len(results(h)) == 25)
            assert all(r["ok"] for r in results(h).values())
            assert sim.overlapped == 0  # never a command before the previous reply
            assert h.transport.stats.min_gap >= 0.02 * 0.99  # send to send, our clock
            assert readings(h)["porch"] == 96

    asyncio.run(main())


def test_limit_one_refuses_a_second_client_until_released() -> None:
    async def main() -> None:
        async with rig() as (sim, h):
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", sim.ports[0])
            await send(h, "rel", command="release_link", seconds=30)
            await async_wait_for(lambda: "rel" in results(h))
            await async_wait_for(lambda: statuses(h)[-1:] == [False] and sim.clients == 0)
            await async_wait_for(lambda: sim.listening)
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.ports[0])
            writer.write(b"VGL@ 127\r")  # the programming tool has the controller now
            assert (await reader.readuntil(b"\r")).strip() in (b"0", b"100")
            await send(h, "busy", command="write", values={"hall": 5})
            assert results(h)["busy"]["result"] == "rejected"
            writer.close()
            await send(h, "back", command="write", values={"reacquire": True})  # HA button
            await async_wait_for(lambda: statuses(h)[-1:] == [True])
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", sim.ports[0])
            await send(h, "after", command="write", values={"hall": 5})
            await async_wait_for(lambda: results(h).get("after", {}).get("ok"))

    asyncio.run(main())


def test_dropped_connection_is_restored_with_monitoring_and_a_fresh_poll() -> None:
    async def main() -> None:
        async with rig() as (sim, h):
            connects = h.transport.stats.connects
            sim.model.mon = Monitoring()  # as if the controller had been reset
            sim.model.levels[sim.model.by_contractor[14]] = 70  # changed while we were away
            sim.drop_all()
            await async_wait_for(lambda: h.transport.stats.connects > connects)
            await async_wait_for(lambda: readings(h).get("porch") == 70)
            await async_wait_for(lambda: statuses(h)[-1:] == [True])
            assert sim.model.mon.loads and sim.model.mon.switches
            await sim.set_level("kitchen_pendant", 33)
            await async_wait_for(lambda: readings(h).get("kitchen_pendant") == 33)
            assert False in statuses(h)

    asyncio.run(main())


def test_refused_connects_are_retried_until_the_slot_is_free() -> None:
    async def main() -> None:
        async with rig() as (sim, h):
            sim.refuse_connections()  # as while the QLink tool holds the box
            sim.drop_all()
            await async_wait_for(lambda: statuses(h)[-1:] == [False])
            await async_wait_for(lambda: "refused" in h.of_kind("status")[-1].data["reason"])
            await sim.allow_connections()
            await async_wait_for(lambda: statuses(h)[-1:] == [True])
            await send(h, "r", command="write", values={"hall": 1})
            await async_wait_for(lambda: results(h).get("r", {}).get("ok"))

    asyncio.run(main())


def test_idle_close_by_the_box_is_survived() -> None:
    async def main() -> None:
        async with rig() as (sim, h):
            connects = h.transport.stats.connects
            sim.idle_close = 0.2  # the box drops a connection silent this long
            await send(h, "a", command="write", values={"hall": 3})  # re-arms the read
            await async_wait_for(lambda: h.transport.stats.connects > connects)
            sim.idle_close = 0.0
            again = h.transport.stats.connects
            sim.drop_all()  # so that no connection still reads with the idle timeout
            await async_wait_for(lambda: h.transport.stats.connects > again)
            await async_wait_for(lambda: statuses(h)[-1:] == [True])
            await send(h, "b", command="write", values={"hall": 4})
            await async_wait_for(lambda: results(h).get("b", {}).get("ok"))

    asyncio.run(main())


def test_one_way_link_is_detected_and_rebuilt() -> None:
    async def main() -> None:
        async with rig(ping_interval=0.2, reply_timeout=0.2) as (sim, h):
            connects = h.transport.stats.connects
            sim.one_way = True  # commands go out, nothing comes back
            await async_wait_for(lambda: statuses(h)[-1:] == [False])
            reason = h.of_kind("status")[-1].data["reason"]
            assert "silent" in reason or "no reply" in reason
            sim.one_way = False
            await async_wait_for(lambda: statuses(h)[-1:] == [True])
            assert h.transport.stats.connects > connects
            await send(h, "ok", command="write", values={"hall": 40})
            await async_wait_for(lambda: results(h).get("ok", {}).get("ok"))

    asyncio.run(main())


@pytest.mark.parametrize("reply_format", ["regular", "detailed"])
def test_a_late_reply_is_never_taken_for_the_next_command(reply_format: str) -> None:
    async def main() -> None:
        async with rig(reply_timeout=1.0, reply_format=reply_format) as (sim, h):
            sim.hold = asyncio.Event()  # the controller stalls: no reply within the timeout
            pings = sum(line.startswith(b"VEC") for line in sim.lines_in)
            await send(h, "slow", command="write", values={"hall": 40})
            await async_wait_for(
                lambda: sum(line.startswith(b"VEC") for line in sim.lines_in) > pings)
            sim.hold.set()  # now the late reply, then the ping's echo
            await async_wait_for(lambda: "slow" in results(h))
            assert results(h)["slow"]["result"] == "timeout"
            await send(h, "next", command="write", values={"hall": 77})
            await async_wait_for(lambda: "next" in results(h))
            assert results(h)["next"]["ok"]
            assert results(h)["next"]["replies"][0].split()[-2:] in (["77"], ["77", "0"])
            assert h.ctx.counters.extra["link_stale_replies"] == 1
            assert statuses(h) == [True]  # the VEC check found the link alive

    asyncio.run(main())


def test_mute_controller_times_out_the_command_and_rebuilds() -> None:
    async def main() -> None:
        async with rig(reply_timeout=0.2) as (sim, h):
            sim.mute = True
            await send(h, "m", command="write", values={"hall": 40})
            await async_wait_for(lambda: "m" in results(h))
            assert results(h)["m"]["result"] == "error" and not results(h)["m"]["ok"]
            sim.mute = False
            await async_wait_for(lambda: statuses(h)[-1:] == [True] and False in statuses(h))

    asyncio.run(main())


@pytest.mark.parametrize("pool", [0, 2])
def test_split_strategy_with_limit_four(pool: int) -> None:
    async def main() -> None:
        async with rig(limit=4, strategy="split", command_connections=pool) as (sim, h):
            assert h.ctx.counters.extra.get("split_fallbacks") is None
            for i in range(5):
                await send(h, f"s{i}", command="write", values={"hall": 10 + i})
            await async_wait_for(lambda: len(results(h)) == 5)
            assert all(r["ok"] for r in results(h).values())
            await async_wait_for(lambda: readings(h).get("hall") == 14)  # LO via events conn
            if pool == 0:
                assert sim.accepted >= 7  # events + probe + a short-lived one per command
            else:
                assert sim.accepted <= 4
            await sim.press("entry", 3)
            await async_wait_for(lambda: len([e for e in h.of_kind("event")
                                              if e.data["event"] == "button"]) >= 2)
            await asyncio.sleep(0.05)
            presses = [e for e in h.of_kind("event") if e.data["event"] == "button"]
            assert len(presses) == 2  # once, from the event connection only

    asyncio.run(main())


def test_split_strategy_polls_on_its_own_port() -> None:
    poll_port = free_port()

    async def main() -> None:
        async with rig(limit=4, strategy="split", command_connections=1, poll_port=poll_port,
                       extra_ports=(poll_port,)) as (sim, h):
            await async_wait_for(lambda: "entry_led_1" in readings(h))
            assert sim.ports_used.count(poll_port) == 1
            assert sim.ports_used.count(sim.ports[0]) == 2  # events + the command pool
            await send(h, "c", command="write", values={"porch": 9})
            await async_wait_for(lambda: readings(h).get("porch") == 9)
            assert sim.ports_used.count(poll_port) == 1

    asyncio.run(main())


def test_split_falls_back_to_single_when_limit_is_one() -> None:
    async def main() -> None:
        async with rig(limit=1, strategy="split") as (sim, h):
            assert h.ctx.counters.extra["split_fallbacks"] == 1
            assert h.transport.strategy == "single"
            await send(h, "f", command="write", values={"kitchen_pendant": 20})
            await async_wait_for(lambda: results(h).get("f", {}).get("ok"))
            assert sim.clients == 1

    asyncio.run(main())


def test_error_codes_become_clear_results() -> None:
    async def main() -> None:
        # contractor 999 is not in the controller's program: 257 on poll and on write
        async with rig(loads=LOADS + ", ghost=999@1.4.4.8") as (sim, h):
            assert h.ctx.counters.extra["poll_failures"] >= 1
            await send(h, "g", command="write", values={"ghost": 10})
            await async_wait_for(lambda: "g" in results(h))
            r = results(h)["g"]
            assert (r["ok"], r["result"], r["code"], r["error"]) == (
                False, "error", 257, "bad parameter")
            sim.model.unsupported.add("VSW")
            await send(h, "b", command="press", keypad="entry", button=1)
            await async_wait_for(lambda: "b" in results(h))
            assert results(h)["b"]["code"] == 256 and "bad command" in results(h)["b"]["detail"]
            await send(h, "x", command="write", values={"porch": 150})
            await async_wait_for(lambda: "x" in results(h))
            assert results(h)["x"]["result"] == "rejected"
            assert statuses(h) == [True]  # none of it touched the link

    asyncio.run(main())


def test_garbage_lines_are_counted_and_harmless() -> None:
    async def main() -> None:
        async with rig() as (sim, h):
            await sim.inject_garbage()
            await sim.inject_garbage(b"LO 1 1 oops")
            await send(h, "after", command="write", values={"hall": 60})
            await async_wait_for(lambda: results(h).get("after", {}).get("ok"))
            await async_wait_for(lambda: h.ctx.counters.extra.get("garbled_lines") == 2)
            assert "\\x00" in h.ctx.counters.last_error or "oops" in h.ctx.counters.last_error
            await sim.broadcast([__import__("protocols.qlink").qlink.LoadEvent(2, 1, 1, 1, 9)])
            await async_wait_for(lambda: h.ctx.counters.extra.get("unmapped_events") == 1)
            assert statuses(h) == [True]

    asyncio.run(main())


def test_simulator_and_transport_share_a_project_export(tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    path.write_bytes(PROJECT.encode("cp1252"))

    async def main() -> None:
        async with rig(project=str(path)) as (sim, h):
            await sim.press("game_room_v23", 6)  # "Medium": pendant 60 %, soffit 100 %
            await async_wait_for(lambda: readings(h).get("game_room_pendant") == 60)
            assert readings(h)["game_room_sofit_fluor"] == 100
            await send(h, "k", command="set_level", load="kitchen_pendant", level=30, fade=1.5)
            await async_wait_for(lambda: readings(h).get("kitchen_pendant") == 30)
            assert b"VLO# 127 30 1.5" in sim.lines_in
            await sim.press("game_room_v23", 9)  # ALL_OFF: one AOFF line, then a re-poll
            await async_wait_for(lambda: readings(h).get("game_room_sofit_fluor") == 0)
            assert any(e.data.get("event") == "qlink_allloads" for e in h.of_kind("event"))

    asyncio.run(main())


def test_sample_ini_runs_against_the_simulator_cli() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "docs/transports/qlink.ini")
    section = dict(parser["qlink"])
    port = free_port()
    section["port"] = str(port)
    section.pop("bridge", None)
    settings = QLinkSettings(**{**section, **FAST})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.qlink_controller", "--port", str(port),
         "--config", str(ROOT / "docs/transports/qlink.ini"), "--latency", "0.002"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _listening(port))

        async def main() -> None:
            h = Harness(QLinkTransport, settings, "qlink", tempfile.mkdtemp())
            await h.start()
            try:
                await async_wait_for(lambda: "kitchen_pendant" in readings(h))
                await send(h, "w", command="write", values={"kitchen_pendant": 50})
                await async_wait_for(lambda: readings(h).get("kitchen_pendant") == 50)
            finally:
                await h.stop()

        asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_poll_reply_with_a_level_out_of_range_is_rejected() -> None:
    async def main() -> None:
        async with rig(read_interval=0.2) as (sim, h):
            await async_wait_for(lambda: "hall" in readings(h))
            hall = next(a for a in sim.model.levels if (a.master, a.enclosure, a.module,
                                                        a.load) == (1, 1, 1, 3))
            sim.model.levels[hall] = 145  # the controller's poll answer says 145 %
            await async_wait_for(lambda: h.ctx.counters.extra.get("bad_replies", 0) >= 2)
            assert all(e.data.get("hall", 0) <= 100 for e in h.of_kind("reading"))
            assert statuses(h) == [True]

    asyncio.run(main())
