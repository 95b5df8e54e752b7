"""``protocol-gateway demo``: every simulator, and a gateway reading them, on this machine.

No hardware: each part below starts a simulated device as a subprocess on loopback (ports at
base + instance*100) and adds the matching section to a generated configuration; the gateway
then runs on it in the foreground until Ctrl-C (or ``--duration``). Readings go to
``<dir>/readings.jsonl``; the status API is printed at start. A part whose simulator is not
installed is skipped with a note, so the demo grows with every simulator added to ``PARTS``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, load_config


@dataclass(frozen=True)
class DemoPart:
    """A simulated device: how to start it and the section that reads it."""

    name: str
    module: str  # the simulator's module ("" = no simulator needed)
    argv: Callable[[int, Path], list[str]]  # (port offset, demo dir) -> arguments
    section: Callable[[int, Path], str]
    wait_port: int = 0  # base port to wait for before starting the gateway
    wait_path: str = ""  # a file (a PTY link) to wait for, relative to the demo dir


def _system_section(_: int, __: Path) -> str:
    return "[system]\ntransport = system\nread_interval = 10\nbridge = jsonl\n"


PARTS: list[DemoPart] = [
    DemoPart("system", "", lambda o, d: [], _system_section),
    DemoPart(
        "openevse", "simulators.openevse_node",
        lambda o, d: ["--http-port", str(8081 + o), "--plugged", "--soc", "0.6"],
        lambda o, d: "", wait_port=8081),
    DemoPart(
        "charger", "simulators.rapi_device",
        lambda o, d: ["--mode", "tcp", "--tcp-port", str(8023 + o), "--http-port", str(8024 + o),
                      "--plugged", "--soc", "0.4"],
        lambda o, d: ("[charger]\ntransport = rapi_serial\n"
                      f"port = socket://127.0.0.1:{8023 + o}\nread_interval = 5\n"
                      "bridge = jsonl, loadsharing\n\n"
                      "# a mixed load-sharing group on a 32 A breaker: this gateway's charger\n"
                      "# and a simulated OpenEVSE charger that it leads\n"
                      "[loadsharing]\ntransport = loadsharing\nloadsharing_enabled = true\n"
                      "charger = charger\nloadsharing_group_max_current = 32\n"
                      "node_listen = 127.0.0.1:8190\n"  # the instance offset is the node's

                      f"openevse_members = 127.0.0.1:{8081 + o}\n"
                      "discovery_interfaces = 127.0.0.1\nbridge = jsonl\n"),
        wait_port=8023),
    DemoPart(
        "inverter", "simulators.modbus_device",
        lambda o, d: ["--map", "eg4_v58", "--tcp-port", str(5020 + o), "--day-seconds", "600"],
        lambda o, d: ("[inverter]\ntransport = modbus_tcp\nprotocol_version = eg4_v58\n"
                      f"host = 127.0.0.1\nport = {5020 + o}\naddress = 1\nread_interval = 5\n"
                      "bridge = jsonl\n"),
        wait_port=5020),
    DemoPart(
        "meter", "simulators.modbus_device",
        lambda o, d: ["--map", "sdm630", "--pty-link", str(d / "ttyMETER"), "--baudrate", "9600"],
        lambda o, d: ("[meter]\ntransport = modbus_rtu\nprotocol_version = sdm630\n"
                      f"port = {d / 'ttyMETER'}\nbaudrate = 9600\naddress = 1\n"
                      "read_interval = 5\nbridge = jsonl\n"),
        wait_path="ttyMETER"),
    DemoPart(
        "rs485", "simulators.modbus_bus",
        lambda o, d: ["--device", "1:eg4_v58", "--device", "2:sdm630", "--device", "3:sdm630",
                      "--pty-link", str(d / "ttyRS485"), "--baudrate", "19200", "--line-speed"],
        lambda o, d: ("# three devices on one RS485 line at 19200 baud\n"
                      "[rs485]\ntransport = modbus_bus\n"
                      f"port = {d / 'ttyRS485'}\nbaudrate = 19200\n"
                      "devices = battery_inverter, grid_meter, heatpump_meter\n"
                      "battery_inverter.unit = 1\nbattery_inverter.protocol_version = eg4_v58\n"
                      "battery_inverter.read_interval = 10\ngrid_meter.unit = 2\n"
                      "grid_meter.protocol_version = sdm630\ngrid_meter.read_interval = 5\n"
                      "heatpump_meter.unit = 3\nheatpump_meter.protocol_version = sdm630\n"
                      "heatpump_meter.read_interval = 15\nbridge = jsonl\n"),
        wait_path="ttyRS485"),
    DemoPart(  # SunSpec: no map to write; an inverter (1, 103, 120, 123) and a meter (203)
        "solar", "simulators.sunspec_device",
        lambda o, d: ["--tcp-port", str(5030 + o), "--device", "1:inverter", "--device",
                      "2:meter"],
        lambda o, d: ("[solar]\ntransport = modbus_bus_tcp\nhost = 127.0.0.1\n"
                      f"port = {5030 + o}\ndevices = pv, grid\nread_interval = 5\n"
                      "pv.unit = 1\npv.protocol_version = sunspec\n"
                      "pv.writable = controls_WMaxLim*\n"
                      "grid.unit = 2\ngrid.protocol_version = sunspec\nbridge = jsonl\n"),
        wait_port=5030),
    DemoPart(
        "lighting", "simulators.qlink_controller",
        lambda o, d: ["--port", str(3040 + o), "--auto-press", "10"],
        lambda o, d: ("[lighting]\ntransport = qlink\nhost = 127.0.0.1\n"
                      f"port = {3040 + o}\n"
                      "loads = kitchen_pendant=127@1.1.2.1, hall=12@1.1.1.3, porch=14@1.1.1.4\n"
                      "keypads = entry=1.23\nwritable_loads = kitchen_pendant, hall, porch\n"
                      "writable_buttons = entry\nbridge = jsonl\n"),
        wait_port=3040),
]


def _wait_path(path: Path, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.1)
    return False


def _wait_listening(port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def run_demo(duration: float, directory: str, instance: int) -> int:
    from gateway.cli import run_gateway

    offset = instance * 100
    work = Path(directory or tempfile.mkdtemp(prefix="protocol-gateway-demo-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    sections = [
        f"[general]\nstate_dir = {work / 'state'}\nhttp_port = 8180\ninstance = {instance}\n",
        f"[jsonl]\ntransport = jsonl_out\npath = {work / 'readings.jsonl'}\n",
    ]
    print(f"demo directory: {work}")
    # Simulators run from this checkout or installation, whatever the working directory.
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    try:
        for part in PARTS:
            if part.module:
                if importlib.util.find_spec(part.module) is None:
                    print(f"  {part.name}: simulator {part.module} not installed, skipped")
                    continue
                log = open(work / f"{part.name}-simulator.log", "wb")
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", part.module, *part.argv(offset, work)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env))
                ready = (not part.wait_port or _wait_listening(part.wait_port + offset)) and (
                    not part.wait_path or _wait_path(work / part.wait_path))
                if not ready:
                    print(f"  {part.name}: simulator did not start, see "
                          f"{work / (part.name + '-simulator.log')}")
                    continue
                print(f"  {part.name}: simulator {part.module} running")
            sections.append(part.section(offset, work))
        config_path = work / "demo.ini"
        config_path.write_text("\n".join(sections))
        try:
            config = load_config(config_path, environ={})
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"configuration: {config_path}\nreadings:      {work / 'readings.jsonl'}\n"
              f"status:        http://127.0.0.1:{8180 + offset}/api/transports\n"
              f"load sharing:  http://127.0.0.1:{8190 + offset}/loadsharing/status\n"
              "stop with Ctrl-C")
        if duration > 0:
            threading.Timer(duration, os.kill, (os.getpid(), signal.SIGTERM)).start()
        from gateway.instance_cli import run_guarded

        return run_guarded(config, lambda: run_gateway(config))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
