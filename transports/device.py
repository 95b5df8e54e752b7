"""Device transports: the transport opens a link and serves it; this keeps it connected.

Why a base class: every transport that talks to a device or a peer over a link that comes
and goes (a serial port, a TCP connection, a controller's slot) needs the same loop: open,
serve until the link is lost, wait a backoff, try again; log the first failure once and the
recovery once (not every retry, SD cards and people agree); tell the bridge when the device
becomes unavailable and available again (``status`` envelopes, once per change); give up after
``give_up_after`` if the transport asks for it (a crash: the supervisor's policy takes over).
The loop itself is :class:`gateway.reconnect.LinkKeeper` (written once for every link, not
only devices'); this class gives it a device's hooks: the counters and the ``status``
envelopes. A transport gives:

- ``open()``: the link, or :class:`PeerUnavailable` (nothing listening, port busy...);
- ``serve(link)``: the device's life on that link; it calls ``await self.link_up(reason)``
  once the device answered (that is the recovery), returns when the transport stops (or hands
  the link back: it is opened again at once), raises :class:`PeerUnavailable` when it is lost;
- ``release(link)``: close it (always called after ``serve``);
- ``peer_name()``, ``backoff()`` and ``device_info()`` for the logs, the pacing and the
  status envelopes; optionally ``announce()`` (a bus tells each device) and ``wait_retry()``
  (a transport that answers commands while its link is down).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, TypeVar

from gateway.backoff import Backoff
from gateway.message import STATUS
from gateway.reconnect import LinkKeeper
from gateway.settings import TransportSettings
from transports.base import Transport, TransportContext

S = TypeVar("S", bound=TransportSettings)


class PeerUnavailable(Exception):
    """The device or peer cannot be reached now: retried with backoff, not a crash."""


class DeviceTransport(Transport[S]):
    #: A link that lived this long (s) is reopened at once when it drops; None: always back off.
    reconnect_at_once_after: ClassVar[float | None] = None
    #: True: a new reason while still unavailable is sent too (news, not a retry).
    status_on_new_reason: ClassVar[bool] = False

    def __init__(self, settings: S, ctx: TransportContext) -> None:
        super().__init__(settings, ctx)
        self._available: tuple[bool, str] | None = None
        self._keeper: LinkKeeper[Any] = LinkKeeper(
            self.peer_name(), ctx.log, backoff=self.backoff(), lost=(PeerUnavailable,),
            stopping=ctx.stopping, at_once_after=self.reconnect_at_once_after,
            on_down=self._link_down, on_recovered=self._recovered, wait=self.wait_retry,
            gave_up=lambda message, lost: type(lost)(message))  # still a PeerUnavailable

    # -- what a device transport gives ---------------------------------------------------
    async def open(self) -> Any:
        raise NotImplementedError

    async def serve(self, link: Any) -> None:
        raise NotImplementedError

    async def release(self, link: Any) -> None:
        """Close ``link``."""

    def peer_name(self) -> str:
        return f"the device of {self.ctx.name}"

    def backoff(self) -> Backoff:
        return Backoff()

    def device_info(self) -> dict[str, str]:
        return {"transport_name": self.ctx.name}

    async def wait_retry(self, seconds: float) -> None:
        """The wait between two attempts; ends early when the transport stops."""
        try:
            await asyncio.wait_for(self.ctx.stopping.wait(), seconds)
        except TimeoutError:
            pass

    # -- the loop is gateway.reconnect's; what it tells this transport ------------------
    async def link_up(self, reason: str) -> None:
        """The device answers on this link: one recovery log, backoff reset, available."""
        self._keeper.up()
        await self.announce(True, reason)

    def _recovered(self) -> None:
        self.ctx.counters.recovered()

    async def _link_down(self, reason: str) -> None:
        self.ctx.counters.error(reason)
        await self.announce(False, reason)

    async def announce(self, available: bool, reason: str) -> None:
        """Availability, sent when it changes (once per outage, once per recovery); a
        transport of many devices (a bus) tells each of its devices instead."""
        old = self._available
        if old is None or old[0] != available or (
                self.status_on_new_reason and old[1] != reason):
            self._available = (available, reason)
            await self.ctx.emit(STATUS, {"available": available, "reason": reason},
                                info=dict(self.device_info()))

    async def run(self) -> None:
        await self._keeper.keep(self.open, self.serve, self.release)
