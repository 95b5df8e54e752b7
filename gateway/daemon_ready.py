"""Waiting for a daemon being started to say ``READY=1``, over a private notify socket.

``instance N start`` (:func:`gateway.daemon.start_daemon`) gives the daemon its own
``NOTIFY_SOCKET`` so that the daemon's usual systemd notification (:mod:`gateway.sd_notify`)
tells the starting command, too, when it is ready or why not (``STATUS=``). Kept apart from the
detaching and pid-file logic of ``gateway/daemon.py``: this is the socket, its credential check
and the wait for readiness or death.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time

from gateway.pidfile import process_alive, process_start_ticks
from gateway.sd_notify import STARTER_ENV


class ReadyListener:
    """A private NOTIFY_SOCKET for the daemon being started (abstract: nothing to clean up)."""

    def __init__(self) -> None:
        self.name = f"protocol-gateway-start-{os.getpid()}-{os.urandom(4).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.name)
        # Abstract names have no permissions: believe only datagrams from the daemon's pid.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.pid = 0

    def hand_over(self) -> None:
        """In the forked child: the daemon notifies us as it would notify systemd."""
        self.sock.close()
        os.environ["NOTIFY_SOCKET"] = "@" + self.name
        os.environ[STARTER_ENV] = "1"
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)

    def wait(self, pid: int, timeout: float) -> tuple[str, str]:
        """("ready" | "exited" | "timeout", last STATUS= text)."""
        status = ""
        deadline = time.monotonic() + timeout
        ticks = process_start_ticks(pid)
        self.pid = pid
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = -1
        try:
            while True:
                watched: list[int | socket.socket] = [self.sock]
                if pidfd >= 0:
                    watched.append(pidfd)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout", status
                readable, _, _ = select.select(watched, [], [], min(remaining, 0.5))
                ready, status = self._drain(status)
                if ready:
                    if not status and select.select([self.sock], [], [], 1.0)[0]:
                        _, status = self._drain(status)  # the summary follows READY=1
                    return "ready", status
                if pidfd in readable or not process_alive(pid, ticks):
                    return "exited", status
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _drain(self, status: str) -> tuple[bool, str]:
        """Read every queued datagram: (READY=1 seen, last STATUS= text)."""
        ready = False
        creds = struct.calcsize("3i")
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds),
                                                        socket.MSG_DONTWAIT)
            except BlockingIOError:
                return ready, status
            sender = next((struct.unpack("3i", raw[:creds])[0] for level, kind, raw in ancdata
                           if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)),
                          None)
            if sender != self.pid:
                continue
            for line in data.decode("utf-8", "replace").splitlines():
                ready |= line == "READY=1"
                if line.startswith("STATUS="):
                    status = line[len("STATUS="):]

    def close(self) -> None:
        self.sock.close()
