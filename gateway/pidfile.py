"""Pid files and "is that process still the one we recorded?".

A pid is only an identity together with the process's start time (pids are reused, and a
crashed instance leaves its pid file behind), so pid files (and the claim records of
:mod:`gateway.claims`) store both, and a record whose process is gone, a zombie, or a
different process is stale. Linux /proc is read directly: no psutil dependency for two fields.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: A pid file without a start time names our process only if its command line says so.
PROCESS_MARKERS = ("protocol_gateway", "protocol-gateway", "gateway.cli")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None when unreadable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace").strip()
    except OSError:
        return ""


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, started at ``start_ticks``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc at all: trust kill(0)
    state, started = stat
    if state in ("Z", "X"):
        return False  # exited; nobody reaped it yet
    return start_ticks is None or started == start_ticks


def is_gateway_process(pid: int, start_ticks: int | None,
                       markers: Sequence[str] = PROCESS_MARKERS) -> bool:
    """A live process that is the one recorded: same start time, or (without one) a
    command line that names the gateway."""
    if not process_alive(pid, start_ticks):
        return False
    if start_ticks is not None:
        return True
    cmdline = process_cmdline(pid)
    return any(marker in cmdline for marker in markers)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_ticks: int | None


class PidFile:
    """``<pid>\\n<start ticks>\\n``: the first line alone is what ``kill $(cat ...)`` needs."""

    def __init__(self, path: Path | str, markers: Sequence[str] = PROCESS_MARKERS) -> None:
        self.path = Path(path)
        self.markers = tuple(markers)

    def write(self, pid: int | None = None) -> PidRecord:
        pid = os.getpid() if pid is None else pid
        record = PidRecord(pid, process_start_ticks(pid))
        ticks = "" if record.start_ticks is None else f"{record.start_ticks}\n"
        write_atomic(self.path, f"{pid}\n{ticks}")
        return record

    def read(self) -> PidRecord | None:
        """The record, or None when there is no file or it is not a pid file."""
        try:
            lines = self.path.read_text().split()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            pid = int(lines[0])
            ticks = int(lines[1]) if len(lines) > 1 else None
        except (IndexError, ValueError):
            return None
        return PidRecord(pid, ticks) if pid > 0 else None

    def live_pid(self) -> int | None:
        record = self.read()
        if record is None or not is_gateway_process(record.pid, record.start_ticks,
                                                    self.markers):
            return None
        return record.pid

    def is_stale(self) -> bool:
        """The file exists but names no running instance (crash, reboot, reused pid)."""
        return self.path.exists() and self.live_pid() is None

    def remove(self, only_pid: int | None = None) -> bool:
        """Remove the file (only if it still names ``only_pid``, when given)."""
        if only_pid is not None:
            record = self.read()
            if record is None or record.pid != only_pid:
                return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            return True
        return False
