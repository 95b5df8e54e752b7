"""Memory and start-up of a real gateway on the simulators: what a Raspberry Pi pays for it.

    python bench/footprint.py [--runs 5] [--only six|small]

Two configurations, each against real simulators and a private Mosquitto (and InfluxDB 1.x
when installed): ``six`` = rapi_serial, modbus_tcp (eg4_v58), qlink, mqtt, influxdb_out and a
one-node loadsharing group; ``small`` = one Modbus TCP device plus MQTT. For each it prints

- PSS and RSS per process (supervisor, forkserver, each transport, helpers) and the total,
  from /proc/PID/smaps_rollup once every transport has sent a reading (PSS shares a page's
  cost between the processes that map it: the honest total for copy-on-write children);
- exec to the first state message on MQTT, the median of ``--runs`` starts;
- kill -9 of the charger transport to its next state message on MQTT, the median of
  ``--runs`` kills, beside the configured restart backoff (the target is backoff + 0.2 s).

Targets (issue 22, this 2-core machine): six <= 150 MB PSS, small <= 80 MB, first state
< 1.5 s, restart <= backoff + 0.2 s.

The interpreter that runs this runs the gateway: a system Python carries what the machine has
installed (here numpy, which influxdb-client would import, and a site hook that every process
runs). What a Pi has is a clean virtual environment; measure that too:

    python3 -m venv /tmp/pgw-venv && /tmp/pgw-venv/bin/pip install . pytest
    /tmp/pgw-venv/bin/python bench/footprint.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytests.gateway_proc import descendants  # noqa: E402
from pytests.helpers import free_port  # noqa: E402
from pytests.servers import InfluxDB1, Mosquitto, find_binary  # noqa: E402

BACKOFF = 1.0
LOG_LEVEL = os.environ.get("BENCH_LOG_LEVEL", "WARNING")  # INFO: the gateways' logs
NOT_STATE = ("status", "availability", "result", "event")


def wait_port(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Simulators:
    """The charger, the inverter and the lighting controller, as subprocesses."""

    def __init__(self) -> None:
        self.rapi, self.rapi_http = free_port(), free_port()
        self.modbus, self.qlink = free_port(), free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Simulators:
        for argv, port in (
            (["simulators.rapi_device", "--mode", "tcp", "--tcp-port", str(self.rapi),
              "--http-port", str(self.rapi_http), "--plugged"], self.rapi),
            (["simulators.modbus_device", "--map", "eg4_v58", "--tcp-port", str(self.modbus)],
             self.modbus),
            (["simulators.qlink_controller", "--port", str(self.qlink)], self.qlink),
        ):
            self.procs.append(subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT,
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
            wait_port(port)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


def sections(which: str, sims: Simulators, broker: int, influx: InfluxDB1 | None) -> str:
    mqtt_section = (f"[mqtt]\ntransport = mqtt\nhost = 127.0.0.1\nport = {broker}\n"
                    "base_topic = bench\n\n")
    inverter = (f"[inverter]\ntransport = modbus_tcp\nprotocol_version = eg4_v58\n"
                f"host = 127.0.0.1\nport = {sims.modbus}\naddress = 1\nread_interval = 2\n"
                "bridge = mqtt{influx}\n\n")
    if which == "small":
        return mqtt_section + inverter.format(influx="")
    influx_target = ", influx" if influx is not None else ""
    text = mqtt_section + inverter.format(influx=influx_target)
    text += (f"[evse]\ntransport = rapi_serial\nport = socket://127.0.0.1:{sims.rapi}\n"
             f"read_interval = 1\nbridge = mqtt, loadsharing{influx_target}\n\n"
             f"[lighting]\ntransport = qlink\nhost = 127.0.0.1\nport = {sims.qlink}\n"
             "loads = kitchen=127@1.1.2.1, hall=12@1.1.1.3\nbridge = mqtt\n\n"
             "[loadsharing]\ntransport = loadsharing\nloadsharing_enabled = true\n"
             "charger = evse\nloadsharing_group_max_current = 32\n"
             f"node_listen = 127.0.0.1:{free_port()}\ndiscovery_interfaces = 127.0.0.1\n"
             "bridge = mqtt\n\n")
    if influx is not None:
        text += (f"[influx]\ntransport = influxdb_out\nurl = {influx.url}\ndatabase = bench\n"
                 f"username = {influx.user}\npassword = {influx.password}\n\n")
    return text


class StateWatch:
    """Every state message's arrival time, per device, from a subscriber of our own."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fp-{os.getpid()}")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("bench/+/+", qos=0)
        self.client.loop_start()

    def _message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return
        device, value = msg.topic.split("/")[1:3]
        if value not in NOT_STATE:
            with self.lock:
                self.seen.append((time.monotonic(), device))

    def first_after(self, t0: float, device: str = "", timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for at, dev in self.seen:
                    if at > t0 and (not device or dev == device):
                        return at - t0
            time.sleep(0.005)
        raise RuntimeError(f"no state message{' from ' + device if device else ''}")

    def devices(self) -> set[str]:
        with self.lock:
            return {d for _, d in self.seen}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Gateway:
    def __init__(self, tmp: Path, text: str) -> None:
        self.http = free_port()
        config = tmp / "gateway.ini"
        config.write_text(
            f"[general]\nhttp_port = {self.http}\nstate_dir = {tmp / 'state'}\n"
            f"log_level = {LOG_LEVEL}\nrestart_backoff_initial = {BACKOFF}\n"
            "restart_stable_after = 1\nrestart_max_count = 100\n\n" + text)
        env = dict(os.environ, PGW_RUN_DIR=str(tmp / "run"))
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "protocol_gateway.py"),
                                      str(config)], cwd=tmp, env=env,
                                     stdout=open(tmp / "gateway.log", "ab"),
                                     stderr=subprocess.STDOUT)

    def transports(self) -> dict[str, dict]:
        url = f"http://127.0.0.1:{self.http}/api/transports"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return {t["name"]: t for t in json.load(reply)["transports"]}

    def wait_running(self, timeout: float = 60.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                table = self.transports()
                if all(t["state"] == "running" and t["envelopes_out"] for t in table.values()
                       if t["kind"] not in ("mqtt", "influxdb_out")):
                    return table
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the transports did not all start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            values[key] = int(rest.split()[0])
    return values.get("Pss", 0), values.get("Rss", 0)


def label(pid: int, root: int, names: dict[int, str]) -> str:
    if pid == root:
        return "supervisor"
    if pid in names:
        return names[pid]
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    for word in ("forkserver", "resource_tracker"):
        if word in cmd:
            return word
    return cmd[:40]


def measure(which: str, runs: int) -> None:
    influx_bin = which == "six" and find_binary("influxd")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with Simulators() as sims, Mosquitto(tmp / "broker") as broker:
            influx = InfluxDB1(tmp / "influx") if influx_bin else None
            if influx is not None:
                influx.start()
                influx.create_database("bench")
            try:
                text = sections(which, sims, broker.port, influx)
                watch = StateWatch(broker.port)
                starts, restarts = [], []
                for run in range(runs):
                    gw_dir = tmp / f"run{run}"
                    gw_dir.mkdir()
                    t0 = time.monotonic()
                    gw = Gateway(gw_dir, text)
                    try:
                        starts.append(watch.first_after(t0))
                        table = gw.wait_running()
                        if run == 0:
                            time.sleep(3.0)  # settled: every transport has done its work once
                            report_memory(which, gw.proc.pid, table)
                        if which == "six":
                            restarts.append(kill_and_wait(gw, watch, "evse"))
                    finally:
                        gw.stop()
                watch.close()
            finally:
                if influx is not None:
                    influx.stop()
    print(f"  exec to first MQTT state: median {statistics.median(starts):.2f} s "
          f"(min {min(starts):.2f}, max {max(starts):.2f}, {len(starts)} starts)")
    if restarts:
        print(f"  kill -9 of evse to its next MQTT state: median "
              f"{statistics.median(restarts):.2f} s (min {min(restarts):.2f}, max "
              f"{max(restarts):.2f}; backoff {BACKOFF:g} s, target <= {BACKOFF + 0.2:.1f} s)")


def kill_and_wait(gw: Gateway, watch: StateWatch, name: str) -> float:
    device = ""
    deadline = time.monotonic() + 30
    while not device and time.monotonic() < deadline:
        device = next((d for d in watch.devices() if d.startswith("openevse")), "")
        time.sleep(0.05)
    pid = gw.transports()[name]["pid"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    return watch.first_after(t0, device)


def report_memory(which: str, root: int, table: dict[str, dict]) -> None:
    names = {t["pid"]: f"{n} ({t['kind']})" for n, t in table.items() if t["pid"]}
    rows = []
    for pid in descendants(root):
        try:
            rows.append((label(pid, root, names), *memory(pid)))
        except OSError:
            continue
    print(f"{which}: {len(table)} transports ({', '.join(t['kind'] for t in table.values())})")
    for name, pss, rss in rows:
        print(f"  {name:<32} PSS {pss / 1024:6.1f} MB   RSS {rss / 1024:6.1f} MB")
    print(f"  {'total':<32} PSS {sum(r[1] for r in rows) / 1024:6.1f} MB   "
          f"RSS {sum(r[2] for r in rows) / 1024:6.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=("six", "small"), default="")
    args = parser.parse_args()
    for which in ("six", "small"):
        if not args.only or args.only == which:
            measure(which, args.runs)


if __name__ == "__main__":
    main()
