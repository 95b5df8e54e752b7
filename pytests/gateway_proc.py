"""Run a real gateway process for tests: write a config, start it, read its status API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pytests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc; no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, parents before their children (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cmdline(pid: int) -> str:
    """A process's command line, "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class GatewayProcess:
    """A gateway started as ``python protocol_gateway.py CONFIG`` in a temp directory."""

    def __init__(self, tmp: Path, sections: str, general: str = "", *,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.config = tmp / "gateway.ini"
        self.config.write_text(
            "[general]\n"
            f"http_port = {self.port}\nstate_dir = {tmp / 'state'}\n"
            "heartbeat_interval = 0.2\nrestart_backoff_initial = 0.2\n"
            "restart_backoff_max = 1\nshutdown_timeout = 10\n"
            f"{general}\n{sections}")
        self.log_path = tmp / "gateway.log"
        self._log = open(self.log_path, "w")
        # Each test's gateways register their claims in a run directory of their own.
        env = dict(os.environ, PYTHONUNBUFFERED="1", PGW_RUN_DIR=str(tmp / "run"))
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "protocol_gateway.py"), str(self.config), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def transports(self) -> dict[str, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/transports"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        return {t["name"]: t for t in body["transports"]}

    def try_transports(self) -> dict[str, dict[str, Any]] | None:
        try:
            return self.transports()
        except OSError:
            return None

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            table = self.try_transports()
            if table and table[name]["state"] == state and (
                    state != "running" or table[name]["pid"] or table[name]["pid"] is None):
                return table[name]
            return None

        return wait_for(ready, timeout)

    def wait_all_running(self, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        return wait_for(lambda: (t := self.try_transports()) and all(
            v["state"] == "running" for v in t.values()) and t, timeout)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    wait_for(lambda: not any(alive(p) for p in pids), timeout)


def now() -> float:
    return time.monotonic()
