"""gateway/forkserver.py: children forked on request, their pipes, their exit status, and a
server that dies (killed by a real signal) replaced without the gateway noticing more than a
restart of its transports."""

from __future__ import annotations

import os
import signal
import sys
import time
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from gateway.forkserver import ForkServer, ForkServerError
from pytests.gateway_proc import GatewayProcess, alive, children_of, cmdline, descendants
from pytests.helpers import wait_for

TARGET = "pytests.test_forkserver:child"


def child(fds: list[int], what: str) -> None:
    """Runs in a forked child: answers on the pipe it was given, then ends as told."""
    out = Connection(fds[0], readable=False)
    out.send((what, os.getpid(), os.getppid()))
    if what == "exit3":
        sys.exit(3)
    if what == "raise":
        raise RuntimeError("a child's bug")
    if what == "sleep":
        time.sleep(60)


@pytest.fixture
def server():
    fs = ForkServer(["json"])
    yield fs
    fs.close()


def start(server: ForkServer, what: str) -> tuple[object, Connection]:
    r, w = Pipe(duplex=False)
    proc = server.start(TARGET, (what,), [w.fileno()])
    w.close()
    return proc, r


def test_a_child_gets_its_pipe_and_its_exit_code_reaches_us(server: ForkServer) -> None:
    for what, code in (("ok", 0), ("exit3", 3), ("raise", 1)):
        proc, r = start(server, what)
        assert r.poll(30), f"{what}: no word from the child"
        said, pid, ppid = r.recv()
        assert (said, pid, ppid) == (what, proc.pid, server.pid)
        proc.join(30)
        assert proc.exitcode == code, what


def test_a_child_killed_by_a_signal_reports_it(server: ForkServer) -> None:
    proc, r = start(server, "sleep")
    assert r.poll(30)
    proc.join(0.05)
    assert proc.exitcode is None  # still running
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(30)
    assert proc.exitcode == -signal.SIGTERM


def test_a_dead_server_is_an_error_and_its_children_report_killed(server: ForkServer) -> None:
    proc, r = start(server, "sleep")
    assert r.poll(30)
    os.kill(server.pid, signal.SIGKILL)
    server.process.wait(30)
    proc.join(30)  # EOF on its status pipe: the server can no longer tell
    assert proc.exitcode == -signal.SIGKILL
    wait_for(lambda: not alive(proc.pid), timeout=30)  # the kernel ended it with its server
    with pytest.raises(ForkServerError):
        start(server, "ok")


def descendants_of(pid: int) -> dict[int, str]:
    """pid -> command line of every process below ``pid``."""
    return {p: cmdline(p) for p in descendants(pid)[1:]}


def test_the_gateway_survives_its_fork_server_killed(tmp_path: Path) -> None:
    """kill -9 of the fork server takes its children with it (parent-death signal); the
    supervisor restarts them through a new server. No resource tracker runs at any time."""
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, "[clock]\ntransport = system\nread_interval = 0.5\n"
                        "bridge = out\n\n"
                        f"[out]\ntransport = jsonl_out\npath = {out}\n",
                        "restart_max_count = 50")
    try:
        table = gw.wait_all_running(timeout=60)
        first_pids = {n: t["pid"] for n, t in table.items()}
        procs = descendants_of(gw.pid)
        servers = [p for p in children_of(gw.pid) if "gateway.forkserver" in procs[p]]
        assert len(servers) == 1, procs
        assert not [c for c in procs.values() if "resource_tracker" in c], procs
        os.kill(servers[0], signal.SIGKILL)

        def back() -> bool:
            now = gw.try_transports() or {}
            return bool(now) and all(
                t["state"] == "running" and t["pid"] not in (None, first_pids[n])
                for n, t in now.items())

        wait_for(back, timeout=60)
        procs = descendants_of(gw.pid)
        new_servers = [p for p in children_of(gw.pid) if "gateway.forkserver" in procs[p]]
        assert len(new_servers) == 1 and new_servers[0] != servers[0], procs
        assert not [c for c in procs.values() if "resource_tracker" in c], procs
        wait_for(out.exists, timeout=30)
        seen = len(out.read_text().splitlines())
        wait_for(lambda: len(out.read_text().splitlines()) > seen, timeout=30)
        assert gw.proc.poll() is None
        assert gw.log_text().count("starting a new one") == 1
    finally:
        gw.stop()


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_start_methods_still_run_and_restart(tmp_path: Path,
                                                             method: str) -> None:
    """``start_method = spawn | fork`` bypass the fork server: multiprocessing's own, with
    the same restart on a kill -9."""
    out = tmp_path / "out.jsonl"
    gw = GatewayProcess(tmp_path, "[clock]\ntransport = system\nread_interval = 0.5\n"
                        "bridge = out\n\n"
                        f"[out]\ntransport = jsonl_out\npath = {out}\n",
                        f"start_method = {method}")
    try:
        table = gw.wait_all_running(timeout=60)
        procs = descendants_of(gw.pid)
        assert not [c for c in procs.values() if "gateway.forkserver" in c], procs
        first = table["clock"]["pid"]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: (t := gw.try_transports()) and t["clock"]["state"] == "running"
                 and t["clock"]["pid"] not in (None, first), timeout=60)
        wait_for(out.exists, timeout=30)
        seen = len(out.read_text().splitlines())
        wait_for(lambda: len(out.read_text().splitlines()) > seen, timeout=30)
    finally:
        assert gw.stop() == 0
