"""Outputs with store-and-forward: the output says how to write a batch, this does the rest.

Here, beside the buffer and the runner, not in transports/: an output module holds only what
its sink needs (``pytests/test_transport_rules.py`` fails if one drives the buffer itself).

Why a base class and not a copy in each output: opening the buffer, accepting batches (on
disk before the bridge's acknowledgement), the delivery loop with its backoff and its one
failure/recovery log, waiting for the sink to be connected, draining on close: the same for
every output (MQTT, InfluxDB, the next one). An output gives:

- ``buffer_file``: the SQLite file's name in its state directory;
- ``sink_name()``: what the logs call the sink ("delivery to MQTT broker host:port");
- ``keep(envelopes)``: which envelopes of a batch to store (default: all);
- ``write(batch)``: deliver, raising :class:`~gateway.buffer.SinkUnavailable` (retried) or
  :class:`~gateway.buffer.Rejected` (dropped, counted);
- optionally ``open_sink()``/``close_sink()``, and ``sink_up()``/``sink_down()`` for a sink
  that connects by itself (nothing is tried, and so nothing logged, while it is down).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar, TypeVar

from gateway.buffer import BufferSettings, StoreAndForward
from gateway.message import Envelope
from transports.base import Transport, TransportContext

B = TypeVar("B", bound=BufferSettings)


class BufferedOutput(Transport[B]):
    buffer_file: ClassVar[str]
    #: False: a sink that connects by itself; delivery waits for ``sink_up()``.
    ready_at_start: ClassVar[bool] = True

    def __init__(self, settings: B, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self.buffer = StoreAndForward(ctx.state_dir / self.buffer_file, settings, ctx.log,
                                      ctx.counters, what=self.sink_name())
        self.sink_ready = asyncio.Event()
        if self.ready_at_start:
            self.sink_ready.set()

    def sink_name(self) -> str:
        return f"delivery from {self.ctx.name}"

    def keep(self, envelopes: Sequence[Envelope]) -> Sequence[Envelope]:
        return envelopes

    async def write(self, batch: Sequence[Envelope]) -> None:
        raise NotImplementedError

    async def open_sink(self) -> None:
        """Set up the client (it may connect later, by itself)."""

    async def close_sink(self) -> None:
        """Release the client, after the buffer had its chance to drain."""

    def sink_up(self) -> None:
        self.sink_ready.set()
        self.buffer.wake()

    def sink_down(self) -> None:
        self.sink_ready.clear()

    # -- the contract, done once ---------------------------------------------------------
    async def connect(self) -> None:
        self.buffer.open()
        await self.open_sink()

    async def run(self) -> None:
        await self.buffer.run(self, self.sink_ready)  # returns only by cancellation

    async def receive(self, envelope: Envelope) -> None:
        await self.receive_batch([envelope])

    async def receive_batch(self, envelopes: list[Envelope]) -> None:
        """On disk when this returns (with the default ``buffer_commit_interval = 0``)."""
        self.buffer.accept(self.keep(envelopes))

    async def close(self) -> None:
        await self.buffer.close(self, can_deliver=self.sink_ready.is_set())
        await self.close_sink()
