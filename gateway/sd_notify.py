"""systemd's notify protocol (``Type=notify``) in a few lines, without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) and, with
``WatchdogSec=``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``. A message is one datagram of
``KEY=value`` lines. We send ``READY=1`` once every transport has started, ``STATUS=`` with a
one-line summary for ``systemctl status``, ``WATCHDOG=1`` at half the watchdog period while the
supervisor loop is healthy, and ``STOPPING=1`` when the ordered shutdown begins.

A notification is advisory: a failed send must never take the gateway down, so every failure
is swallowed and logged once (and its recovery once). Without ``NOTIFY_SOCKET`` every method is
a no-op, so callers don't need to ask whether they run under systemd.

Only the main PID may notify by default (``NotifyAccess=main``): call these from the
supervisor, not from transport processes.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("gateway.sd_notify")

#: Set (with NOTIFY_SOCKET) by ``instance N start`` for the daemon it launches.
STARTER_ENV = "PGW_NOTIFY_STARTER"


def socket_address(value: str) -> str | None:
    """``NOTIFY_SOCKET`` -> an address for ``sendto``; None for what we can't reach.

    A leading ``@`` means Linux's abstract namespace (the name starts with a NUL byte).
    ``vsock:`` addresses (VMs) are not supported.
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify messages to one socket; inert when ``address`` is None."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None,
                 *, quiet: bool = False) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._failing = False
        self._quiet = quiet

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is ours only when ``WATCHDOG_PID`` is unset or names this process (it is
        inherited by children, which must not ping on the supervisor's behalf).
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw)
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address; systemd notifications "
                        "are off", raw)
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", "") or 0) or None
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not a number; watchdog pings are off",
                        env.get("WATCHDOG_USEC"))
        watchdog_pid = env.get("WATCHDOG_PID", "")
        if usec and watchdog_pid:
            try:
                if int(watchdog_pid) != os.getpid():
                    usec = None
            except ValueError:
                usec = None
        # ``instance N start`` listens only until the daemon is ready, then goes away: the
        # failures that follow are expected, not worth a warning in the daemon's log.
        return cls(address, usec, quiet=bool(env.get(STARTER_ENV)))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half the period systemd allows), or None."""
        if not self.enabled or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status_field(status))

    def status(self, text: str) -> bool:
        return self.notify(*self._status_field(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *self._status_field(status))

    def notify(self, *fields: str) -> bool:
        """Send one datagram of ``fields``; True when it was delivered to the socket."""
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                if self._quiet:
                    return False
                shown = self._address.replace("\0", "@", 1)
                log.warning("cannot notify systemd at %s: %s (further failures not logged)",
                            shown, exc)
            return False
        if self._failing:
            self._failing = False
            if not self._quiet:
                log.info("systemd notifications delivered again")
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @staticmethod
    def _status_field(text: str | None) -> tuple[str, ...]:
        """STATUS= is one line: newlines would start new (bogus) fields."""
        if text is None:
            return ()
        return ("STATUS=" + text.replace("\r", " ").replace("\n", " ").strip(),)
