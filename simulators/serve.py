"""What every simulator's command line shares: logging, a "ready" line, life until a signal.

Tests and the demo start simulators as subprocesses and wait for the ready line (or the port);
SIGTERM or Ctrl-C stops them through their own ``stop()`` so PTY links and sockets are removed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s")


async def serve_until_signal(
    start: Callable[[], Awaitable[object]],
    stop: Callable[[], Awaitable[object]],
    ready: Callable[[], str],
) -> None:
    """``await start()``, print ``ready()``, wait for SIGTERM/SIGINT, then ``await stop()``."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await start()
    print(ready(), flush=True)
    try:
        await done.wait()
    finally:
        await stop()
