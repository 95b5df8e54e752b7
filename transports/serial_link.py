"""A pyserial port as an asyncio byte link, for any transport on a serial device, PTY or socket.

pyserial is blocking, so a small thread reads and hands bytes (and the loss of the link) to the
event loop; writes go through a one-thread executor, which also opens the port so that a slow
open never blocks the loop. ``serial_for_url`` gives serial devices, PTYs and
``socket://host:port`` with one code path. The link knows nothing of framing: the transport
feeds what arrives to its sans-I/O parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import serial

from transports.device import PeerUnavailable

#: What :meth:`SerialLink.open` raises for a port that is missing, busy or misnamed.
OPEN_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError, ValueError)


class LinkDown(PeerUnavailable):
    """The port closed or the peer stopped answering: reconnect, don't crash."""


class SerialLink:
    """A pyserial port read by a thread; bytes and loss are handed to the event loop.

    ``name`` prefixes the reader and writer threads' names (``<name>-read``, ``<name>-write``)
    so that a thread dump tells the transports apart.
    """

    def __init__(self, port: str, baudrate: int, name: str = "serial") -> None:
        self.port = port
        self.baudrate = baudrate
        self.name = name
        self._serial: Any = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-write")

    def _open_blocking(self) -> None:
        exclusive = None if "://" in self.port else True
        self._serial = serial.serial_for_url(
            self.port, baudrate=self.baudrate, timeout=0.1, write_timeout=2, exclusive=exclusive
        )
        with contextlib.suppress(serial.SerialException, OSError, NotImplementedError):
            self._serial.reset_input_buffer()  # what a PTY held for nobody is stale

    async def open(self, on_data: Callable[[bytes], None], on_lost: Callable[[str], None]) -> None:
        """Open the port and start reading; ``on_data`` and ``on_lost`` run on the loop.

        Raises one of :data:`OPEN_ERRORS`; the caller still calls :meth:`close` then."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open_blocking)

        def reader() -> None:
            while not self._closed.is_set():
                try:
                    data = self._serial.read(max(1, self._serial.in_waiting))
                except Exception as exc:  # noqa: BLE001 - any read failure means the link is gone
                    if not self._closed.is_set():
                        loop.call_soon_threadsafe(on_lost, f"read failed: {exc}")
                    return
                if data:
                    loop.call_soon_threadsafe(on_data, data)

        self._thread = threading.Thread(target=reader, name=f"{self.name}-read", daemon=True)
        self._thread.start()

    async def write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._serial.write, data)
        except (serial.SerialException, OSError, AttributeError) as exc:
            raise LinkDown(f"write failed: {exc}") from exc

    async def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2)
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        self._writer.shutdown(wait=False)
