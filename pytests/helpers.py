"""Small helpers the test modules share: free ports, polling waits, a transport harness."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.message import Envelope
from gateway.settings import GeneralSettings
from transports.base import Transport, TransportContext, describe_answer


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        time.sleep(interval)


async def async_wait_for(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {condition}")
        await asyncio.sleep(interval)


class Harness:
    """Runs one transport in this process's event loop, capturing what it emits.

    For transport tests that don't need the supervisor: ``emitted`` is the list of envelopes
    it sent; ``send()`` delivers an envelope to its ``receive()``.
    """

    def __init__(
        self, cls: type[Transport], settings: Any, name: str, state_dir: Path | str
    ) -> None:
        self.emitted: list[Envelope] = []
        general = GeneralSettings(state_dir=str(state_dir))
        self.ctx = TransportContext(name, general, self._emit, logging.getLogger(name))
        self.transport = cls(settings, self.ctx)
        self._task: asyncio.Task[None] | None = None

    async def _emit(self, envelope: Envelope) -> None:
        self.emitted.append(envelope)

    async def start(self) -> None:
        async def life() -> None:
            await self.transport.connect()
            await self.transport.run()

        self._task = asyncio.create_task(life())

    async def send(self, envelope: Envelope) -> None:
        self.ctx.counters.envelopes_in += 1
        if envelope.kind == "command" and envelope.data.get("command") == "describe":
            answer = describe_answer(self.transport, envelope)  # as the runner answers it
            if answer is not None:
                for kind, data, info in answer:
                    await self.ctx.emit(kind, data, target=envelope.source_transport, info=info)
                return
        await self.transport.receive(envelope)

    async def stop(self) -> None:
        self.ctx.stopping.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        await self.transport.close()

    def of_kind(self, kind: str) -> list[Envelope]:
        return [e for e in self.emitted if e.kind == kind]

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()


Awaitable_ = Awaitable  # re-export for type hints in tests
