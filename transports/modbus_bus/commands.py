"""Commands for the devices of a bus: which device a command is for, and writes served
between two requests of the scans (a write never waits for another device's whole scan).

A mixin of :class:`transports.modbus_bus.transport.ModbusBusTransport`, apart so that each
file holds one concern; it uses the transport's members, link and request path, declared
below for the reader (and the type checker).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.message import EVENT, Envelope, command_result, describe_event
from protocols.read_plan import ReadRequest
from protocols.registers import RegisterValue, Value, WriteRejected
from transports.base import TransportContext
from transports.modbus.device import WriteOp
from transports.modbus.link import ModbusLink, NoReply, RequestFailed
from transports.modbus_bus.member import Member

Queued = tuple[str, dict[str, Any], Member, list[WriteOp]]


class BusCommands:
    members: dict[str, Member]
    ctx: TransportContext
    log: logging.Logger
    link: ModbusLink | None
    _commands: asyncio.Queue[Queued]
    _wake: asyncio.Event
    _where: str

    def _count(self, key: str, n: int = 1) -> None:
        raise NotImplementedError

    async def _read_words(self, m: Member, request: ReadRequest) -> list[int] | list[bool]:
        raise NotImplementedError

    async def _write_words(self, m: Member, spec: RegisterValue,
                           words: list[int] | list[bool]) -> None:
        raise NotImplementedError

    async def _failed(self, m: Member, exc: RequestFailed, what: str) -> None:
        raise NotImplementedError

    def _select(self, data: dict[str, Any]) -> list[Member] | str:
        """The members a command is for, or why none."""
        if "device" not in data:
            if len(self.members) == 1:
                return list(self.members.values())
            return list(self.members.values()) if data.get("command") == "describe" else (
                f"this bus has devices {', '.join(self.members)}: name one with 'device'")
        wanted = str(data["device"]).lower()
        for m in self.members.values():
            if wanted in m.names(self.ctx.name):
                return [m]
        return f"no device {data['device']!r} on this bus (devices: {', '.join(self.members)})"

    async def receive(self, envelope: Envelope) -> None:
        data = envelope.data if isinstance(envelope.data, dict) else {}
        reply_to = envelope.source_transport
        command = data.get("command")
        chosen = self._select(data)
        if isinstance(chosen, str):
            self.ctx.counters.error(f"command rejected: {chosen}")
            await self._result(reply_to, data, None, "rejected", chosen)
        elif command == "describe":
            for m in chosen:
                await self.ctx.emit(EVENT, describe_event(m.device.specs()), target=reply_to,
                                    info=m.info(self.ctx.name))
            await self._result(reply_to, data, chosen[0], "ok")
        elif command == "write":
            m = chosen[0]
            try:
                ops = m.device.check_write(data.get("values"))
            except WriteRejected as exc:
                self._count("writes_rejected")
                self.ctx.counters.error(f"{m.name}: write rejected: {exc}")
                self.log.warning("%s: %s: write rejected: %s", self._where, m.name, exc)
                await self._result(reply_to, data, m, "rejected", str(exc))
                return
            self._commands.put_nowait((reply_to, data, m, ops))
            self._wake.set()
        else:
            self.ctx.counters.error(f"unsupported command {command!r}")
            await self._result(reply_to, data, chosen[0], "unsupported",
                               f"unknown command {command!r}; known: write, describe")

    async def _result(self, target: str, command: dict[str, Any], m: Member | None,
                      result: str, detail: str = "", **extra: Any) -> None:
        """Answer a command; ``result`` "ok" is success, any other word a failure."""
        info = m.info(self.ctx.name) if m is not None else {"transport_name": self.ctx.name}
        await self.ctx.emit(EVENT, command_result(command, result == "ok", result, detail,
                                                  **extra),
                            target=target, info=info)

    async def _serve_commands(self) -> None:
        """Queued writes, between two requests of the scans (they jump the queue)."""
        while not self._commands.empty():
            reply_to, data, m, ops = self._commands.get_nowait()
            if self.link is None or not self.link.connected:
                await self._result(reply_to, data, m, "error", "bus not connected")
                continue
            readback: dict[str, Value] = {}
            try:
                for op in ops:
                    current = 0
                    if op.needs_current:
                        words = await self._read_words(m, m.device.single_read(op.spec))
                        current = int(words[0])
                    await self._write_words(m, op.spec, op.words(current))
                    self._count("writes")
                for op in ops:
                    request = m.device.single_read(op.spec)
                    readback.update(m.device.decode(request, await self._read_words(m, request)))
            except RequestFailed as exc:
                await self._failed(m, exc, "write")
                result = "timeout" if isinstance(exc, NoReply) else "error"
                await self._result(reply_to, data, m, result, str(exc), values=readback)
                continue
            self.log.info("%s: %s: wrote %s", self._where, m.name, readback)
            await self._result(reply_to, data, m, "ok", values=readback)
