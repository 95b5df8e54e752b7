"""Several instances on one host: offsets, paths, pid files, claims, daemon start/stop.

Daemons here are real: a small stand-in program (written to tmp_path) detaches through
:func:`gateway.daemon.start_daemon` exactly as ``instance N start`` does, binds its instance's
port and registers its claims; the tests then look at it from outside (pid file, /proc,
signals). Each test gets its own claim registry directory through ``PGW_RUN_DIR``.

Size: over the ~400-line guide on purpose: one module per issue feature list (instances, daemon,
systemd), sharing its fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.claims import Claim, ClaimConflict, ClaimRegistry, effective_claims
from gateway.config import GatewayConfig, TransportConfig
from gateway.daemon import instance_status, stop_instance, unit_from_cgroup
from gateway.instance import (
    InstancePaths,
    info_table,
    instance_log_file,
    mdns_name,
    mqtt_client_id,
    offset_address,
    offset_port,
)
from gateway.instance_cli import main_instance, run_guarded
from gateway.pidfile import PidFile, process_alive
from gateway.settings import GeneralSettings, TransportSettings
from pytests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = textwrap.dedent("""
    import os, signal, socket, sys, time
    sys.path.insert(0, {root!r})
    from gateway.daemon import start_daemon
    from gateway.claims import ClaimRegistry
    from gateway.instance import InstancePaths, offset_port
    from gateway.sd_notify import Notifier
    from gateway.settings import GeneralSettings

    state_dir, instance, base_port, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        sys.argv[4]
    ready_timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    general = GeneralSettings(state_dir=state_dir, instance=instance, http_port=base_port)
    paths = InstancePaths.for_instance(general)

    class Stop(Exception):
        pass

    def on_term(signum, frame):
        if mode != "ignore-term":
            raise Stop()
        print("stand-in ignores SIGTERM", flush=True)

    def run():
        signal.signal(signal.SIGTERM, on_term)
        if mode == "crash":
            print("stand-in fails at start-up", flush=True)
            return 3
        port = offset_port(base_port, instance)
        listener = socket.create_server(("127.0.0.1", port))
        claims = [("tcp listen", f"127.0.0.1:{{port}}", "general"),
                  ("state dir", str(paths.state_dir), "general")]
        with ClaimRegistry().hold(instance, claims, config="stand-in.ini",
                                  pid_file=str(paths.pid_file), log_file=str(paths.log_file)):
            (paths.state_dir / "made-by-daemon").write_text("x")
            print(f"stand-in running pid={{os.getpid()}} port={{port}}", flush=True)
            Notifier.from_env().ready("stand-in up")
            try:
                while True:
                    time.sleep(3600)
            except Stop:
                print("stand-in stopping in order", flush=True)
        listener.close()
        return 0

    sys.exit(start_daemon(paths, run, ready_timeout=ready_timeout))
""")


@pytest.fixture(autouse=True)
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    monkeypatch.setenv("PGW_RUN_DIR", str(path))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    return path


@pytest.fixture
def stand_in(tmp_path: Path, run_dir: Path) -> Iterator[StandIns]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN.format(root=str(ROOT)))
    launched = StandIns(script, tmp_path / "state", run_dir)
    yield launched
    launched.cleanup()


class StandIns:
    """Starts stand-in daemons and kills whatever is left at the end of a test."""

    def __init__(self, script: Path, state_dir: Path, run_dir: Path) -> None:
        self.script = script
        self.state_dir = state_dir
        self.run_dir = run_dir
        self.paths: list[InstancePaths] = []

    def path_of(self, instance: int) -> InstancePaths:
        return InstancePaths.for_instance(
            GeneralSettings(state_dir=str(self.state_dir), instance=instance))

    def start(self, instance: int, base_port: int, mode: str = "normal",
              ready_timeout: float = 0.0) -> subprocess.CompletedProcess[str]:
        self.paths.append(self.path_of(instance))
        env = {**os.environ, "PGW_RUN_DIR": str(self.run_dir)}
        env.pop("INVOCATION_ID", None)
        env.pop("NOTIFY_SOCKET", None)
        return subprocess.run(
            [sys.executable, str(self.script), str(self.state_dir), str(instance),
             str(base_port), mode, str(ready_timeout)],
            capture_output=True, text=True, env=env, timeout=120)

    def cleanup(self) -> None:
        for paths in self.paths:
            pid = PidFile(paths.pid_file).live_pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)


def make_config(tmp_path: Path, instance: int, http_port: int = 8180,
                transports: dict[str, TransportSettings] | None = None,
                source: str = "config.ini") -> GatewayConfig:
    general = GeneralSettings(state_dir=str(tmp_path / "state"), instance=instance,
                              http_port=http_port)
    items = {name: TransportConfig(name, s.transport, s) for name, s in (transports or {}).items()}
    return GatewayConfig(str(tmp_path / source), general, items)


class ListeningSettings(TransportSettings):
    """A stand-in transport section that listens on a port and opens a serial port."""

    listen: str = "0.0.0.0:5020"
    serial: str = "/dev/ttyUSB0"

    def claims(self) -> list[tuple[str, str]]:
        return [("tcp listen", self.listen), ("serial port", self.serial)]


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not us, to stand for another instance in the registry."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


# --- names and numbers ---------------------------------------------------------------------

def test_offset_port() -> None:
    assert offset_port(8180, 0) == 8180
    assert offset_port(8180, 3) == 8480
    assert offset_port(0, 5) == 0
    assert offset_port(65435, 1) == 65535
    with pytest.raises(ValueError, match="65536"):
        offset_port(65436, 1)
    assert offset_address("0.0.0.0:502", 2) == "0.0.0.0:702"
    assert offset_address("[::1]:8000", 1) == "[::1]:8100"


def test_cli_refuses_an_offset_beyond_65535(tmp_path: Path, capsys) -> None:
    config = tmp_path / "high.ini"
    config.write_text("[general]\nhttp_port = 60000\n")
    assert main_instance(["99", "info", "--config", str(config)]) == 2
    assert "port 60000 for instance 99 would be 69900" in capsys.readouterr().err


def test_paths_names_and_ids_differ_per_instance(tmp_path: Path) -> None:
    all_paths = [InstancePaths.for_instance(GeneralSettings(state_dir="state", instance=n))
                 for n in range(3)]
    files = [p for paths in all_paths for p in (paths.state_dir, paths.pid_file, paths.log_file)]
    assert len(set(files)) == len(files)
    assert all(p.is_absolute() for p in files)
    assert all_paths[2].state_dir.name == "instance-2"
    assert len({mqtt_client_id("gw", n) for n in range(3)}) == 3
    assert len({mdns_name("gw", n) for n in range(3)}) == 3
    assert mqtt_client_id("gw", 0) == "gw"
    assert mdns_name("gw", 4) == "gw-4"


def test_log_file_per_instance(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert instance_log_file("", 2, state) == state / "gateway.log"
    assert instance_log_file(str(tmp_path / "gw.log"), 0, state) == tmp_path / "gw.log"
    assert instance_log_file(str(tmp_path / "gw.log"), 2, state) == tmp_path / "gw-2.log"
    assert instance_log_file(str(tmp_path / "gw{instance}.log"), 2, state) == tmp_path / "gw2.log"


# --- pid files -----------------------------------------------------------------------------

def test_pid_file_of_this_process_is_live(tmp_path: Path) -> None:
    pid_file = PidFile(tmp_path / "a" / "gw.pid")
    record = pid_file.write()
    assert record.pid == os.getpid() and record.start_ticks is not None
    assert pid_file.read() == record
    assert pid_file.live_pid() == os.getpid()
    assert not pid_file.is_stale()
    assert pid_file.remove(only_pid=os.getpid() + 1) is False
    assert pid_file.remove(only_pid=os.getpid()) is True
    assert pid_file.read() is None and not pid_file.is_stale()


def test_pid_file_of_a_dead_process_is_stale(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    pid_file = PidFile(tmp_path / "gw.pid")
    pid_file.path.write_text(f"{proc.pid}\n")
    assert pid_file.is_stale()


def test_zombie_is_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    wait_for(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(")")[1].split()[0] == "Z")
    assert not process_alive(proc.pid)
    proc.wait()


def test_pid_reused_by_another_program_is_stale(tmp_path: Path, other_process) -> None:
    pid_file = PidFile(tmp_path / "gw.pid")
    # No start time recorded: only a command line naming the gateway would make it live.
    pid_file.path.write_text(f"{other_process.pid}\n")
    assert pid_file.is_stale()
    # A start time that is not the process's: the pid was reused.
    record = pid_file.write(other_process.pid)
    assert pid_file.live_pid() == other_process.pid
    pid_file.path.write_text(f"{other_process.pid}\n{record.start_ticks + 1}\n")
    assert pid_file.is_stale()


def test_garbled_pid_file_is_stale(tmp_path: Path) -> None:
    pid_file = PidFile(tmp_path / "gw.pid")
    pid_file.path.write_text("not a pid\n")
    assert pid_file.read() is None
    assert pid_file.is_stale()


# --- claims --------------------------------------------------------------------------------

def test_effective_claims_offset_listen_ports_only(tmp_path: Path) -> None:
    config = make_config(tmp_path, 2, transports={"dev": ListeningSettings(transport="x")})
    claims = effective_claims(config)
    assert Claim("tcp listen", "127.0.0.1:8380", "general") in claims
    assert Claim("tcp listen", "0.0.0.0:5220", "dev") in claims
    assert Claim("serial port", "/dev/ttyUSB0", "dev") in claims
    assert Claim("state dir", str(tmp_path / "state" / "instance-2"), "general") in claims


def test_check_names_the_live_holder_and_its_config(tmp_path: Path, run_dir: Path,
                                                    other_process) -> None:
    registry = ClaimRegistry()
    assert registry.run_dir == run_dir
    first = make_config(tmp_path, 0, http_port=8280, source="first.ini",
                        transports={"evse": ListeningSettings(transport="x")})
    registry.register(0, effective_claims(first), config=first.source, pid=other_process.pid)

    second = make_config(tmp_path, 1, http_port=8180, source="second.ini",
                         transports={"meter": ListeningSettings(
                             transport="x", listen="127.0.0.1:4920", serial="/dev/ttyUSB1")})
    messages = registry.check(1, effective_claims(second))
    # 8180 + 100 = 8280 (first's http port); 4920 + 100 = 5020 on 127.0.0.1 vs 0.0.0.0:5020.
    assert len(messages) == 2, messages
    assert all(f"instance 0 (pid {other_process.pid}, config {first.source})" in m
               for m in messages)
    assert any(m.startswith("tcp listen 127.0.0.1:8280") for m in messages)
    assert any("tcp listen 127.0.0.1:5020 (wanted by [meter])" in m and "[evse]" in m
               for m in messages)

    same_serial = make_config(tmp_path, 3, http_port=9000,
                              transports={"evse2": ListeningSettings(transport="x",
                                                                     listen="0.0.0.0:6000")})
    (message,) = registry.check(3, effective_claims(same_serial))
    assert message.startswith("serial port /dev/ttyUSB0 (wanted by [evse2]) is already used by "
                              f"instance 0 (pid {other_process.pid}")

    assert registry.check(0, []) == [
        f"instance 0 is already running: instance 0 (pid {other_process.pid}, config "
        f"{first.source})"]


def test_dead_and_garbled_records_are_ignored_and_removed(tmp_path: Path, run_dir: Path) -> None:
    registry = ClaimRegistry()
    proc = subprocess.Popen(["true"])
    proc.wait()
    registry.register(4, [("serial port", "/dev/ttyUSB0")], pid=proc.pid)
    (run_dir / "instance-5.json").write_text("{not json")
    assert registry.check(6, [("serial port", "/dev/ttyUSB0")]) == []
    assert not registry.record_path(4).exists()
    assert not (run_dir / "instance-5.json").exists()


def test_hold_refuses_then_registers_and_unregisters(tmp_path: Path, other_process) -> None:
    registry = ClaimRegistry()
    registry.register(0, [("serial port", "/dev/ttyS0")], config="a.ini", pid=other_process.pid)
    with pytest.raises(ClaimConflict) as err, registry.hold(1, [("serial port", "/dev/ttyS0")]):
        pass
    assert "a.ini" in str(err.value)
    with registry.hold(1, [("serial port", "/dev/ttyS1")], config="b.ini"):
        (record,) = [r for r in registry.records() if r.instance == 1]
        assert record.pid == os.getpid() and record.config == "b.ini"
    assert not registry.record_path(1).exists()


def test_info_table_lists_ports_files_and_names(tmp_path: Path) -> None:
    config = make_config(tmp_path, 3, transports={"dev": ListeningSettings(transport="x")})
    table = info_table(config)
    paths = InstancePaths.for_instance(config.general)
    for expected in ("instance 3", "127.0.0.1:8480 (base port 8180)", str(paths.pid_file),
                     str(paths.log_file), str(paths.state_dir),
                     "tcp listen 0.0.0.0:5320  (base port 5020)",
                     "serial port /dev/ttyUSB0", "mqtt client id", "-3", "mdns name"):
        assert expected in table, (expected, table)


def test_foreground_run_holds_pid_file_and_claims(tmp_path: Path, capsys,
                                                 other_process) -> None:
    config = make_config(tmp_path, 2, transports={"dev": ListeningSettings(transport="x")})
    paths = InstancePaths.for_instance(config.general)
    seen: list[object] = []

    def run() -> int:
        seen.append(PidFile(paths.pid_file).live_pid())
        seen.append([r.instance for r in ClaimRegistry().records()])
        return 7

    assert run_guarded(config, run) == 7
    assert seen == [os.getpid(), [2]]
    assert not paths.pid_file.exists() and ClaimRegistry().records() == []

    other = make_config(tmp_path, 0, http_port=9999, source="other.ini",
                        transports={"evse": ListeningSettings(transport="x",
                                                              listen="0.0.0.0:7000")})
    ClaimRegistry().register(0, effective_claims(other), config=other.source,
                             pid=other_process.pid)
    assert run_guarded(config, run) == 1
    err = capsys.readouterr().err
    assert f"instance 2 cannot start ({config.source})" in err
    assert (f"serial port /dev/ttyUSB0 (wanted by [dev]) is already used by instance 0 "
            f"(pid {other_process.pid}, config {other.source}) [evse]") in err
    assert len(seen) == 2  # run() was not called


def test_systemd_unit_is_read_from_the_cgroup() -> None:
    assert unit_from_cgroup("0::/system.slice/protocol-gateway@2.service\n") == \
        "protocol-gateway@2.service"
    assert unit_from_cgroup("12:pids:/system.slice/protocol-gateway.service\n"
                            "0::/system.slice/protocol-gateway.service\n") == \
        "protocol-gateway.service"
    assert unit_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert unit_from_cgroup("0::/\n") is None


# --- daemons -------------------------------------------------------------------------------

def test_daemon_detaches_writes_its_pid_file_and_stops_in_order(stand_in, capsys) -> None:
    port = free_port()
    result = stand_in.start(1, port - 100)
    assert result.returncode == 0, result.stderr
    paths = stand_in.path_of(1)
    pid = PidFile(paths.pid_file).live_pid()
    assert pid is not None
    assert f"instance 1 started (pid {pid})" in result.stdout
    # Its own session (setsid, then a second fork so it can never regain a terminal).
    assert os.getsid(pid) != os.getsid(0)
    assert os.getsid(pid) == os.getpgid(pid) != pid
    wait_for(lambda: "stand-in running" in paths.log_file.read_text())
    made = paths.state_dir / "made-by-daemon"
    wait_for(made.exists)
    assert made.stat().st_mode & 0o027 == 0  # umask 0o027
    with socket.create_connection(("127.0.0.1", port), timeout=20):
        pass

    running, status_pid, text = instance_status(paths)
    assert running and status_pid == pid and "is running" in text

    again = stand_in.start(1, port - 100)
    assert again.returncode == 1
    assert f"instance 1 is already running (pid {pid}" in again.stderr

    config = stand_in.state_dir.parent / "standin.ini"
    config.write_text(f"[general]\nstate_dir = {stand_in.state_dir}\nhttp_port = {port - 100}\n")
    capsys.readouterr()
    assert main_instance(["1", "status", "--config", str(config)]) == 0
    assert f"instance 1 is running (pid {pid}" in capsys.readouterr().out
    assert main_instance(["1", "logs", "-n", "3", "--config", str(config)]) == 0
    assert "stand-in running" in capsys.readouterr().out
    assert main_instance(["1", "info", "--config", str(config)]) == 0
    assert f"127.0.0.1:{port}" in capsys.readouterr().out
    assert main_instance(["1", "clean", "--config", str(config)]) == 1
    assert "stop it before cleaning" in capsys.readouterr().err
    assert paths.state_dir.is_dir()

    assert main_instance(["1", "stop", "--config", str(config)]) == 0
    assert not process_alive(pid)
    assert not paths.pid_file.exists()
    assert "stand-in stopping in order" in paths.log_file.read_text()
    assert stop_instance(paths, timeout=60) == 1
    assert "not running" in capsys.readouterr().out
    assert main_instance(["1", "status", "--config", str(config)]) == 3
    assert main_instance(["1", "clean", "--config", str(config)]) == 0
    assert not paths.state_dir.exists()


def test_stale_pid_file_from_a_crash_is_replaced(stand_in) -> None:
    port = free_port()
    assert stand_in.start(2, port - 200).returncode == 0
    paths = stand_in.path_of(2)
    pid = PidFile(paths.pid_file).live_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # a crash: nothing cleans up
    wait_for(lambda: not process_alive(pid))
    assert paths.pid_file.exists()
    running, _, text = instance_status(paths)
    assert not running and "stale pid file" in text

    result = stand_in.start(2, port - 200)
    assert result.returncode == 0, result.stderr
    assert "replacing stale pid file" in result.stderr
    new_pid = PidFile(paths.pid_file).live_pid()
    assert new_pid not in (None, pid)
    assert stop_instance(paths, timeout=60) == 0


def test_start_waits_for_ready_or_reports_death_during_start_up(stand_in) -> None:
    port = free_port()
    result = stand_in.start(6, port - 600, ready_timeout=60)
    assert result.returncode == 0, result.stderr
    pid = PidFile(stand_in.path_of(6).pid_file).live_pid()
    assert f"instance 6 started (pid {pid}) and ready: stand-in up" in result.stdout
    # The daemon's later notifications go nowhere, silently (the starter has gone).
    assert stop_instance(stand_in.path_of(6), timeout=60) == 0
    assert "cannot notify" not in stand_in.path_of(6).log_file.read_text()

    failed = stand_in.start(7, port - 700, mode="crash", ready_timeout=60)
    assert failed.returncode == 1
    assert "exited during start-up" in failed.stderr
    assert "stand-in fails at start-up" in failed.stderr  # the log's last lines are shown
    assert "exits with code 3" in failed.stderr
    assert not stand_in.path_of(7).pid_file.exists()


def test_stop_kills_an_instance_that_ignores_sigterm(stand_in) -> None:
    assert stand_in.start(3, free_port() - 300, mode="ignore-term").returncode == 0
    paths = stand_in.path_of(3)
    pid = PidFile(paths.pid_file).live_pid()
    assert pid is not None
    wait_for(lambda: "stand-in running" in paths.log_file.read_text())
    assert stop_instance(paths, timeout=0.5) == 0
    assert not process_alive(pid)
    assert "stand-in ignores SIGTERM" in paths.log_file.read_text()


def test_under_systemd_it_runs_in_the_foreground(stand_in, run_dir: Path) -> None:
    """With INVOCATION_ID set python-daemon is not used: the main PID stays the main PID."""
    script = stand_in.script.parent / "fg.py"
    script.write_text(stand_in.script.read_text().replace(
        "time.sleep(3600)", "raise Stop()"))
    env = {**os.environ, "PGW_RUN_DIR": str(run_dir), "INVOCATION_ID": "0123abcd"}
    proc = subprocess.run([sys.executable, str(script), str(stand_in.state_dir), "4",
                           str(free_port() - 400), "normal"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not detaching" in proc.stderr
    assert "stand-in running" in proc.stdout and "stopping in order" in proc.stdout
    assert not stand_in.path_of(4).pid_file.exists()


def test_three_instances_at_once_then_all_stop(stand_in, capsys) -> None:
    base = free_port()
    for n in range(3):
        result = stand_in.start(n, base)
        log = stand_in.path_of(n).log_file
        if result.returncode != 0 and "Address already in use" in log.read_text():
            pytest.skip("another program took one of the offset ports")
        assert result.returncode == 0, result.stderr
    all_paths = [stand_in.path_of(n) for n in range(3)]
    pids = [PidFile(p.pid_file).live_pid() for p in all_paths]
    assert None not in pids and len(set(pids)) == 3
    for n, paths in enumerate(all_paths):
        wait_for(lambda paths=paths: "stand-in running" in paths.log_file.read_text())
        with socket.create_connection(("127.0.0.1", offset_port(base, n)), timeout=20):
            pass
    # No file in common: every instance's files live under its own directory.
    files = {f for p in all_paths for f in p.state_dir.rglob("*") if f.is_file()}
    dirs = {f.parent for f in files}
    assert dirs == {p.state_dir for p in all_paths}
    records = ClaimRegistry().records()
    assert sorted(r.instance for r in records) == [0, 1, 2]
    ports = [c.identity for r in records for c in r.claims if c.what == "tcp listen"]
    assert len(set(ports)) == 3

    capsys.readouterr()
    assert main_instance(["all", "status", "--config", "/nonexistent.ini"]) == 0
    out = capsys.readouterr().out
    assert all(f"instance {n} is running (pid {pids[n]}" in out for n in range(3))
    assert main_instance(["all", "stop", "--config", "/nonexistent.ini"]) == 0
    assert not any(process_alive(pid) for pid in pids)
    assert ClaimRegistry().records() == []
    assert main_instance(["all", "status", "--config", "/nonexistent.ini"]) == 3


# --- whole gateways ------------------------------------------------------------------------

GATEWAY_SECTIONS = """
[sys]
transport = system
read_interval = 0.5
bridge = out

[out]
transport = jsonl_out
path = -
"""

RAPI_SECTIONS = """
[evse]
transport = rapi_serial
port = {port}
read_interval = 0.5
bridge = out

[out]
transport = jsonl_out
path = -
"""


def free_base_port(instances: int) -> int:
    """A base port whose offsets for ``instances`` instances are all free right now."""
    for _ in range(50):
        base = free_port()
        if base + instances * 100 > 65535:
            continue
        try:
            for n in range(1, instances):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + n * 100))
        except OSError:
            continue
        return base
    raise AssertionError("no base port with free offsets")


def write_gateway_config(path: Path, state_dir: Path, http_port: int,
                         sections: str = GATEWAY_SECTIONS) -> Path:
    path.write_text(f"[general]\nhttp_port = {http_port}\nstate_dir = {state_dir}\n"
                    f"heartbeat_interval = 0.2\nshutdown_timeout = 10\n{sections}")
    return path


@pytest.fixture
def rapi_simulators(tmp_path: Path) -> Iterator[list[Path]]:
    """Three RAPI simulators on PTYs (``--instance N``), one per gateway instance."""
    links = [tmp_path / f"rapi_pty_{n}" for n in range(3)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "simulators.rapi_device", "--mode", "pty", "--pty-link",
         str(link), "--http-port", "0", "--instance", str(n), "--plugged"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n, link in enumerate(links)]
    try:
        for link in links:
            wait_for(link.exists, timeout=60)
        yield links
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def gateway_cli(*args: str, run_dir: Path, extra_env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGW_RUN_DIR": str(run_dir), **(extra_env or {})}
    env.pop("INVOCATION_ID", None)
    return subprocess.run([sys.executable, str(ROOT / "protocol_gateway.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def process_tree(pid: int) -> list[int]:
    from pytests.gateway_proc import children_of

    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children_of(current)
    return tree


def open_files_and_listen_ports(pid: int) -> tuple[set[str], set[int]]:
    """Regular files any process of the instance holds open, and the TCP ports it listens on."""
    listening: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    listening[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    files: set[str] = set()
    ports: set[int] = set()
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{member}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inode = target[len("socket:["):-1]
                        if inode in listening:
                            ports.add(listening[inode])
                    elif target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
                        files.add(target)
    return files, ports


def api_all_running(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/transports",
                                    timeout=5) as response:
            table = json.load(response)["transports"]
    except (OSError, ValueError):
        return False
    return bool(table) and all(t["state"] == "running" for t in table)


@pytest.mark.slow
def test_three_gateways_with_simulators_share_no_file_or_port(
        tmp_path: Path, run_dir: Path, rapi_simulators: list[Path], capsys) -> None:
    """As on a host with three chargers: /etc/protocol-gateway/N.ini per instance, one base
    port and one state directory for all, each reading its own (simulated) RAPI device."""
    base = free_base_port(3)
    state = tmp_path / "state"
    configs = [write_gateway_config(tmp_path / f"{n}.ini", state, base,
                                    RAPI_SECTIONS.format(port=link))
               for n, link in enumerate(rapi_simulators)]
    pids: list[int] = []
    try:
        for n, config in enumerate(configs):
            result = gateway_cli("instance", str(n), "start", "--config", str(config),
                                 run_dir=run_dir)
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"instance {n} started (pid" in result.stdout, result.stdout
            assert "and ready" in result.stdout, result.stdout
        all_paths = [InstancePaths.for_instance(GeneralSettings(
            state_dir=str(state), instance=n)) for n in range(3)]
        for paths in all_paths:
            pids.append(wait_for(lambda paths=paths: PidFile(paths.pid_file).live_pid()))
        for n, paths in enumerate(all_paths):
            wait_for(lambda n=n: api_all_running(base + n * 100), timeout=60)
            # Healthy means data: readings from this instance's own charger reach its output.
            wait_for(lambda paths=paths: '"kind":"reading"' in paths.log_file.read_text()
                     and '"source_transport":"evse"' in paths.log_file.read_text(), timeout=60)

        seen = [open_files_and_listen_ports(pid) for pid in pids]
        for n, (files, ports) in enumerate(seen):
            assert base + n * 100 in ports
            assert str(all_paths[n].log_file) in files
            for m in range(n + 1, 3):
                assert not files & seen[m][0], (n, m, files & seen[m][0])
                assert not ports & seen[m][1], (n, m, ports & seen[m][1])

        # Refusals happen before anything forks: ask in-process (quicker than a subprocess).
        capsys.readouterr()
        assert main_instance(["1", "start", "--config", str(configs[1])]) == 1
        assert f"instance 1 is already running (pid {pids[1]})" in capsys.readouterr().err

        # Same serial port as instance 0 (through its symlink): refused, naming instance 0.
        # (its own status port, low enough that instance 5's offset stays a port)
        dup_base = next(p for p in (free_port() for _ in range(100)) if p + 500 <= 65535)
        dup = write_gateway_config(tmp_path / "dup.ini", tmp_path / "state-b", dup_base,
                                   RAPI_SECTIONS.format(port=rapi_simulators[0]))
        assert main_instance(["5", "start", "--config", str(dup)]) == 1
        err = capsys.readouterr().err
        pts = os.path.realpath(rapi_simulators[0])
        assert (f"serial port {pts} (wanted by [evse]) is already used by instance 0 "
                f"(pid {pids[0]}, config {configs[0]}) [evse]") in err, err

        # Instance 3 of a config whose base port is 100 lower lands on instance 2's port.
        clash = write_gateway_config(tmp_path / "clash.ini", tmp_path / "state-c", base - 100)
        assert main_instance(["3", "start", "--config", str(clash)]) == 1
        err = capsys.readouterr().err
        assert (f"tcp listen 127.0.0.1:{base + 200}" in err
                and f"instance 2 (pid {pids[2]}, config {configs[2]})" in err), err

        assert main_instance(["all", "status", "--config", str(configs[0])]) == 0
        out = capsys.readouterr().out
        assert all(f"instance {n} is running (pid {pids[n]}" in out for n in range(3))
        assert main_instance(["all", "stop", "--config", str(configs[0])]) == 0
        assert not any(process_alive(pid) for pid in pids)
        assert all("supervisor: all transports stopped" in p.log_file.read_text()
                   for p in all_paths)
        assert ClaimRegistry().records() == []

        assert main_instance(["0", "clean", "--config", str(configs[0])]) == 0
        assert not all_paths[0].state_dir.exists()
    finally:
        for pid in pids:
            if pid and process_alive(pid):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


@pytest.mark.slow
def test_gateway_notifies_ready_status_watchdog_stopping_in_order(tmp_path: Path) -> None:
    config = write_gateway_config(tmp_path / "config.ini", tmp_path / "state", free_port())
    name = f"pgw-gw-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000",
           "PGW_RUN_DIR": str(tmp_path / "run")}
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "gateway.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "protocol_gateway.py"), "run",
                             str(config), "--instance", "2"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    messages: list[str] = []

    def next_message() -> str:
        creds = struct.calcsize("3i")
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(creds))
        for level, kind, raw in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                assert struct.unpack("3i", raw[:creds])[0] == proc.pid  # only the main PID
        messages.extend(data.decode().split("\n"))
        return data.decode()

    try:
        wait_for(lambda: "READY=1" in next_message(), timeout=60, interval=0)
        wait_for(lambda: "WATCHDOG=1" in next_message(), timeout=60, interval=0)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "STOPPING=1" in next_message(), timeout=60, interval=0)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        sock.close()
    ready = messages.index("READY=1")
    assert messages.count("READY=1") == 1
    assert any(m.startswith("STATUS=2 transports") for m in messages), messages
    assert "WATCHDOG=1" in messages[ready:]
    assert messages.index("STOPPING=1") > ready
