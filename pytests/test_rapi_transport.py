"""rapi_serial against the simulated controller over a real PTY and real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.message import Envelope
from protocols.rapi import encode_line
from pytests.helpers import Harness, async_wait_for, free_port, wait_for
from simulators.rapi_device import RapiDevice
from simulators.rapi_responder import Quirks
from transports.rapi_serial import RapiSerialSettings, RapiSerialTransport
from transports.serial_link import LinkDown

ROOT = Path(__file__).resolve().parent.parent


def settings(port: str, **extra: Any) -> RapiSerialSettings:
    values: dict[str, Any] = {"transport": "rapi_serial", "port": port, "read_interval": 0.5}
    values.update(extra)
    return RapiSerialSettings(**values)


def readings(h: Harness) -> list[dict[str, Any]]:
    return [e.data for e in h.of_kind("reading")]


def results(h: Harness) -> list[dict[str, Any]]:
    return [e.data for e in h.of_kind("event") if e.data.get("event") == "command_result"]


async def command(h: Harness, data: dict[str, Any]) -> dict[str, Any]:
    """Send a command as 'mqtt' would and return its result (also checks the target)."""
    before = len(results(h))
    await h.send(Envelope("mqtt", "command", data))
    await async_wait_for(lambda: len(results(h)) > before)
    result = next(e for e in reversed(h.of_kind("event")) if e.data["event"] == "command_result")
    assert result.target_transport == "mqtt"
    return result.data


def run(
    tmp_path: Path,
    body: Callable[[RapiDevice, Harness], Awaitable[None]],
    mode: str = "tcp",
    quirks: Quirks | None = None,
    **extra: Any,
) -> None:
    """Start a simulator and the transport in one loop, run ``body``, stop both."""

    async def main() -> None:
        link = str(tmp_path / "rapi_pty_0") if mode == "pty" else None
        device = RapiDevice(mode, tcp_port=0, pty_link=link, quirks=quirks)
        await device.start()
        h = Harness(RapiSerialTransport, settings(device.endpoint, **extra), "evse", tmp_path)
        await h.start()
        try:
            await async_wait_for(lambda: readings(h))
            await body(device, h)
        finally:
            await h.stop()
            await device.stop()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["pty", "tcp"])
def test_readings_describe_and_set_current_reach_the_ev(tmp_path: Path, mode: str) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        first = readings(h)[0]
        assert first["state"] == "not_connected" and first["voltage"] == 240.0
        info = h.of_kind("reading")[0].source_transport_info
        assert info["device_identifier"] == "openevse_0a1b2c3d4e5f"
        assert info["firmware_version"] == "8.2.3" and info["device_manufacturer"] == "OpenEVSE"
        describe = next(e.data for e in h.of_kind("event") if e.data["event"] == "describe")
        assert describe["values"]["pilot_current"]["maximum"] == 32
        assert h.of_kind("status")[0].data["available"] is True

        device.plug()
        result = await command(h, {"command": "set_current", "amps": 10, "request_id": "a"})
        assert (result["result"], result["amps"], result["request_id"]) == ("ok", 10, "a")
        await async_wait_for(lambda: device.model.ev.draw_a == 10)
        await async_wait_for(lambda: readings(h)[-1].get("charging_current") == 10.0)
        assert device.model.saved_capacity_a == 32  # volatile: the EEPROM value is untouched

        result = await command(h, {"command": "set_current", "amps": 99})
        assert (result["result"], result["ok"], result["amps"]) == ("nk", False, 32)

    run(tmp_path, body, mode)


def test_plug_in_becomes_an_envelope_without_waiting_for_a_poll(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        await asyncio.sleep(0.2)
        before = len(h.emitted)
        device.plug()
        await async_wait_for(
            lambda: any(e.data.get("state") == "charging" for e in h.emitted[before:]), 5
        )

    run(tmp_path, body, read_interval=3600)


def test_async_line_between_command_and_reply(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        await asyncio.sleep(0.2)
        device.responder.quirks.hold_async = True
        device.plug()  # its $AT waits for our next command, then goes out before the reply
        result = await command(h, {"command": "set_current", "amps": 12})
        assert (result["result"], result["amps"]) == ("ok", 12)
        assert device.responder.quirks.hold_async is False  # the held line did go out
        await async_wait_for(lambda: readings(h)[-1].get("vehicle_connected") is True)
        extra = h.ctx.counters.extra
        assert extra["rapi_garbage"] == 0 and extra["rapi_stale_replies"] == 0

    run(tmp_path, body, read_interval=3600)


def test_noise_burst_and_long_line_are_counted_and_survived(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        device.send(bytes(range(256)) * 8)
        device.send(b"$OK 1^00\r$OK 2 3" + b"$" + b"Z" * 10_000)
        device.send(b"\r")
        await async_wait_for(lambda: h.ctx.counters.extra["rapi_garbage"] >= 3)
        result = await command(h, {"command": "disable"})
        assert result["result"] == "ok"
        await async_wait_for(lambda: readings(h)[-1]["state"] == "disabled")
        assert "RAPI" in h.ctx.counters.last_error
        assert h.running

    run(tmp_path, body, "pty")


def test_peer_without_sequence_ids_and_pre_5_status(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        assert readings(h)[0]["state"] == "not_connected"
        device.plug()
        await async_wait_for(lambda: readings(h)[-1]["state"] == "charging")
        result = await command(h, {"command": "write", "values": {"pilot_current": 16}})
        assert (result["result"], result["amps"]) == ("ok", 16)
        result = await command(h, {"command": "write", "values": {"enabled": False}})
        assert result["result"] == "ok" and device.model.state == 0xFF

    run(tmp_path, body, quirks=Quirks(echo_seq=False, legacy=True))


def test_peer_refusing_sequence_ids(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        assert (await command(h, {"command": "set_current", "amps": 9}))["amps"] == 9
        assert device.model.capacity_a == 9

    run(tmp_path, body, quirks=Quirks(reject_seq=True))


def test_commands_results(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        assert (await command(h, {"command": "set_charge_limit", "kwh": 5}))["result"] == "nk"
        device.plug()
        assert (await command(h, {"command": "set_charge_limit", "kwh": 5}))["result"] == "ok"
        assert device.model.charge_limit_kwh == 5
        assert (await command(h, {"command": "sleep"}))["result"] == "ok"
        await async_wait_for(lambda: readings(h)[-1]["state"] == "sleeping")
        assert (await command(h, {"command": "enable"}))["result"] == "ok"
        bad = await command(h, {"command": "set_current", "amps": "many"})
        assert bad["result"] == "rejected" and "amps" in bad["detail"]
        assert (await command(h, {"command": "fly"}))["result"] == "unsupported"
        described = len([e for e in h.of_kind("event") if e.data["event"] == "describe"])
        assert (await command(h, {"command": "describe"}))["result"] == "ok"
        assert len([e for e in h.of_kind("event") if e.data["event"] == "describe"]) > described
        device.responder.quirks.mute = True
        timed_out = await command(h, {"command": "enable"})
        assert timed_out["result"] == "timeout", timed_out

    run(tmp_path, body, read_interval=3600)


def test_heartbeat_fallback_acknowledged_and_current_restored(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        device.plug()
        assert (await command(h, {"command": "set_current", "amps": 20}))["amps"] == 20
        result = await command(
            h, {"command": "heartbeat", "interval": 1, "amps": 8, "self_pulse": False}
        )
        assert (result["result"], result["interval"], result["heartbeat_amps"]) == ("ok", 1, 8)
        await async_wait_for(lambda: device.model.hb_trigger == 2)
        assert device.model.capacity_a == 8  # the controller's own failsafe
        await command(h, {"command": "heartbeat", "interval": 1, "amps": 8})  # we pulse now
        await async_wait_for(lambda: device.model.hb_trigger == 1)
        await async_wait_for(lambda: device.model.capacity_a == 20)  # re-sent after the ack
        assert any(e.data["event"] == "heartbeat_missed" for e in h.of_kind("event"))

    run(tmp_path, body, read_interval=3600)


def test_heartbeat_from_settings_is_configured_and_pulsed(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        await async_wait_for(lambda: (device.model.hb_interval, device.model.hb_amps) == (3, 7))
        await async_wait_for(lambda: device.model.hb_pulses >= 2)
        assert device.model.hb_trigger == 0  # pulsed in time: 3 pulses per interval
        await async_wait_for(lambda: readings(h)[-1].get("heartbeat_interval") == 3)

    run(tmp_path, body, heartbeat_interval=3, heartbeat_amps=7, read_interval=0.5)


@pytest.mark.parametrize("mode", ["pty", "tcp"])
def test_simulator_restart_mid_run_recovers(tmp_path: Path, mode: str) -> None:
    async def main() -> None:
        link = str(tmp_path / "rapi_pty_0")
        first = RapiDevice(mode, tcp_port=free_port(), pty_link=link)
        await first.start()
        h = Harness(
            RapiSerialTransport,
            settings(first.endpoint, reconnect_backoff_ms=100, read_interval=0.3),
            "evse",
            tmp_path,
        )
        await h.start()
        try:
            await async_wait_for(lambda: readings(h))
            await command(h, {"command": "set_current", "amps": 14})
            await first.stop()
            await async_wait_for(lambda: h.of_kind("status")[-1].data["available"] is False)
            second = RapiDevice(mode, tcp_port=first.tcp_port, pty_link=link)
            second.model.plug()
            await second.start()
            try:
                await async_wait_for(lambda: h.of_kind("status")[-1].data["available"])
                await async_wait_for(lambda: readings(h)[-1].get("state") == "charging")
                # the volatile current we had set is applied again to the new controller
                await async_wait_for(lambda: second.model.capacity_a == 14)
                assert h.running
            finally:
                await second.stop()
        finally:
            await h.stop()
            await first.stop()

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["pty", "tcp"])
def test_gateway_restart_resumes_with_the_same_simulator(tmp_path: Path, mode: str) -> None:
    async def main() -> None:
        device = RapiDevice(mode, tcp_port=0, pty_link=str(tmp_path / "rapi_pty_0"))
        await device.start()
        try:
            for amps in (11, 13):
                h = Harness(RapiSerialTransport, settings(device.endpoint), "evse", tmp_path)
                await h.start()
                await async_wait_for(lambda h=h: readings(h))
                if amps == 11:
                    device.plug()  # its $AT finds nobody listening once this gateway stops
                else:
                    device.unplug()
                assert (await command(h, {"command": "set_current", "amps": amps}))["amps"] == amps
                await h.stop()
                assert h.ctx.counters.extra["rapi_stale_replies"] == 0
        finally:
            await device.stop()

    asyncio.run(main())


def test_gives_up_after_reconnect_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        port = f"socket://127.0.0.1:{free_port()}"
        s = settings(port, reconnect_backoff_ms=50, reconnect_timeout_sec=0.5)
        h = Harness(RapiSerialTransport, s, "evse", tmp_path)
        await h.start()
        await async_wait_for(lambda: not h.running)
        assert h._task is not None and isinstance(h._task.exception(), LinkDown)
        assert h.ctx.counters.errors >= 2
        await h.stop()

    asyncio.run(main())


def test_settings_claims_and_registration() -> None:
    from transports import get

    assert get("rapi_serial") is RapiSerialTransport
    assert settings("/dev/ttyUSB0").claims() == [("serial port", "/dev/ttyUSB0")]
    assert settings("socket://127.0.0.1:8023").claims() == []
    s = settings("/dev/ttyUSB0")
    assert (s.baudrate, s.command_timeout, s.use_sequence_ids) == (115200, 0.5, True)
    assert (s.reconnect_backoff_ms, s.reconnect_timeout_sec) == (1000, 60.0)
    with pytest.raises(ValueError):
        settings("/dev/ttyUSB0", bogus=1)


def test_pty_link_rules(tmp_path: Path) -> None:
    async def main() -> None:
        regular = tmp_path / "not_a_link"
        regular.write_text("keep me")
        with pytest.raises(FileExistsError):
            await RapiDevice("pty", pty_link=str(regular)).start()
        assert regular.read_text() == "keep me"
        stale = tmp_path / "stale"
        stale.symlink_to("/dev/nonexistent")
        device = RapiDevice("pty", pty_link=str(stale))
        await device.start()
        assert os.readlink(stale) == device.pty_name
        await device.stop()
        assert not stale.exists() and not stale.is_symlink()

    asyncio.run(main())


def test_tcp_accepts_a_new_client_after_one_leaves(tmp_path: Path) -> None:
    async def main() -> None:
        device = RapiDevice("tcp", tcp_port=0)
        await device.start()
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", device.tcp_port)
            writer.write(b"$GV^35\r")
            line = await asyncio.wait_for(reader.readuntil(b"\r"), 10)
            assert line.startswith(b"$OK 8.2.3 5.2.1")
            writer.close()
            await writer.wait_closed()
        assert device.clients == 2
        await device.stop()

    asyncio.run(main())


def _http(port: int, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def test_simulator_process_with_http_control(tmp_path: Path) -> None:
    tcp, http = free_port(), free_port()
    cmd = [sys.executable, "-m", "simulators.rapi_device", "--tcp-port", str(tcp)]
    proc = subprocess.Popen(
        [*cmd, "--http-port", str(http), "--ev-max-rate", "16"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "rapi_device ready: socket://127.0.0.1:" in proc.stdout.readline()
        state = _http(http, "/plug", {})
        wait_for(lambda: _http(http, "/state")["draw_a"] == 16)
        state = _http(http, "/fault", {"name": "gfci", "active": True})
        assert state["state"] == 6 and state["faults"] == ["gfci"]
        state = _http(http, "/fault", {"name": "gfci", "active": False})
        state = _http(http, "/ev", {"max_rate": 10})
        wait_for(lambda: _http(http, "/state")["draw_a"] == 10)
        assert state["ev_max_rate"] == 10
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_boot_flood_is_one_warning_few_events_and_few_restores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        await command(h, {"command": "set_current", "amps": 10})
        device.responder.heard.clear()
        seen = device.responder.heard
        caplog.clear()
        device.send(b"".join(encode_line("AB", ("00", "8.2.3")) for _ in range(200)))
        boots = lambda: [e.data for e in h.of_kind("event") if e.data["event"] == "boot"]  # noqa: E731
        await async_wait_for(lambda: sum(b.get("count", 1) for b in boots()) == 200, 15)
        assert len(boots()) <= 5  # one per event_min_interval (1 s) while it lasted
        assert h.ctx.counters.extra["rapi_events_coalesced"] >= 195
        restores = [p for n, p in seen if n == "SC"]
        assert 1 <= len(restores) <= 5 and all(p[0] == "10" for p in restores)
        assert 1 <= sum(1 for n, p in seen if n == "SY" and p == ("30", "6")) <= 5
        warnings = [r for r in caplog.records
                    if r.levelno >= logging.WARNING and "rebooted" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert h.running

    run(tmp_path, body, heartbeat_interval=30)


def test_async_state_flood_is_bounded_and_the_last_value_wins(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        await asyncio.sleep(0.3)
        before = len(readings(h))
        lines = [encode_line("AT", ("01", "01", amps, "0000")) for amps in range(6, 31)] * 80
        lines.append(encode_line("AT", ("01", "01", 17, "0000")))
        device.send(b"".join(lines))  # 2001 lines
        await async_wait_for(lambda: h.ctx.counters.extra["rapi_events_coalesced"] >= 1900, 15)
        await async_wait_for(lambda: readings(h)[-1].get("current_capacity") == 17
                             or h.ctx.counters.extra["rapi_events_coalesced"] >= 2000, 15)
        flood = [r for r in readings(h)[before:]]
        assert len(flood) < 40, len(flood)  # one per second (plus woken polls), not 2001
        assert any(r.get("current_capacity") == 17 for r in flood)

    run(tmp_path, body, read_interval=3600)


def test_currents_outside_the_chargers_limits_are_rejected(tmp_path: Path) -> None:
    async def body(device: RapiDevice, h: Harness) -> None:
        await asyncio.sleep(0.3)
        device.send(encode_line("AT", ("01", "01", 999, "0000")))
        await async_wait_for(lambda: h.ctx.counters.extra["rapi_bad_replies"] >= 1)
        await asyncio.sleep(1.2)
        assert all(r.get("current_capacity", 0) <= 32 for r in readings(h))
        assert "999 A is outside" in h.ctx.counters.last_error
        assert h.running

    run(tmp_path, body, read_interval=3600)


def test_vehicle_seen_from_the_state_when_g0_is_not_supported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def main() -> None:
        device = RapiDevice("tcp", tcp_port=0, quirks=Quirks(no_g0=True))
        device.model.plug()  # plugged in before the gateway starts
        await device.start()
        h = Harness(RapiSerialTransport, settings(device.endpoint), "evse", tmp_path)
        await h.start()
        try:
            await async_wait_for(lambda: readings(h)
                                 and readings(h)[-1].get("vehicle_connected") is True, 10)
            device.unplug()
            await async_wait_for(lambda: readings(h)[-1].get("vehicle_connected") is False, 10)
            await async_wait_for(lambda: len(readings(h)) >= 6, 10)
        finally:
            await h.stop()
            await device.stop()
        told = [r for r in caplog.records if "$G0 with $NK" in r.getMessage()]
        assert len(told) == 1

    asyncio.run(main())
