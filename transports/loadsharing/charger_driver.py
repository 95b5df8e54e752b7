"""The section's charger, driven: its readings in, this node's commands out, in order.

Every role (the masterless node on UDP or HTTP, an OpenEVSE member or controller) drives the
charger through one :class:`ChargerDriver`, which the transport builds once and hands to the role
it runs: the role sets the limit (:meth:`ChargerDriver.set_limit`) and reads what the charger
shows (:attr:`ChargerDriver.local`); the driver turns the limit and the user's preference into
commands (:class:`~transports.loadsharing.charger_writer.ChargerWriter`, which also puts back a
charger found above its limit), sends them newest limit first, and sets up and pulses
supervision while a role is driving. The masterless :class:`~transports.loadsharing.node.Node`
the role runs is attached here (:attr:`ChargerDriver.node`) so it hears the charger's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.backoff import FailureLog
from gateway.message import COMMAND
from transports.base import Counters
from transports.charger import (
    AcknowledgeMissed,
    ChargerStatus,
    Command,
    Pulse,
    Supervise,
    UserRequest,
    command,
    missed_pulse,
)
from transports.loadsharing.charger_writer import ChargerWriter, PreferenceStore
from transports.loadsharing.demand import wire_state
from transports.loadsharing.node import FAILSAFE, DemandTracker, Node
from transports.loadsharing.node_config import FIRST_STATUS_WAIT
from transports.loadsharing.settings import LoadSharingSettings

#: ``emit(kind, data, target=...)``: the context's bridge to other sections
Emit = Callable[..., Awaitable[Any]]


class ChargerDriver:
    """One writer of the ``charger`` section's current, whichever role runs."""

    def __init__(self, settings: LoadSharingSettings, log: logging.Logger, *, name: str,
                 state_dir: Path, counters: Counters, emit: Emit) -> None:
        self.settings = settings
        self.name = name  # request ids carry the section's name
        self.log = log
        self.counters = counters
        self.emit = emit
        self.node: Node | None = None  # the masterless node hearing the charger, if any
        self.demand = DemandTracker()
        self.failure = FailureLog(log, f"charger {settings.charger!r} commands")
        self.preferences = PreferenceStore(state_dir, log)
        self.writer = ChargerWriter(
            max_current=settings.loadsharing_max_current,
            min_current=settings.loadsharing_min_current,
            grace=min(1.0, settings.loadsharing_response_time / 2),
            preference=self.preferences.load(), log=log)
        self.first_status = asyncio.Event()  # the charger has reported
        self.status: ChargerStatus | None = None  # the charger's latest status
        self.local: tuple[bool, dict[str, Any]] | None = None  # (demand, what peers display)
        self._kick = asyncio.Event()  # the command loop has work
        self._new_limit: int | None = None  # the role's latest limit, not yet handled
        self._outbox: list[Command] = []
        self._ids = itertools.count(1)
        counters.extra["charger_commands"] = 0

    # -- what the charger says ------------------------------------------------------------------
    def on_status(self, status: ChargerStatus) -> None:
        self.status = status
        self.demand.update(status)
        self.first_status.set()
        self.show_local()
        self._queue(self.writer.on_status(status, time.monotonic()))

    def on_result(self, data: dict[str, Any]) -> None:
        """The charger section's answer to one of our commands."""
        if data.get("ok"):
            self.failure.recovered()
            return
        self.failure.failed(f"{data.get('command')}: {data.get('result')} "
                            f"{data.get('detail', '')}")
        if missed_pulse(data):
            self._queue([AcknowledgeMissed(), *self.writer.resend(time.monotonic())])

    def user_request(self, data: dict[str, Any]) -> dict[str, Any]:
        """A write to the charger by someone else (MQTT, REST, a transport), forwarded by the
        charger section: it becomes this member's preference. Returns the answer (what was
        applied and why), which goes back through the charger section to the requester."""
        try:
            req = UserRequest.from_command(data)
        except ValueError as exc:
            return {"ok": False, "result": "rejected", "detail": str(exc)}
        cmds, result = self.writer.request(req, time.monotonic())
        self.preferences.save(self.writer.preference)
        self.log.info("user request %s: %s", data.get("request_id", ""), result["detail"])
        self._queue(cmds)
        self.show_local()
        return dict(result)

    def offers(self) -> int:
        """What the charger offers now, as it last reported (0: paused or unknown)."""
        st = self.status
        if st is None or st.paused or st.offered_current is None:
            return 0
        return int(st.offered_current)

    def view(self) -> dict[str, Any]:
        """What ``/loadsharing/status`` shows of the charger: what it offers, what this node
        wants it to offer, the user's preference, how often it had to be put back."""
        st, w = self.status, self.writer
        return {"offered": None if st is None else st.offered_current,
                "state": None if st is None else st.state, "target": w.target(),
                "user_max_current": w.preference.max_current,
                "user_paused": w.preference.paused, "corrections": w.corrections}

    def allocation_max(self) -> int:
        """The most this charger may be allotted (its maximum, lowered by the user's)."""
        return self.writer.allocation_max()

    def local_demand(self) -> bool:
        """The EV wants charge and the user hasn't paused this charger."""
        return self.demand.demanding and self.writer.wants_charge

    def show_local(self) -> None:
        """The charger's status to the node (demand, what peers display, the user's max)."""
        st = self.status
        if st is None:
            return
        shown = {
            "amp": st.measured_current or 0.0,
            "voltage": st.voltage or 0.0,
            "pilot": st.offered_current or 0.0,
            "state": wire_state(st),
            "vehicle": 1 if st.vehicle_connected else 0,
        }
        self.local = (self.local_demand(), shown)
        if self.node is not None:
            self.node.set_local(self.local[0], max_current=self.writer.allocation_max(),
                                **shown)

    # -- what a role does with it ---------------------------------------------------------------
    def take_over(self) -> None:
        """A node or role starts driving the charger: its first limit goes out whatever was
        sent before (a role change or a new node never leaves an old value standing)."""
        self.writer.restart()
        self._new_limit = None
        self._outbox.clear()
        self.node = None  # a new Node (a new epoch): none of the old one's limit carries over

    def attach(self, node: Node | None) -> None:
        """The role's masterless node from now on hears the charger (None: no node)."""
        self.node = node
        self.show_local()

    def set_limit(self, amps: int) -> None:
        """From the node or role (synchronous): the command loop sends it, newest first."""
        self.demand.commanded(amps)
        self._new_limit = amps
        self._kick.set()

    async def wait_first_status(self) -> None:
        """The charger's first status, or ``FIRST_STATUS_WAIT`` s (then the node starts paused)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_STATUS_WAIT):
                await self.first_status.wait()

    @contextlib.asynccontextmanager
    async def driving(self) -> AsyncIterator[None]:
        """While inside, this section drives its charger: supervision set up, limits sent in
        order (the command loop), supervision pulsed."""
        await self._start_supervision()
        workers = [asyncio.create_task(self._command_loop())]
        if self.settings.charger_heartbeat > 0:
            workers.append(asyncio.create_task(self._pulse_loop()))
        try:
            yield
        finally:
            for w in workers:
                w.cancel()

    # -- commands out ---------------------------------------------------------------------------
    def _queue(self, cmds: list[Command]) -> None:
        if cmds:
            self._outbox.extend(cmds)
            self._kick.set()

    async def _command_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._new_limit is not None:
                amps, self._new_limit = self._new_limit, None
                stop = amps == 0 and self.settings.loadsharing_failsafe_mode == "disable" and (
                    self.node is not None and self.node.mode == FAILSAFE)
                self._outbox.extend(self.writer.set_limit(amps, time.monotonic(), stop=stop))
            while self._outbox:
                await self._command(command(self._outbox.pop(0)))

    async def _command(self, data: dict[str, Any]) -> None:
        data = {**data, "request_id": f"{self.name}-{next(self._ids)}"}
        extra = self.counters.extra
        extra["charger_commands"] = int(extra["charger_commands"]) + 1
        self.log.debug("to %s: %s", self.settings.charger, data)
        await self.emit(COMMAND, data, target=self.settings.charger)

    async def _start_supervision(self) -> None:
        s = self.settings
        if s.charger_heartbeat > 0:
            await self._command(command(Supervise(s.charger_heartbeat,
                                                  int(s.fallback_current))))

    async def _pulse_loop(self) -> None:
        every = max(1.0, self.settings.charger_heartbeat / 3)
        while True:
            await asyncio.sleep(every)
            await self._command(command(Pulse()))
