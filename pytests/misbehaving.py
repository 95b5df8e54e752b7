"""Transports that crash or hang on purpose, for the supervisor tests (``PGW_PLUGINS``)."""

from __future__ import annotations

import asyncio
import time

from gateway.settings import TransportSettings
from transports import register
from transports.base import Transport


class MisbehaveSettings(TransportSettings):
    after: float = 0.3  # seconds of good behaviour first


@register
class Crashing(Transport[MisbehaveSettings]):
    """Emits one reading, then raises: a crash, as a bug would."""

    kind = "test_crashing"
    Settings = MisbehaveSettings

    async def run(self) -> None:
        await self.ctx.emit("reading", {"alive": 1})
        await asyncio.sleep(self.settings.after)
        raise RuntimeError("crashing on purpose")


@register
class Hanging(Transport[MisbehaveSettings]):
    """Blocks its own event loop: alive, but stuck (no heartbeat can run)."""

    kind = "test_hanging"
    Settings = MisbehaveSettings

    async def run(self) -> None:
        await asyncio.sleep(self.settings.after)
        time.sleep(3600)
