"""Background instances without systemd: detach with python-daemon, one pid file each.

Why the order matters (SUPERVISION.md): ``DaemonContext.open()`` closes every descriptor, so
``run()`` (which creates the supervisor's pipes, queues and forkserver) is only called inside
the daemon. Under systemd python-daemon must not be used at all: it would double-fork and the
main PID that ``Type=notify`` expects would vanish; :func:`start_daemon` then runs in the
foreground instead.

``start`` reports the truth: the command forks, the fork detaches, and the daemon writes its
pid file and then says "ok <pid>" down a pipe; the command waits for that line, so "started"
means the pid file exists. A start lock makes two simultaneous starts of one instance safe.

Exit codes: start 0 started, 1 refused (already running) or failed to detach; stop 0 stopped,
1 not running, 2 would not die; status (in :mod:`gateway.instance_cli`) 0 running, 3 not.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn, TextIO

from gateway.daemon_ready import ReadyListener
from gateway.instance import InstancePaths
from gateway.pidfile import PidFile, process_alive, process_start_ticks

#: Set inside a daemon to its log file: stdout/stderr already go there, so the logging setup
#: should not add a second handler writing the same file.
DAEMON_LOG_ENV = "PGW_DAEMON_LOG"
UMASK = 0o027


def service_manager_reason() -> str | None:
    """Why not to daemonize here, or None: systemd (or any init) already supervises us."""
    if os.environ.get("INVOCATION_ID"):
        return "started by systemd (INVOCATION_ID is set)"
    if os.getppid() == 1:
        return "started by init (parent pid 1)"
    return None


def daemon_signal_map() -> dict[int, object]:
    """python-daemon's defaults minus its SIGTERM -> SystemExit: the supervisor installs its
    own handler for an ordered shutdown (until then SIGTERM simply ends the process)."""
    return {
        signal.SIGTSTP: None,
        signal.SIGTTIN: None,
        signal.SIGTTOU: None,
        signal.SIGTERM: signal.SIG_DFL,
    }


@contextlib.contextmanager
def _start_lock(paths: InstancePaths) -> Iterator[None]:
    paths.pid_file.parent.mkdir(parents=True, exist_ok=True)
    lock = paths.pid_file.with_name(paths.pid_file.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _refuse_if_running(paths: InstancePaths) -> bool:
    """True (after saying so) when a live instance owns the pid file; clears a stale one."""
    pid_file = PidFile(paths.pid_file)
    live = pid_file.live_pid()
    n = paths.instance
    if live is not None:
        print(f"instance {n} is already running (pid {live}, pid file {paths.pid_file}); "
              f"stop it first with: instance {n} stop", file=sys.stderr)
        return True
    old = pid_file.read()
    if pid_file.path.exists():
        what = f"pid {old.pid} is not running" if old else "it does not hold a pid"
        print(f"instance {n}: replacing stale pid file {paths.pid_file} ({what}: the "
              f"previous run crashed or was killed)", file=sys.stderr)
        pid_file.remove()
    return False


def run_foreground(paths: InstancePaths, run: Callable[[], int]) -> int:
    """Run in this process with the same pid-file guard (systemd, or ``--foreground``)."""
    pid_file = PidFile(paths.pid_file)
    with _start_lock(paths):
        if _refuse_if_running(paths):
            return 1
        pid_file.write()
    try:
        return run()
    finally:
        pid_file.remove(only_pid=os.getpid())


def start_daemon(paths: InstancePaths, run: Callable[[], int], *,
                 ready_timeout: float = 0.0) -> int:
    """Detach, write the pid file, call ``run()`` in the daemon; the caller gets 0 or 1.

    With ``ready_timeout`` > 0 the caller also waits for the daemon's ``READY=1`` (the same
    notification systemd gets, sent to a socket of ours) or its death during start-up, so
    that "started" means running and "failed" shows the log's last lines.
    """
    reason = service_manager_reason()
    if reason:
        print(f"instance {paths.instance}: {reason}: not detaching (python-daemon is not "
              f"used under a service manager), running in the foreground", file=sys.stderr)
        return run_foreground(paths, run)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    paths.log_file.parent.mkdir(parents=True, exist_ok=True)
    listener = ReadyListener() if ready_timeout > 0 else None
    try:
        with _start_lock(paths):
            if _refuse_if_running(paths):
                return 1
            log = open(paths.log_file, "a", buffering=1, encoding="utf-8")
            read_end, write_end = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            child = os.fork()
            if child == 0:
                os.close(read_end)
                if listener is not None:
                    listener.hand_over()
                _daemon_child(paths, run, log, write_end)
            os.close(write_end)
            log.close()
            os.waitpid(child, 0)  # it exits as soon as it has forked the daemon
            report = _read_all(read_end)
        n = paths.instance
        if not report.startswith("ok "):
            detail = report.removeprefix("error ").strip() or "it exited at once"
            print(f"instance {n} did not start: {detail}; see {paths.log_file}",
                  file=sys.stderr)
            return 1
        pid = int(report.split()[1])
        if listener is None:
            print(f"instance {n} started (pid {pid}); log: {paths.log_file}")
            return 0
        outcome, status = listener.wait(pid, ready_timeout)
    finally:
        if listener is not None:
            listener.close()
    shown = f": {status}" if status else ""
    if outcome == "ready":
        print(f"instance {n} started (pid {pid}) and ready{shown}; log: {paths.log_file}")
        return 0
    if outcome == "exited":
        print(f"instance {n} (pid {pid}) exited during start-up{shown}; the end of "
              f"{paths.log_file}:", file=sys.stderr)
        for line in _tail(paths.log_file, 15):
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"instance {n} started (pid {pid}) but is not ready after {ready_timeout:g} s"
          f"{shown}; see {paths.log_file}", file=sys.stderr)
    return 0


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _read_all(fd: int) -> str:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _daemon_child(paths: InstancePaths, run: Callable[[], int], log: TextIO,
                  report: int) -> NoReturn:
    """The forked child: detach, then be the daemon. Never returns into the caller's stack."""
    import daemon  # python-daemon; imported here so that systemd runs never load it

    try:
        context = daemon.DaemonContext(
            working_directory=os.getcwd(),
            umask=UMASK,
            stdout=log,
            stderr=log,
            files_preserve=[report],
            signal_map=daemon_signal_map(),
            detach_process=True,
        )
        context.open()  # forks twice: from here on we are the daemon
    except Exception as exc:  # noqa: BLE001 - told to the waiting command, which reports it
        with contextlib.suppress(OSError):
            os.write(report, f"error cannot detach: {exc}\n".encode())
        os._exit(1)
    code = 1
    pid_file = PidFile(paths.pid_file)
    try:
        try:
            pid_file.write()
        except OSError as exc:
            os.write(report, f"error cannot write pid file {paths.pid_file}: {exc}\n".encode())
            raise
        os.environ[DAEMON_LOG_ENV] = str(paths.log_file)
        os.write(report, f"ok {os.getpid()}\n".encode())
        os.close(report)
        report = -1
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} daemon: instance {paths.instance} "
              f"detached, pid {os.getpid()}", flush=True)
        code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the daemon's last word goes to its log
        traceback.print_exc()
        code = 1
    finally:
        if report >= 0:
            with contextlib.suppress(OSError):
                os.close(report)
        pid_file.remove(only_pid=os.getpid())
        with contextlib.suppress(Exception):
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} daemon: instance {paths.instance} "
                  f"exits with code {code}", flush=True)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def wait_gone(pid: int, start_ticks: int | None, timeout: float) -> bool:
    """Wait (without polling when the kernel offers a pidfd) until ``pid`` has exited."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        try:
            if process_alive(pid, start_ticks):  # still the same process after opening
                select.select([fd], [], [], max(0.0, timeout))
        finally:
            os.close(fd)
        return not process_alive(pid, start_ticks)
    while process_alive(pid, start_ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop_instance(paths: InstancePaths, timeout: float = 30.0) -> int:
    """SIGTERM, wait for the ordered shutdown, SIGKILL its process group after ``timeout``."""
    n = paths.instance
    pid_file = PidFile(paths.pid_file)
    record = pid_file.read()
    pid = pid_file.live_pid()
    if pid is None or record is None:
        if pid_file.path.exists():
            pid_file.remove()
            print(f"instance {n} is not running (removed its stale pid file)")
        else:
            print(f"instance {n} is not running")
        return 1
    ticks = record.start_ticks if record.start_ticks is not None else process_start_ticks(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.remove(only_pid=pid)
        print(f"instance {n} is not running")
        return 1
    unit = systemd_unit_of(pid)
    if unit and unit.startswith("protocol-gateway"):
        print(f"instance {n} is systemd unit {unit}; 'systemctl stop {unit}' is the usual way "
              f"(stopping it anyway; systemd will not restart it)", file=sys.stderr)
    print(f"instance {n}: stopping pid {pid} ...", flush=True)
    if not wait_gone(pid, ticks, timeout):
        print(f"instance {n} did not stop within {timeout:g} s; killing it", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # A daemon has a session (and group) of its own, holding it and its transport
            # processes: kill them all, as systemd's KillMode=mixed does after its timeout.
            group = os.getpgid(pid)
            if os.getsid(pid) == group and group != os.getpgid(0):
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        if not wait_gone(pid, ticks, 10.0):
            print(f"instance {n}: pid {pid} survived SIGKILL", file=sys.stderr)
            return 2
    pid_file.remove(only_pid=pid)
    print(f"instance {n} stopped")
    return 0


def systemd_unit_of(pid: int) -> str | None:
    """The ``.service`` unit a process runs in (from its cgroup), or None."""
    try:
        return unit_from_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None


def unit_from_cgroup(text: str) -> str | None:
    """``0::/system.slice/protocol-gateway@2.service`` -> ``protocol-gateway@2.service``."""
    for line in text.splitlines():
        for part in reversed(line.rpartition(":")[2].split("/")):
            if part.endswith(".service"):
                return part
    return None


def _started_at(start_ticks: int | None) -> float | None:
    """Wall time the process started: boot time + its start ticks."""
    if start_ticks is None:
        return None
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return int(line.split()[1]) + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    return None


def instance_status(paths: InstancePaths) -> tuple[bool, int | None, str]:
    """(running, pid, one line for a person)."""
    n = paths.instance
    pid_file = PidFile(paths.pid_file)
    record = pid_file.read()
    pid = pid_file.live_pid()
    if pid is not None and record is not None:
        since = _started_at(record.start_ticks)
        when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" \
            if since else ""
        unit = systemd_unit_of(pid)
        where = (f"systemd unit {unit}, journalctl -u {unit}"
                 if unit and unit.startswith("protocol-gateway") else f"log: {paths.log_file}")
        return True, pid, f"instance {n} is running (pid {pid}{when}); {where}"
    if pid_file.path.exists():
        gone = f"pid {record.pid}" if record else "no valid pid"
        return False, None, (f"instance {n} is not running (stale pid file {paths.pid_file} "
                             f"names {gone}: it crashed or was killed)")
    return False, None, f"instance {n} is not running"
