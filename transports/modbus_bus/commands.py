"""Commands for the devices of a bus: which device a command is for, and writes served
between two requests of the scans (a write never waits for another device's whole scan).

:class:`BusCommands` owns the queue of accepted writes; the bus (:class:`BusRequests`, the
transport) owns the link and the request path, and serves the queue between two requests.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.message import EVENT, Envelope, command_result
from protocols.read_plan import ReadRequest
from protocols.registers import RegisterValue, Value, WriteRejected
from transports.base import TransportContext
from transports.modbus.device import WriteOp
from transports.modbus.link import NoReply, RequestFailed
from transports.modbus_bus.member import Member

#: accepted writes waiting for the line; more are answered "busy" (a bounded queue)
MAX_QUEUED = 32


class BusRequests(Protocol):
    """What serving a command needs from the bus: its request path."""

    @property
    def connected(self) -> bool: ...

    def count(self, key: str, n: int = 1) -> None: ...

    async def read_words(self, m: Member, request: ReadRequest) -> list[int] | list[bool]: ...

    async def write_words(self, m: Member, spec: RegisterValue,
                          words: list[int] | list[bool]) -> None: ...

    async def failed(self, m: Member, exc: RequestFailed, what: str) -> None: ...


@dataclass(frozen=True)
class _Queued:
    """An accepted write: who asked, the command, its device and the checked operations."""

    reply_to: str
    data: dict[str, Any]
    m: Member
    ops: list[WriteOp]


class BusCommands:
    def __init__(self, bus: BusRequests, members: dict[str, Member], ctx: TransportContext,
                 log: logging.Logger, where: str) -> None:
        self.bus = bus
        self.members = members
        self.ctx = ctx
        self.log = log
        self.where = where
        self.queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=MAX_QUEUED)
        #: set when a write is queued, so that an idle bus serves it at once
        self.wake = asyncio.Event()

    @property
    def pending(self) -> bool:
        return not self.queue.empty()

    def select(self, device: str) -> Member | str:
        """The member ``device`` names (its name, unit or serial), or why none does."""
        wanted = device.lower()
        for m in self.members.values():
            if wanted in m.names(self.ctx.name):
                return m
        only = next(iter(self.members.values()))
        if only.sole:
            return f"no device {device!r} here (this is unit {only.unit}, {self.ctx.name})"
        return f"no device {device!r} on this bus (devices: {', '.join(self.members)})"

    def _select(self, data: dict[str, Any]) -> Member | str:
        """The member a command is for, or why none."""
        if "device" not in data:
            if len(self.members) == 1:
                return next(iter(self.members.values()))
            return f"this bus has devices {', '.join(self.members)}: name one with 'device'"
        return self.select(str(data["device"]))

    async def receive(self, envelope: Envelope) -> None:
        data = envelope.data if isinstance(envelope.data, dict) else {}
        reply_to = envelope.source_transport
        command = data.get("command")
        chosen = self._select(data)
        if isinstance(chosen, str):
            self.ctx.counters.error(f"command rejected: {chosen}")
            await self._result(reply_to, data, None, "rejected", chosen)
        elif command == "write":
            await self._accept_write(reply_to, data, chosen)
        else:
            self.ctx.counters.error(f"unsupported command {command!r}")
            await self._result(reply_to, data, chosen, "unsupported",
                               f"unknown command {command!r}; known: write, describe")

    async def _accept_write(self, reply_to: str, data: dict[str, Any], m: Member) -> None:
        try:
            ops = m.device.check_write(data.get("values"))
        except WriteRejected as exc:
            self.bus.count("writes_rejected")
            self.ctx.counters.error(f"{m.name}: write rejected: {exc}")
            self.log.warning("%s: %s: write rejected: %s", self.where, m.name, exc)
            await self._result(reply_to, data, m, "rejected", str(exc))
            return
        try:
            self.queue.put_nowait(_Queued(reply_to, data, m, ops))
        except asyncio.QueueFull:
            self.ctx.counters.error(f"{m.name}: write refused: {MAX_QUEUED} writes waiting")
            await self._result(reply_to, data, m, "busy",
                               f"{MAX_QUEUED} writes are already waiting for the bus")
            return
        self.wake.set()

    async def _result(self, target: str, command: dict[str, Any], m: Member | None,
                      result: str, detail: str = "", **extra: Any) -> None:
        """Answer a command; ``result`` "ok" is success, any other word a failure."""
        info = m.info(self.ctx.name) if m is not None else {"transport_name": self.ctx.name}
        await self.ctx.emit(EVENT, command_result(command, result == "ok", result, detail,
                                                  **extra),
                            target=target, info=info)

    async def serve(self) -> None:
        """Queued writes, between two requests of the scans (they jump the queue)."""
        while not self.queue.empty():
            item = self.queue.get_nowait()
            reply_to, data, m = item.reply_to, item.data, item.m
            if not self.bus.connected:
                await self._result(reply_to, data, m, "error", "bus not connected")
                continue
            readback: dict[str, Value] = {}
            try:
                for op in item.ops:
                    current = 0
                    if op.needs_current:
                        words = await self.bus.read_words(m, m.device.single_read(op.spec))
                        current = int(words[0])
                    await self.bus.write_words(m, op.spec, op.words(current))
                    self.bus.count("writes")
                for op in item.ops:
                    if not op.spec.readable:  # write-only: nothing to read back
                        continue
                    request = m.device.single_read(op.spec)
                    readback.update(m.device.decode(request,
                                                    await self.bus.read_words(m, request)))
            except RequestFailed as exc:
                await self.bus.failed(m, exc, "write")
                result = "timeout" if isinstance(exc, NoReply) else "error"
                await self._result(reply_to, data, m, result, str(exc), values=readback)
                continue
            self.log.info("%s: %s: wrote %s", self.where, m.name, readback)
            await self._result(reply_to, data, m, "ok", values=readback)
