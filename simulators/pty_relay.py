"""A serial line for a simulator on a PTY: two PTY pairs joined by a relay thread.

The simulator's serial server opens one slave, the gateway opens the other through a symlink
(a PTY has one openable end, and both sides need one). The relay copies bytes between the two
masters in a thread: a port being closed in the event loop may wait for its output to drain,
which needs the relay to keep going.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from pathlib import Path


class PtyRelay:
    """Open with :meth:`open`, serve on :attr:`server_pty`, release with :meth:`close`."""

    def __init__(self, link: str) -> None:
        self.link = link
        self.server_pty = ""
        self._pty: tuple[int, int, int, int] | None = None
        self._stop = (-1, -1)
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Create both PTY pairs, point ``link`` at the gateway's end, start the relay."""
        a_master, a_slave = os.openpty()
        b_master, b_slave = os.openpty()
        for fd in (a_master, a_slave, b_master, b_slave):
            tty.setraw(fd)
        self._pty = (a_master, a_slave, b_master, b_slave)
        self.server_pty = os.ttyname(a_slave)
        link = Path(self.link)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.ttyname(b_slave))
        self._stop = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="pty-relay", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self._pty is not None
        a_master, _, b_master, _ = self._pty
        peer = {a_master: b_master, b_master: a_master}
        wake = self._stop[0]
        while True:
            ready, _, _ = select.select([a_master, b_master, wake], [], [])
            if wake in ready:
                return
            for src in ready:
                with contextlib.suppress(OSError):
                    data = os.read(src, 4096)
                    if data:
                        os.write(peer[src], data)

    def close(self) -> None:
        """Stop the relay, close every descriptor, remove the link."""
        if self._pty is None:
            return
        os.write(self._stop[1], b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for fd in (*self._pty, *self._stop):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pty = None
        with contextlib.suppress(OSError):
            Path(self.link).unlink()
