"""The gateway's fork server: one process imports what the configured transports need, once,
and forks every transport process from there.

Why our own and not multiprocessing's ``forkserver`` start method: that one also starts
multiprocessing's resource tracker, a third Python process (6 to 9 MB PSS here) that exists to
clean up named semaphores and shared memory after a crash. The gateway creates neither (its
pipes are plain descriptors), so on a 512 MB Pi that process is pure cost
(``python bench/footprint.py`` prints every process). What we need of a fork server is small:
fork a preloaded, single-threaded process on request, give the child its pipes, tell the
supervisor the child's pid and, later, its exit status. The preload is the same as before:
``gateway.runner``, the configured kinds' modules, then ``gateway.preloaded`` (their lazy
imports, ``gc.freeze()``): the children share all of it copy-on-write.

Wire (one ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair: message boundaries and descriptors kept):

- request: ``pickle((target, args))`` with the child's descriptors attached (SCM_RIGHTS);
  ``target`` is ``"module:function"``, called in the child as ``function(fds, *args)``;
- reply: the child's pid (8 bytes) with one descriptor, the read end of its status pipe;
- status pipe: 4 bytes when the child has exited, its code as multiprocessing reports one
  (``-N`` for signal N); EOF without them means the server died (its children with it: each
  sets ``PR_SET_PDEATHSIG`` first thing, and exits if the server was already gone), reported
  as ``-SIGKILL``.

The server ends when the supervisor's end of the socket closes, whatever killed it. It
ignores SIGINT (Ctrl-C in a terminal reaches the whole process group: the supervisor orders
the shutdown), as multiprocessing's does.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any

_PID = struct.Struct("q")
_STATUS = struct.Struct("i")
MAX_REQUEST = 1 << 20  # a transport's pickled settings are a few kB
MAX_FDS = 16
START_TIMEOUT = 30.0  # the server's imports: seconds before a request is answered


class ForkServerError(OSError):
    """The fork server is gone or answered nonsense: start a new one."""


class ForkedChild:
    """A child forked by the server, as the supervisor sees it (the part of
    ``multiprocessing.Process`` it uses: ``pid``, ``sentinel``, ``join``, ``exitcode``)."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self.sentinel = status_fd  # readable once it has exited
        self.exitcode: int | None = None

    def join(self, timeout: float | None = None) -> None:
        if self.exitcode is not None:
            return
        ready, _, _ = select.select([self.sentinel], [], [], timeout)
        if not ready:
            return
        data = b""
        try:
            data = os.read(self.sentinel, _STATUS.size)
        except OSError:
            pass
        self.exitcode = _STATUS.unpack(data)[0] if len(data) == _STATUS.size else \
            -signal.SIGKILL
        os.close(self.sentinel)
        self.sentinel = -1

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


class ForkServer:
    """The supervisor's handle on the server process: :meth:`start` forks one child."""

    def __init__(self, preload: Sequence[str]) -> None:
        self.preload = list(preload)
        self._lock = threading.Lock()  # one request and its reply at a time
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # the server learns where to import from and what over the socket: a short ``ps`` line
        command = ("import json, socket, sys; s = socket.socket(fileno=int(sys.argv[1])); "
                   "c = json.loads(s.recv(1 << 20)); sys.path[:] = c['path']; "
                   "from gateway.forkserver import serve; serve(s, c['preload'])")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-B", "-c", command, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        ours.sendall(json.dumps({"path": sys.path, "preload": self.preload}).encode())
        self.sock = ours
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, target: str, args: tuple[Any, ...], fds: Sequence[int]) -> ForkedChild:
        """Fork a child running ``target(fds, *args)``; raises :class:`ForkServerError`."""
        request = pickle.dumps((target, args), protocol=pickle.HIGHEST_PROTOCOL)
        if len(request) > MAX_REQUEST or len(fds) > MAX_FDS:
            raise ValueError("fork request too large")
        with self._lock:
            try:
                socket.send_fds(self.sock, [request], list(fds))
                self.sock.settimeout(START_TIMEOUT)
                reply, got, _flags, _addr = socket.recv_fds(self.sock, _PID.size, 1)
            except OSError as exc:
                raise ForkServerError(f"fork server pid {self.pid}: {exc}") from exc
            finally:
                self.sock.settimeout(None)
        if len(reply) != _PID.size or len(got) != 1:
            for fd in got:
                os.close(fd)
            raise ForkServerError(f"fork server pid {self.pid} is gone")
        return ForkedChild(_PID.unpack(reply)[0], got[0])

    def close(self, timeout: float = 5.0) -> None:
        """End the server (it exits on EOF) and reap it."""
        self.sock.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ------------------------------------------------------------------- the server process
def serve(sock: socket.socket, preload: list[str]) -> None:
    """The server's main loop (its own process, single-threaded)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in preload:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()  # again, if the preload did not: the children inherit a frozen heap
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up fd fires
    status: dict[int, int] = {}  # child pid -> write end of its status pipe
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 512)
            _reap(status)
        if sock in ready:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS)
            except OSError:
                data, fds = b"", []
            if not data:
                return  # the supervisor is gone (or closed us): so are we
            pid, status_r, status_w = _fork(data, fds, sock, (wake_r, wake_w), status)
            status[pid] = status_w
            try:
                socket.send_fds(sock, [_PID.pack(pid)], [status_r])
            finally:
                os.close(status_r)
            _reap(status)  # a child that died at once


def _die_with(server: int) -> None:
    """In a new child: the kernel kills it when the server exits (``PR_SET_PDEATHSIG``), and a
    server that exited before that was set (the race SUPERVISION.md names) ends it at once."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != server:
        os._exit(70)


def _reap(status: dict[int, int]) -> None:
    while status:
        try:
            pid, raw = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, _STATUS.pack(os.waitstatus_to_exitcode(raw)))
            except OSError:
                pass  # the supervisor no longer listens for this one
            os.close(fd)


def _fork(data: bytes, fds: list[int], sock: socket.socket, wake: tuple[int, int],
          status: dict[int, int]) -> tuple[int, int, int]:
    status_r, status_w = os.pipe()
    server = os.getpid()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid, status_r, status_w
    # the child: nothing of the server's may stay open or armed
    code = 1
    try:
        _die_with(server)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sock.close()
        for fd in (*wake, status_r, status_w, *status.values()):
            os.close(fd)
        target, args = pickle.loads(data)
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)(fds, *args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child's last words, then its exit code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
