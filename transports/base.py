"""The transport contract: what a new transport kind has to write, on one screen.

A transport is protocol knowledge only. Everything else (the process it lives in, reconnect
backoff helpers, health counters, logs tagged with its name and PID, batching envelopes to the
bridge, the heartbeat the supervisor watches) is done around it by ``gateway/runner.py``.

Life: ``connect()`` once, then ``run()`` until it returns or is cancelled, then ``close()``.
``connect()`` sets up what needs no peer (files, clients that reconnect by themselves); a
failure there is a crash, like one in ``run()``: the process exits non-zero and the supervisor
restarts it under its policy. A transport that expects its peer to come and go (a serial
device, a broker) reconnects inside ``run()`` with :class:`gateway.backoff.Backoff` and does
not crash for it.

Envelopes come in through ``receive()`` (outputs take readings; device transports take
commands); envelopes go out through ``self.ctx.emit(...)``. Commands are admitted by the
runner, not by the transport: a bounded window per target on the sending side and a bounded
queue on the receiving side, each answering ``busy`` instead of waiting (docs/architecture.md
"No deadlock"). ``ctx.command()`` sends one and never waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from gateway.message import COMMAND, EVENT, Envelope, ValueSpec, command_result, describe_event
from gateway.settings import GeneralSettings, TransportSettings

S = TypeVar("S", bound=TransportSettings)


@dataclass
class Counters:
    """Health figures a transport keeps; the runner ships them with every heartbeat.

    ``last_error_at`` and ``recovered_at`` are wall-clock epoch seconds, for display only
    (``status`` shows a LAST ERROR that clears once the thing that failed recovered); every
    interval the gateway acts on uses the monotonic clock instead.
    """

    envelopes_in: int = 0
    envelopes_out: int = 0
    dropped: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    recovered_at: float = 0.0
    extra: dict[str, int | float | str] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        self.last_error_at = time.time()

    def recovered(self) -> None:
        """The failure behind ``last_error`` is over (one recovery log was written)."""
        if self.last_error_at and self.recovered_at < self.last_error_at:
            self.recovered_at = time.time()

    def incr(self, name: str, n: int = 1) -> None:
        """Count ``n`` more of ``name`` in ``extra`` (created at 0 on first use)."""
        self.extra[name] = int(self.extra.get(name, 0)) + n


class Emitter(Protocol):
    async def __call__(self, envelope: Envelope) -> None: ...


class BatchEmitter(Protocol):
    """Takes envelopes as rows: (source, kind, data, target, info, timestamp, sequence)."""

    async def __call__(self, rows: list[tuple[Any, ...]]) -> None: ...


class TransportContext:
    """What the runner hands a transport: its name, logger, counters, paths and the bridge."""

    def __init__(
        self,
        name: str,
        general: GeneralSettings,
        emitter: Emitter,
        logger: logging.Logger,
        batch_emitter: BatchEmitter | None = None,
        *,
        commander: Callable[[Envelope], None] | None = None,
    ) -> None:
        self.name = name
        self.general = general
        self.log = logger
        self.counters = Counters()
        self._emitter = emitter
        self._batch_emitter = batch_emitter
        self._commander = commander
        self._pending: set[asyncio.Task[None]] = set()
        self._sequence = 0
        self.stopping = asyncio.Event()

    def envelope(self, kind: str, data: dict[str, Any], target: str | tuple[str, ...] | None
                 = None, info: dict[str, str] | None = None) -> Envelope:
        """A new envelope from this transport, with the next sequence number."""
        self._sequence += 1
        return Envelope(self.name, kind, data, target, info or {}, time.time(), self._sequence)

    def command(self, target: str, data: dict[str, Any],
                info: dict[str, str] | None = None) -> Envelope:
        """Send a command to ``target`` without waiting; its result comes back as an event.

        When ``target`` already has ``command_window`` commands of ours unanswered, the runner
        answers this one ``busy`` at once (a ``command_result`` event delivered to our own
        ``receive``) instead of queueing it: a flood of commands cannot fill the bridge.
        """
        env = self.envelope(COMMAND, data, target, info)
        if self._commander is None:  # no runner (a test harness): hand it to the emitter
            task = asyncio.get_running_loop().create_task(self._emitter(env))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:
            self._commander(env)
        self.counters.envelopes_out += 1
        return env

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
        Commands never wait: they go the way of :meth:`command`.
        """
        env = self.envelope(kind, data, target, info)
        if timestamp is not None:
            env.timestamp = timestamp
        if kind == COMMAND and self._commander is not None:
            self._commander(env)
            self.counters.envelopes_out += 1
            return env
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
        """Send one envelope per item in one bridge operation (a scan of many devices).

        Built as the tuples that travel (gateway/channel.py ``row``), not as envelope objects:
        one construction per envelope on this side of the bridge.
        """
        now = time.time()
        first = self._sequence + 1
        self._sequence += len(items)
        src, info = self.name, info or {}
        rows = [(src, kind, data, target, info, now, seq)
                for seq, data in enumerate(items, first)]
        if self._batch_emitter is not None:
            await self._batch_emitter(rows)
        else:
            for item in rows:
                await self._emitter(Envelope(*item))
        self.counters.envelopes_out += len(rows)


class Transport(ABC, Generic[S]):
    """Base class. Subclasses set ``kind`` and ``Settings`` and override what they need."""

    kind: ClassVar[str]
    Settings: ClassVar[type[TransportSettings]]
    #: Envelope kinds ``receive()`` wants; empty = this transport takes nothing in.
    accepts: ClassVar[frozenset[str]] = frozenset()
    #: True for an output that stores every kind it accepts as data (commands included):
    #: its commands go through ``receive_batch`` with the rest, not the command queue.
    records_commands: ClassVar[bool] = False

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

    def describe(self, device: str = "") -> list[tuple[dict[str, str], list[ValueSpec]]] | None:
        """What this transport's devices report: ``(source_transport_info, specs)`` per device.

        The runner answers a ``describe`` command with one ``describe`` event per device and a
        ``command_result``; None (the default) hands the command to ``receive`` instead.
        ``device``: the command's ``device`` ("" when it names none); a transport of several
        devices answers for that one, or raises :class:`UnknownDevice` saying which it has.
        """
        return None

    async def close(self) -> None:
        """Flush and release. Outputs deliver (or persist) what they hold before returning."""


class UnknownDevice(Exception):
    """A command names a device this transport does not have (the message says which it has)."""


def describe_answer(transport: Transport[Any], command: Envelope
                    ) -> list[tuple[str, dict[str, Any], dict[str, str]]] | None:
    """What answers a ``describe`` command, from ``transport.describe()``: one ``describe``
    event per device, then the ``command_result``, as (kind, data, info); None when the
    transport does not describe itself (the command goes to its ``receive``)."""
    try:
        devices = transport.describe(str(command.data.get("device", "") or ""))
    except UnknownDevice as exc:
        transport.ctx.counters.error(f"command rejected: {exc}")
        return [(EVENT, command_result(command.data, False, "rejected", str(exc)), {})]
    if devices is None:
        return None
    out = [(EVENT, describe_event(specs), dict(info)) for info, specs in devices]
    last = dict(devices[-1][0]) if devices else {}
    out.append((EVENT, command_result(command.data, True, "ok"), last))
    return out
