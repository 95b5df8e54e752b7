"""The transport contract: what a new transport kind has to write, on one screen.

A transport is protocol knowledge only. Everything else (the process it lives in, reconnect
backoff helpers, health counters, logs tagged with its name and PID, batching envelopes to the
bridge, the heartbeat the supervisor watches) is done around it by ``gateway/runner.py``.

Life: ``connect()`` once, then ``run()`` until it returns or is cancelled, then ``close()``.
``run()`` raising means "crashed": the process exits non-zero and the supervisor restarts it.
A transport that expects its peer to come and go (a serial device, a broker) reconnects
inside ``run()`` with :class:`gateway.backoff.Backoff` and does not crash for it.

Envelopes come in through ``receive()`` (outputs take readings; device transports take
commands); envelopes go out through ``self.ctx.emit(...)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from gateway.message import Envelope
from gateway.settings import GeneralSettings, TransportSettings

S = TypeVar("S", bound=TransportSettings)


@dataclass
class Counters:
    """Health figures a transport keeps; the runner ships them with every heartbeat."""

    envelopes_in: int = 0
    envelopes_out: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str = ""
    extra: dict[str, int | float | str] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message


class Emitter(Protocol):
    async def __call__(self, envelope: Envelope) -> None: ...


class BatchEmitter(Protocol):
    async def __call__(self, envelopes: list[Envelope]) -> None: ...


class TransportContext:
    """What the runner hands a transport: its name, logger, counters, paths and the bridge."""

    def __init__(
        self,
        name: str,
        general: GeneralSettings,
        emitter: Emitter,
        logger: logging.Logger,
        batch_emitter: BatchEmitter | None = None,
    ) -> None:
        self.name = name
        self.general = general
        self.log = logger
        self.counters = Counters()
        self._emitter = emitter
        self._batch_emitter = batch_emitter
        self._sequence = 0
        self.stopping = asyncio.Event()

    @property
    def state_dir(self) -> Path:
        """This transport's own writable directory (created on first use)."""
        path = Path(self.general.state_dir) / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def emit(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        target: str | tuple[str, ...] | None = None,
        info: dict[str, str] | None = None,
        timestamp: float | None = None,
    ) -> Envelope:
        """Send an envelope to ``target`` (default: this section's ``bridge =`` targets).

        May wait when the bridge is full (backpressure); never drops silently.
        """
        self._sequence += 1
        env = Envelope(
            source_transport=self.name,
            kind=kind,
            data=data,
            target_transport=target,
            source_transport_info=info or {},
            sequence=self._sequence,
        )
        if timestamp is not None:
            env.timestamp = timestamp
        await self._emitter(env)
        self.counters.envelopes_out += 1
        return env

    async def emit_many(
        self,
        kind: str,
        items: list[dict[str, Any]],
        *,
        target: str | tuple[str, ...] | None = None,
        info: dict[str, str] | None = None,
    ) -> None:
        """Send one envelope per item in one bridge operation (a scan of many devices)."""
        now = time.time()
        envelopes = []
        for data in items:
            self._sequence += 1
            envelopes.append(Envelope(self.name, kind, data, target, info or {}, now,
                                      self._sequence))
        if self._batch_emitter is not None:
            await self._batch_emitter(envelopes)
        else:
            for env in envelopes:
                await self._emitter(env)
        self.counters.envelopes_out += len(envelopes)


class Transport(ABC, Generic[S]):
    """Base class. Subclasses set ``kind`` and ``Settings`` and override what they need."""

    kind: ClassVar[str]
    Settings: ClassVar[type[TransportSettings]]
    #: Envelope kinds ``receive()`` wants; empty = this transport takes nothing in.
    accepts: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: S, ctx: TransportContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.log = ctx.log

    async def connect(self) -> None:
        """Open what must be open before ``run()``; failures here are retried by ``run()``."""

    async def run(self) -> None:
        """The transport's life. The default waits for shutdown (a pure output)."""
        await self.ctx.stopping.wait()

    async def receive(self, envelope: Envelope) -> None:
        """Handle one envelope routed here (only kinds in ``accepts`` arrive)."""

    async def receive_batch(self, envelopes: list[Envelope]) -> None:
        """Handle a batch; the bridge acknowledges the batch when this returns.

        An output that must lose nothing makes the batch durable (its store-and-forward
        buffer, one commit per batch) before returning: a batch not acknowledged when the
        process dies is delivered again to its successor (at-least-once).
        """
        for envelope in envelopes:
            await self.receive(envelope)

    async def close(self) -> None:
        """Flush and release. Outputs deliver (or persist) what they hold before returning."""
