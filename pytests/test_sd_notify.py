"""The sd_notify protocol against real unix datagram sockets (path and abstract names)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sd_notify import STARTER_ENV, Notifier, socket_address

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket, as systemd holds one, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"pgw-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(20)
    yield sock, "@" + name
    sock.close()


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(4096) for _ in range(count)]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_messages_arrive_in_order_on_a_path_socket(notify_socket) -> None:
    sock, value = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("3 transports: a running,\nb running")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert receive(sock, 4) == [
        b"READY=1", b"STATUS=3 transports: a running, b running", b"WATCHDOG=1", b"STOPPING=1"]
    notifier.close()


def test_ready_with_status_is_one_datagram(notify_socket) -> None:
    sock, value = notify_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    notifier.ready("2 transports started")
    assert receive(sock, 1) == [b"READY=1\nSTATUS=2 transports started"]


def test_abstract_socket_name(abstract_socket) -> None:
    sock, value = abstract_socket
    assert socket_address(value) == "\0" + value[1:]
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value})
    notifier.ready()
    notifier.watchdog()
    assert receive(sock, 2) == [b"READY=1", b"WATCHDOG=1"]


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "20000000"}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_the_period_and_only_for_the_named_pid(
        env: dict[str, str], expected: float | None) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "/run/nowhere", **env})
    assert notifier.watchdog_interval() == expected


def test_watchdog_needs_a_socket() -> None:
    assert Notifier.from_env({"WATCHDOG_USEC": "20000000"}).watchdog_interval() is None


def test_unsupported_address_disables_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.sd_notify"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "vsock:2:1234" in caplog.text


def test_send_failure_never_raises_and_is_logged_once(tmp_path: Path, caplog) -> None:
    path = tmp_path / "not-yet"
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
    with caplog.at_level(logging.INFO, logger="gateway.sd_notify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.status("x") is False
    failures = [r for r in caplog.records if "cannot notify" in r.getMessage()]
    assert len(failures) == 1
    assert str(path) in failures[0].getMessage()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.sd_notify"):
            assert notifier.watchdog() is True
        assert sock.recv(100) == b"WATCHDOG=1"
        assert "delivered again" in caplog.text
    finally:
        sock.close()


def test_after_the_starter_has_gone_failures_are_silent(tmp_path: Path, caplog) -> None:
    """``instance N start`` listens until READY=1 only; later sends fail by design."""
    env = {"NOTIFY_SOCKET": str(tmp_path / "gone"), STARTER_ENV: "1"}
    notifier = Notifier.from_env(env)
    with caplog.at_level(logging.INFO, logger="gateway.sd_notify"):
        assert notifier.status("x") is False
        assert notifier.stopping() is False
    assert caplog.records == []


def test_a_child_process_notifies_from_its_own_pid(notify_socket) -> None:
    """What systemd checks for NotifyAccess=main: the datagram's sender credentials."""
    sock, value = notify_socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    code = ("from gateway.sd_notify import Notifier\n"
            "n = Notifier.from_env()\n"
            "n.ready(); n.status('one line'); n.watchdog(); n.stopping()\n")
    env = {**os.environ, "NOTIFY_SOCKET": value, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    assert child.wait(timeout=60) == 0
    seen = []
    creds_size = struct.calcsize("3i")
    for _ in range(4):
        data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
        (level, kind, raw), = ancdata
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
        pid, _uid, _gid = struct.unpack("3i", raw[:creds_size])
        assert pid == child.pid
        seen.append(data)
    assert seen == [b"READY=1", b"STATUS=one line", b"WATCHDOG=1", b"STOPPING=1"]


# --- the unit files ------------------------------------------------------------------------

UNITS = ROOT / "systemd"
INSTALLED_BINARY = "/opt/protocol-gateway/venv/bin/protocol-gateway"


def unit_values(path: Path) -> dict[str, list[str]]:
    """key -> every value (systemd allows repeated keys such as DeviceAllow=)."""
    values: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


@pytest.mark.parametrize("unit", ["protocol-gateway.service", "protocol-gateway@.service"])
def test_unit_file_declares_notify_supervision_and_serial_access(unit: str) -> None:
    values = unit_values(UNITS / unit)
    expected = {
        "Type": "notify", "NotifyAccess": "main", "KillMode": "mixed",
        "Restart": "on-failure", "RestartPreventExitStatus": "2",
        "SupplementaryGroups": "dialout", "StateDirectory": "protocol-gateway",
    }
    for key, value in expected.items():
        assert values.get(key) == [value], (key, values.get(key))
    for key in ("WatchdogSec", "StartLimitIntervalSec", "StartLimitBurst", "TimeoutStopSec"):
        assert key in values, key
    assert "PrivateDevices" not in values  # it would hide /dev/ttyUSB*
    assert "char-ttyUSB rw" in values["DeviceAllow"]
    (exec_start,) = values["ExecStart"]
    assert exec_start.startswith(INSTALLED_BINARY + " run ")
    if unit.endswith("@.service"):
        assert exec_start.endswith(" /etc/protocol-gateway/%i.ini --instance %i")


@pytest.mark.parametrize("unit", ["protocol-gateway.service", "protocol-gateway@.service"])
def test_unit_exec_start_is_a_valid_command_line(unit: str, tmp_path: Path) -> None:
    """The unit's arguments, with %i and the config path filled in, parse in the real CLI."""
    (exec_start,) = unit_values(UNITS / unit)["ExecStart"]
    config = tmp_path / "3.ini"
    config.write_text("[general]\nhttp_port = 8180\n\n[sys]\ntransport = system\n")
    args = [a.replace("%i", "3") for a in exec_start.split()[1:]]
    args = [str(config) if a.startswith("/etc/protocol-gateway/") else a for a in args]
    done = subprocess.run([sys.executable, str(ROOT / "protocol_gateway.py"), *args,
                           "--print-config"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    expected_instance = "3" if unit.endswith("@.service") else "0"
    assert f"instance = {expected_instance}" in done.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here")
@pytest.mark.parametrize(("unit", "instance_name"), [
    ("protocol-gateway.service", "protocol-gateway.service"),
    ("protocol-gateway@.service", "protocol-gateway@3.service"),
])
def test_units_pass_systemd_analyze_verify(unit: str, instance_name: str,
                                           tmp_path: Path) -> None:
    """verify also checks that ExecStart's binary exists: point it at this Python, since the
    documented install path (/opt/protocol-gateway/venv) is not present on a test host."""
    text = (UNITS / unit).read_text()
    assert INSTALLED_BINARY in text
    (tmp_path / unit).write_text(text.replace(INSTALLED_BINARY, sys.executable))
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / instance_name)],
                          capture_output=True, text=True, timeout=120)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if unit in line or instance_name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_analyze_check_can_fail(tmp_path: Path) -> None:
    """The verify test above would notice a mistake: a misspelled key is reported."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    text = (UNITS / "protocol-gateway.service").read_text()
    broken = text.replace(INSTALLED_BINARY, sys.executable).replace("Type=notify", "Tpye=notify")
    (tmp_path / "protocol-gateway.service").write_text(broken)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "protocol-gateway.service")],
                          capture_output=True, text=True, timeout=120)
    assert "Tpye" in done.stdout + done.stderr
