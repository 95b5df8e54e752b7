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
        root.addHandler(handler)
    root.setLevel(level)
    # Libraries are chatty at INFO on every reconnect; their failures reach us anyway.
    for noisy in ("pymodbus", "aiohttp.access", "zeroconf", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return logging.getLogger(transport)
