"""The supervisor with real processes and real signals.

Runs under pytest, or as a script:

    python pytests/test_multiprocessing.py              # this module's tests, verbosely
    python pytests/test_multiprocessing.py config.ini   # smoke-test YOUR configuration: start it,
                                                        # kill -9 each child and watch it come
                                                        # back, SIGTERM, check no orphan is left
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytests.gateway_proc import (
    GatewayProcess,
    alive,
    children_of,
    read_jsonl,
    wait_gone,
)
from pytests.helpers import wait_for

TWO_INPUTS = """
[in_a]
transport = system
read_interval = 0.02
bridge = out

[in_b]
transport = system
read_interval = 0.03
bridge = out

[out]
transport = jsonl_out
path = {path}
"""


def sequences_by_source(rows: list[dict]) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for row in rows:
        seqs.setdefault(row["source_transport"], []).append(row["sequence"])
    return seqs


def test_single_transport_runs_in_process(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, "[only]\ntransport = system\nread_interval = 0.5\n")
    try:
        table = wait_for(gw.try_transports)
        assert table["only"]["state"] == "running"
        assert table["only"]["pid"] is None  # no child process: runs in the supervisor
        wait_for(lambda: gw.transports()["only"]["envelopes_out"] >= 2)
        assert children_of(gw.pid) == []
    finally:
        assert gw.stop() == 0
    assert "[only pid=" in gw.log_text()


def test_single_transport_restarts_under_the_policy(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("PGW_PLUGINS", "pytests.misbehaving")
    gw = GatewayProcess(tmp_path, "[only]\ntransport = test_crashing\nafter = 0.2\n",
                        general="restart_max_count = 3\nrestart_window = 60\n"
                                "restart_failed_retry = 0\n")
    try:
        # crashes, is restarted after its backoff, and after 3 restarts is given up on
        assert gw.proc.wait(60) == 1
    finally:
        gw.stop()
    log = gw.log_text()
    assert log.count("restarting in") == 3, log
    assert "giving up" in log


def test_single_transport_stuck_exits_for_the_service_manager(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    monkeypatch.setenv("PGW_PLUGINS", "pytests.misbehaving")
    gw = GatewayProcess(tmp_path, "[only]\ntransport = test_hanging\nafter = 0.5\n",
                        general="heartbeat_timeout = 2\n")
    try:
        assert gw.proc.wait(60) == 70
    finally:
        gw.stop()
    assert "sent no heartbeat" in gw.log_text()


def test_fan_in_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out), general="log_level = DEBUG\n")
    try:
        gw.wait_all_running()
        wait_for(lambda: len(read_jsonl(out)) >= 100)
    finally:
        assert gw.stop() == 0
    seqs = sequences_by_source(read_jsonl(out))
    assert set(seqs) == {"in_a", "in_b"}
    for source, numbers in seqs.items():
        assert numbers == list(range(1, len(numbers) + 1)), f"{source}: gap, dup or reorder"
    assert "[in_a pid=" in gw.log_text() and "[supervisor pid=" in gw.log_text()


def test_killed_child_is_restarted(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out))
    try:
        first = gw.wait_all_running()["in_a"]["pid"]
        gw_signal_child(first, signal.SIGKILL)
        table = wait_for(lambda: (t := gw.try_transports()) and t["in_a"]["state"] == "running"
                         and t["in_a"]["pid"] not in (None, first) and t)
        assert table["in_a"]["restarts"] == 1
        assert not alive(first)
        assert "in_a killed by signal SIGKILL" in gw.log_text()
    finally:
        assert gw.stop() == 0


def gw_signal_child(pid: int, sig: int) -> None:
    import os

    os.kill(pid, sig)


def test_intensity_limit_marks_failed_and_others_keep_running(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out),
                        general="restart_max_count = 2\nrestart_window = 60\n"
                                "restart_failed_retry = 0\n")
    try:
        gw.wait_all_running()
        for _ in range(3):
            pid = wait_for(lambda: (t := gw.try_transports()) and t["in_a"]["state"] == "running"
                           and t["in_a"]["pid"])
            gw_signal_child(pid, signal.SIGKILL)
            wait_for(lambda p=pid: gw.transports()["in_a"]["pid"] != p)
        table = gw.wait_state("in_a", "failed")
        assert table["restarts"] == 2
        assert gw.transports()["in_b"]["state"] == "running"
        before = gw.transports()["out"]["envelopes_in"]
        wait_for(lambda: gw.transports()["out"]["envelopes_in"] > before + 5)
    finally:
        assert gw.stop() == 0
    assert "marked failed" in gw.log_text()


def test_sigterm_stops_everything_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out))
    table = gw.wait_all_running()
    pids = [t["pid"] for t in table.values()]
    assert gw.stop() == 0
    wait_gone(pids)
    assert children_of(gw.pid) == []
    log = gw.log_text()
    assert log.index("in_a stopped") < log.index("out stopped")  # inputs first


def test_sigkilled_supervisor_leaves_no_orphan(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out))
    table = gw.wait_all_running()
    pids = [t["pid"] for t in table.values()]
    gw.signal(signal.SIGKILL)
    gw.proc.wait(10)
    wait_gone(pids, timeout=10)
    gw.stop()


def test_stuck_child_is_noticed_and_restarted(tmp_path: Path, monkeypatch: Any) -> None:
    out = tmp_path / "out.jsonl"
    # a crash would wait 5 s; a transport killed as stuck is restarted at once
    monkeypatch.setenv("PGW_GENERAL_RESTART_BACKOFF_INITIAL", "5")
    monkeypatch.setenv("PGW_GENERAL_RESTART_BACKOFF_MAX", "10")
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out), general="heartbeat_timeout = 2\n")
    try:
        pid = gw.wait_all_running()["in_b"]["pid"]
        gw_signal_child(pid, signal.SIGSTOP)  # alive, but its loop no longer runs
        table = wait_for(lambda: (t := gw.try_transports()) and t["in_b"]["state"] == "running"
                         and t["in_b"]["pid"] not in (None, pid) and t)
        assert "stuck" in table["in_b"]["last_error"]
        assert "sent no heartbeat" in gw.log_text()
        assert "restarting in 0.0 s" in gw.log_text()  # killed as stuck: no crash backoff
    finally:
        assert gw.stop() == 0


def test_output_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out))
    try:
        pid = gw.wait_all_running()["out"]["pid"]
        wait_for(lambda: len(read_jsonl(out)) >= 30)
        gw_signal_child(pid, signal.SIGSTOP)  # batches pile up un-acknowledged...
        time.sleep(1.5)
        gw_signal_child(pid, signal.SIGKILL)  # ...and die with it: they must be re-sent
        wait_for(lambda: (t := gw.try_transports()) and t["out"]["pid"] not in (None, pid))
        count = len(read_jsonl(out))
        wait_for(lambda: len(read_jsonl(out)) >= count + 30)
    finally:
        assert gw.stop() == 0
    seqs = sequences_by_source(read_jsonl(out))
    for source, numbers in seqs.items():
        # at-least-once: every sequence number present; a batch may appear twice
        assert set(numbers) == set(range(1, max(numbers) + 1)), f"{source} lost envelopes"
        dups = sum(n - 1 for n in Counter(numbers).values())
        assert dups <= 2 * 500, "duplicates beyond the un-acknowledged window"


def test_status_command_prints_a_table(tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, TWO_INPUTS.format(path=out))
    try:
        gw.wait_all_running()
        result = subprocess.run(
            [sys.executable, str(Path(__file__).parent.parent / "protocol_gateway.py"),
             "status", str(gw.config)], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split()[:3] == ["TRANSPORT", "KIND", "STATE"]
        assert any(line.split()[:3] == ["out", "jsonl_out", "running"] for line in lines)
    finally:
        gw.stop()


def smoke_test(config: str) -> int:
    """Start the user's configuration and exercise the supervisor on it."""
    import os
    import subprocess
    import tempfile
    import time

    from gateway.cli import http_port
    from gateway.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        print(exc)
        return 2
    port = http_port(cfg)
    if port == 0 or len(cfg.transports) < 2:
        print("smoke test needs http_port set and at least two transports")
        return 2
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, str(root / "protocol_gateway.py"), config],
                                stdout=log, stderr=subprocess.STDOUT)
        gw = GatewayProcess.__new__(GatewayProcess)
        gw.port, gw.proc = port, proc
        try:
            table = wait_for(lambda: (t := gw.try_transports()) and all(
                v["state"] == "running" for v in t.values()) and t, 60)
            print(f"all {len(table)} transports running")
            for name, row in table.items():
                os.kill(row["pid"], signal.SIGKILL)
                wait_for(lambda n=name, p=row["pid"]: (t := gw.try_transports()) and
                         t[n]["state"] == "running" and t[n]["pid"] not in (None, p), 60)
                print(f"  {name}: killed -9 and restarted")
            pids = [r["pid"] for r in gw.transports().values()]
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            wait_gone(pids)
            print(f"SIGTERM: exit code {code} after {time.monotonic() - start:.1f} s, "
                  "no child left")
            return 0 if code == 0 else 1
        finally:
            if proc.poll() is None:
                proc.kill()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(smoke_test(sys.argv[1]))
    import pytest

    sys.exit(pytest.main([__file__, "-v", "-p", "no:cacheprovider"]))
