"""Logging with the transport name and PID on every line: ``[transport.0 pid=1234]``.

Each process calls :func:`setup` once with its own name; children under forkserver/spawn start
with a fresh logging module, so nothing is inherited by accident.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s [%(transport)s pid=%(process)d] %(name)s: %(message)s"


class _TransportTag(logging.Filter):
    def __init__(self, transport: str) -> None:
        super().__init__()
        self.transport = transport

    def filter(self, record: logging.LogRecord) -> bool:
        record.transport = self.transport
        return True


#: loggers of libraries: their records carry no traceback below DEBUG (see _LibraryTracebacks)
LIBRARIES = ("asyncio", "pymodbus", "aiohttp", "websockets", "zeroconf", "paho",
             "influxdb_client", "urllib3", "concurrent")
#: untrusted text (a library's message quoting a peer's bytes) is cut to this many characters
MAX_LIBRARY_MESSAGE = 300


class _LibraryTracebacks(logging.Filter):
    """A library's record becomes one line: its message (shortened) and the exception's type
    and text, no traceback. The failure it reports reaches the gateway's own code anyway, which
    says what it means; the traceback helps only a developer, who runs at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in LIBRARIES:
            return True
        if logging.getLogger().level <= logging.DEBUG:
            return True
        text = record.getMessage().splitlines()[0] if record.getMessage() else ""
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = f"{text}: {type(exc).__name__}: {exc}"
        if len(text) > MAX_LIBRARY_MESSAGE:
            text = text[:MAX_LIBRARY_MESSAGE] + " ..."
        record.msg, record.args = text, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def setup(transport: str, level: str = "INFO", log_file: str = "") -> logging.Logger:
    """Configure the root logger for this process; returns the logger named ``transport``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    tag = _TransportTag(transport)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(tag)
        handler.addFilter(_LibraryTracebacks())
        root.addHandler(handler)
    root.setLevel(level)
    # Libraries are chatty at INFO on every reconnect; their failures reach us anyway.
    for noisy in ("aiohttp.access", "zeroconf", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pymodbus logs each refused or missing reply as an ERROR with a hex dump; the link
    # (transports/modbus/link.py) turns every one into a typed failure its owner logs once
    logging.getLogger("pymodbus").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)
    return logging.getLogger(transport)
