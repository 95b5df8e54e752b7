"""``protocol-gateway demo``: every simulator, an MQTT broker, and a gateway reading them.

No hardware: each part below starts a simulated device as a subprocess on loopback (ports at
base + instance*100) and adds the matching section to a generated configuration; the demo also
starts an MQTT broker of its own (:mod:`gateway.demo_broker`) unless ``--mqtt host:port`` names
one, and bridges every device to it with Home Assistant discovery. The gateway then runs in the
foreground until Ctrl-C (or ``--duration``) while the terminal shows a compact live view.

Before starting anything the demo makes sure it disturbs nobody: another gateway registered as
the same instance, or any of the demo's ports already bound, stops it with the instance number
that would work. Ports are probed by binding them, never by connecting: a connection to another
demo's simulator would take its place on a one-client device (a RAPI charger's serial link).
"""

from __future__ import annotations

import contextlib
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
from gateway.demo_view import LiveView
from gateway.instance import PORT_STEP

HTTP_BASE = 8180
NODE_BASE = 8190
MQTT_BASE = 11883
DEVICE_TARGETS = "jsonl, mqtt"
MAX_INSTANCE = 99  # [general] instance's range


@dataclass(frozen=True)
class DemoPart:
    """A simulated device: how to start it and the section that reads it."""

    name: str
    module: str  # the simulator's module ("" = no simulator needed)
    argv: Callable[[int, Path], list[str]]  # (port offset, demo dir) -> arguments
    section: Callable[[int, Path], str]
    wait_port: int = 0  # base port to wait for before starting the gateway
    wait_path: str = ""  # a file (a PTY link) to wait for, relative to the demo dir
    ports: tuple[int, ...] = ()  # every base port the simulator listens on


def _system_section(_: int, __: Path) -> str:
    return f"[system]\ntransport = system\nread_interval = 10\nbridge = {DEVICE_TARGETS}\n"


PARTS: list[DemoPart] = [
    DemoPart("system", "", lambda o, d: [], _system_section),
    DemoPart(
        "openevse", "simulators.openevse_node",
        lambda o, d: ["--http-port", str(8081 + o), "--plugged", "--soc", "0.6"],
        lambda o, d: "", wait_port=8081, ports=(8081,)),
    DemoPart(
        "charger", "simulators.rapi_device",
        lambda o, d: ["--mode", "tcp", "--tcp-port", str(8023 + o), "--http-port", str(8024 + o),
                      "--plugged", "--soc", "0.4"],
        lambda o, d: ("[charger]\ntransport = rapi_serial\n"
                      f"port = socket://127.0.0.1:{8023 + o}\nread_interval = 5\n"
                      f"bridge = {DEVICE_TARGETS}, loadsharing\n\n"
                      "# a mixed load-sharing group on a 32 A breaker: this gateway's charger\n"
                      "# and a simulated OpenEVSE charger that it leads\n"
                      "[loadsharing]\ntransport = loadsharing\nloadsharing_enabled = true\n"
                      "charger = charger\nloadsharing_group_max_current = 32\n"
                      f"node_listen = 127.0.0.1:{NODE_BASE}\n"  # the instance offset is the node's
                      f"openevse_members = 127.0.0.1:{8081 + o}\n"
                      f"discovery_interfaces = 127.0.0.1\nbridge = {DEVICE_TARGETS}\n"),
        wait_port=8023, ports=(8023, 8024)),
    DemoPart(
        "inverter", "simulators.modbus_device",
        # unit 4: its serial number (from the unit) differs from the bus inverter's, so Home
        # Assistant sees two inverters, not one
        lambda o, d: ["--map", "eg4_v58", "--tcp-port", str(5020 + o), "--day-seconds", "600",
                      "--unit", "4"],
        lambda o, d: ("[inverter]\ntransport = modbus_tcp\nprotocol_version = eg4_v58\n"
                      f"host = 127.0.0.1\nport = {5020 + o}\naddress = 4\nread_interval = 5\n"
                      f"bridge = {DEVICE_TARGETS}\n"),
        wait_port=5020, ports=(5020,)),
    DemoPart(
        "meter", "simulators.modbus_device",
        lambda o, d: ["--map", "sdm630", "--pty-link", str(d / "ttyMETER"), "--baudrate", "9600"],
        lambda o, d: ("[meter]\ntransport = modbus_rtu\nprotocol_version = sdm630\n"
                      f"port = {d / 'ttyMETER'}\nbaudrate = 9600\naddress = 1\n"
                      f"read_interval = 5\nbridge = {DEVICE_TARGETS}\n"),
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
                      f"heatpump_meter.read_interval = 15\nbridge = {DEVICE_TARGETS}\n"),
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
                      f"writable_buttons = entry\nbridge = {DEVICE_TARGETS}\n"),
        wait_port=3040, ports=(3040,)),
]


# --- before starting: disturb nobody ------------------------------------------------------

def demo_ports(offset: int, own_broker: bool) -> dict[int, str]:
    """Every port the demo will listen on at ``offset``, with what listens there."""
    ports = {HTTP_BASE + offset: "status page", NODE_BASE + offset: "load-sharing node"}
    if own_broker:
        ports[MQTT_BASE + offset] = "MQTT broker"
    for part in PARTS:
        if part.module and importlib.util.find_spec(part.module) is not None:
            for base in part.ports:
                ports[base + offset] = f"{part.name} simulator"
    return ports


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Bind, don't connect: probing must never reach (and disturb) whoever listens there.
    SO_REUSEADDR as the servers set it: a port whose last connections linger in TIME_WAIT is
    free for them (Linux still refuses the bind while anyone listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def busy_ports(offset: int, own_broker: bool) -> list[str]:
    return [f"{port} ({what})" for port, what in sorted(demo_ports(offset, own_broker).items())
            if not port_free(port)]


def running_instances() -> set[int]:
    from gateway.claims import ClaimRegistry

    try:
        return {r.instance for r in ClaimRegistry().records()}
    except OSError:
        return set()


def free_instance(start: int, own_broker: bool, limit: int = 50) -> int | None:
    """The first instance number from ``start`` whose ports are all free and unregistered."""
    taken = running_instances()
    for n in range(start, min(start + limit, MAX_INSTANCE + 1)):
        try:
            if n not in taken and not busy_ports(n * PORT_STEP, own_broker):
                return n
        except OverflowError:
            return None
    return None


def refusal(instance: int, own_broker: bool) -> list[str]:
    """Why the demo cannot start as ``instance`` without disturbing someone (empty: it can)."""
    lines = []
    if instance in running_instances():
        lines.append(f"instance {instance} is already running (another demo or gateway)")
    busy = busy_ports(instance * PORT_STEP, own_broker)
    if busy:
        lines.append("ports already in use: " + ", ".join(busy))
    if lines:
        other = free_instance(instance + 1, own_broker)
        lines.append(f"start this demo beside it with: protocol-gateway demo --instance {other}"
                     if other is not None else "stop the other demo first")
    return lines


# --- starting the parts ---------------------------------------------------------------------

def _wait_ready(proc: subprocess.Popen[bytes], port: int, path: Path | None,
                timeout: float = 20.0) -> bool:
    """Our own simulator is ready: still alive, and its port (bound by no one else a moment
    ago) accepts, or its PTY link exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if path is not None and path.exists():
            return True
        if port:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return True
        time.sleep(0.1)
    return False


def _log_tail(path: Path, lines: int = 2) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def mqtt_section(host: str, port: int, instance: int) -> str:
    topic = "protocol-gateway-demo" + (f"-{instance}" if instance else "")
    return (f"[mqtt]\ntransport = mqtt\nhost = {host}\nport = {port}\n"
            f"base_topic = {topic}\ndiscovery = true\ndiscovery_prefix = homeassistant\n")


# --- the demo -------------------------------------------------------------------------------

def run_demo(duration: float, directory: str, instance: int, mqtt: str = "",
             refresh: float = 5.0) -> int:
    from gateway.cli import run_gateway

    started = time.monotonic()
    if not 0 <= instance <= MAX_INSTANCE:
        print(f"--instance {instance}: expected 0 to {MAX_INSTANCE}", file=sys.stderr)
        return 2
    offset = instance * PORT_STEP
    own_broker = not mqtt
    problems = refusal(instance, own_broker)
    if problems:
        print(f"the demo cannot start as instance {instance} without disturbing another "
              "one:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    work = Path(directory or tempfile.mkdtemp(prefix="protocol-gateway-demo-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    redraw = sys.stdout.isatty() and refresh > 0
    procs: list[subprocess.Popen[bytes]] = []
    sections = [
        f"[general]\nstate_dir = {work / 'state'}\nhttp_port = {HTTP_BASE}\n"
        f"instance = {instance}\n",
        f"[jsonl]\ntransport = jsonl_out\npath = {work / 'readings.jsonl'}\n",
    ]
    print(f"demo directory: {work}")
    # Simulators run from this checkout or installation, whatever the working directory.
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p))

    def start(name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = work / f"{name.replace(' ', '-')}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                    env=env)
        procs.append(proc)
        return proc, log_path

    def ready(name: str, launched: tuple[subprocess.Popen[bytes], Path], port: int,
              path: Path | None) -> bool:
        """False (after saying why) when the part died or never became ready."""
        proc, log_path = launched
        if _wait_ready(proc, port, path):
            return True
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else "did not become ready"
        tail = _log_tail(log_path)
        print(f"  {name}: FAILED ({why}){': ' + tail if tail else ''}; log: {log_path}")
        proc.kill()
        return False

    failed: list[str] = []
    try:
        if mqtt:
            host, _, port_text = mqtt.rpartition(":")
            if not host or not port_text.isdigit():
                print(f"--mqtt {mqtt!r}: expected host:port, e.g. 192.168.1.10:1883",
                      file=sys.stderr)
                return 2
        # every part starts at once (their imports overlap), then each is waited for
        broker_port = MQTT_BASE + offset
        broker: tuple[subprocess.Popen[bytes], Path] | None = None
        broker_kind = ""
        if own_broker:
            from gateway.demo_broker import broker_command

            argv, broker_kind = broker_command(broker_port, work)
            broker = start("mqtt broker", argv)
        launched: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        for part in PARTS:
            if part.module and importlib.util.find_spec(part.module) is not None:
                launched[part.name] = start(
                    f"{part.name} simulator",
                    [sys.executable, "-m", part.module, *part.argv(offset, work)])
        if broker is not None:
            if ready("mqtt broker", broker, broker_port, None):
                print(f"  mqtt: {broker_kind} broker on 127.0.0.1:{broker_port}")
                sections.append(mqtt_section("127.0.0.1", broker_port, instance))
            else:
                failed.append("mqtt broker")
        else:
            host, _, port_text = mqtt.rpartition(":")
            sections.append(mqtt_section(host.strip("[]"), int(port_text), instance))
            print(f"  mqtt: your broker at {mqtt}")
        targets_ok = any(s.startswith("[mqtt]") for s in sections)
        for part in PARTS:
            if part.module:
                if part.name not in launched:
                    print(f"  {part.name}: simulator {part.module} not installed, skipped")
                    continue
                path = work / part.wait_path if part.wait_path else None
                port = part.wait_port + offset if part.wait_port else 0
                if not ready(f"{part.name} simulator", launched[part.name], port, path):
                    failed.append(part.name)
                    continue
                print(f"  {part.name}: simulator {part.module} running")
            section = part.section(offset, work)
            if not targets_ok:
                section = section.replace(DEVICE_TARGETS, "jsonl")
            sections.append(section)
        config_path = work / "demo.ini"
        config_path.write_text("\n".join(sections))
        try:
            config = load_config(config_path, environ={})
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        http = f"http://127.0.0.1:{HTTP_BASE + offset}"
        header = (f"protocol-gateway demo, instance {instance}: page {http}/  metrics "
                  f"{http}/metrics  (Ctrl-C stops)")
        print(f"configuration: {config_path}\nreadings:      {work / 'readings.jsonl'}\n"
              f"status page:   {http}/   (JSON: {http}/api/state, Prometheus: {http}/metrics)\n"
              f"load sharing:  http://127.0.0.1:{NODE_BASE + offset}/loadsharing/status")
        if targets_ok:
            where = f"127.0.0.1:{MQTT_BASE + offset}" if own_broker else mqtt
            print(f"home assistant: add the MQTT integration with broker {where} (discovery "
                  f"prefix homeassistant); the demo's devices appear under MQTT > Devices."
                  + ("\n                the demo's broker listens on loopback only: run "
                     "with --mqtt <your-broker>:1883 to use Home Assistant's broker"
                     if own_broker else ""))
        if failed:
            print(f"FAILED to start: {', '.join(failed)} (the demo runs without them)")
        print("stop with Ctrl-C", flush=True)
        log_path = work / "gateway.log"
        if redraw:
            # the view owns the terminal: the gateway's log (and its children's) goes to a
            # file, whose warnings the view shows
            print(f"gateway log:   {log_path}", flush=True)
            time.sleep(2)  # let the banner be read before the first redraw
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log_fd, 2)
            os.close(log_fd)
        if duration > 0:
            threading.Timer(duration, os.kill, (os.getpid(), signal.SIGTERM)).start()
        view = None
        if refresh > 0:
            view = LiveView(f"{http}/api/state", refresh, sys.stdout, header, redraw=redraw,
                            started=started, log_path=log_path if redraw else None)
            view.thread.start()
        from gateway.instance_cli import run_guarded

        try:
            return run_guarded(config, lambda: run_gateway(config))
        finally:
            if view is not None:
                view.stop.set()
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if procs:
            print(f"demo stopped; its files stay in {work}", flush=True)
