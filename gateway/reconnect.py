"""Keeping a link up, and retrying a bounded action: the two loops written once.

Why here and not in each transport: every link that comes and goes (a serial port, a device's
TCP connection, a peer's WebSocket) needs the same loop, and each copy of it drifted (a log per
retry here, no backoff reset there, a give-up that never fired). :class:`LinkKeeper` is that
loop: open, serve until the link is lost, release, back off, open again; the first failure is
logged once and the recovery once (:class:`~gateway.backoff.FailureLog`); the backoff is reset
when the serving side says the peer actually answered (:meth:`LinkKeeper.up`, not when a socket
merely connected: a peer that accepts and then says nothing is still down). :func:`retry` is the
bounded cousin: an action tried a few times with a backoff between (a configuration push).

Nothing here knows a transport: the link is whatever ``open`` returns, the failures that mean
"down, try again" are the exception types the caller names, anything else propagates (a bug is
a crash, not an outage). Pacing uses :class:`~gateway.backoff.Backoff` (monotonic clock).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from gateway.backoff import Backoff, FailureLog

L = TypeVar("L")
T = TypeVar("T")


class GaveUp(Exception):
    """The link stayed down longer than the backoff's ``give_up_after``: a crash on purpose,
    so that the supervisor's restart policy takes over."""


def reason_of(exc: BaseException) -> str:
    """What an exception says, or its type when it says nothing (``TimeoutError()``)."""
    return str(exc) or type(exc).__name__


class LinkKeeper(Generic[L]):
    """Keeps one link up until ``stopping`` is set (or the task is cancelled).

    ``keep(open, serve, release)``: ``open()`` returns the link or raises one of ``lost``;
    ``serve(link)`` is the link's life: it calls :meth:`up` once the peer answered, returns when
    it hands the link back (or ``stopping`` was set; the link is opened again at once), raises
    one of ``lost`` when the link is lost; ``release(link)`` is always called after ``serve``.

    ``at_once_after``: a link that lived at least this long (s) is reopened without a backoff
    when it drops (a single drop of a good link is not an outage worth waiting for); its loss is
    still reported. ``on_down(reason)`` is told every failed attempt (after the failure log
    counted it), ``on_recovered()`` the end of each outage (after the recovery log). ``wait``
    is the pause between two attempts; by default it ends early when ``stopping`` is set.
    A backoff with ``give_up_after`` makes :meth:`keep` raise once exceeded: :class:`GaveUp`,
    or what ``gave_up(message, last_failure)`` makes (a caller whose contract names the type).
    """

    def __init__(
        self, what: str, log: logging.Logger, *, backoff: Backoff,
        lost: tuple[type[BaseException], ...],
        stopping: asyncio.Event | None = None,
        at_once_after: float | None = None,
        on_down: Callable[[str], Awaitable[None]] | None = None,
        on_recovered: Callable[[], None] | None = None,
        wait: Callable[[float], Awaitable[None]] | None = None,
        gave_up: Callable[[str, BaseException], BaseException] | None = None,
    ) -> None:
        self.what = what
        self.backoff = backoff
        self.failure = FailureLog(log, what)
        self.lost = lost
        self.stopping = stopping
        self.at_once_after = at_once_after
        self.on_down = on_down
        self.on_recovered = on_recovered
        self._wait = wait or self._wait_or_stop
        self._gave_up = gave_up or (lambda message, _: GaveUp(message))

    def up(self) -> bool:
        """The peer answered on this link: the recovery logged (once), the backoff reset.
        True when this ended an outage."""
        ended = self.failure.failing
        self.failure.recovered()
        self.backoff.reset()
        if ended and self.on_recovered is not None:
            self.on_recovered()
        return ended

    def _stopped(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    async def keep(
        self, open_link: Callable[[], Awaitable[L]], serve: Callable[[L], Awaitable[None]],
        release: Callable[[L], Awaitable[None]] | None = None,
    ) -> None:
        """Open, serve, release, back off, again, until stopped; see the class."""
        while not self._stopped():
            try:
                link = await open_link()
            except self.lost as exc:
                lost = exc
            else:
                since = time.monotonic()
                try:
                    await serve(link)
                    continue  # stopping, or the link handed back: open again at once
                except self.lost as exc:
                    lost = exc
                finally:
                    if release is not None:
                        await release(link)
                if self._stopped():
                    return
                if self.at_once_after is not None and \
                        time.monotonic() - since >= self.at_once_after:
                    await self._down(lost)
                    continue  # it lived long enough: no backoff for a single drop
            if self._stopped():
                return
            await self._down(lost)
            delay = self.backoff.next_delay()
            if delay is None:
                raise self._gave_up(f"{self.what}: gave up after "
                                    f"{self.backoff.give_up_after:g} s: {reason_of(lost)}",
                                    lost) from lost
            await self._wait(delay)

    async def _down(self, lost: BaseException) -> None:
        reason = reason_of(lost)
        self.failure.failed(reason)
        if self.on_down is not None:
            await self.on_down(reason)

    async def _wait_or_stop(self, seconds: float) -> None:
        if self.stopping is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass


async def retry(
    attempt: Callable[[], Awaitable[T | None]], *, attempts: int | None, backoff: Backoff,
    retry_on: tuple[type[BaseException], ...] = (), log: logging.Logger | None = None,
    what: str = "attempt", sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T | None:
    """``attempt()`` until it returns something other than None, at most ``attempts`` times
    (None: until it does, or the task is cancelled), ``backoff`` paced between two tries; that
    result, or None when every try failed.

    An exception of ``retry_on`` is a failed try (logged at DEBUG: a bounded retry that gives
    up quietly is what its callers want, e.g. a peer that is off will fetch what it missed);
    anything else propagates. ``attempt`` itself says when trying is no longer needed (it
    returns a result that says so).
    """
    tried = 0
    while True:
        tried += 1
        try:
            result = await attempt()
        except retry_on as exc:
            if log is not None:
                log.debug("%s failed: %s", what, reason_of(exc))
        else:
            if result is not None:
                return result
        if attempts is not None and tried >= attempts:
            return None
        await sleep(backoff.next_delay() or backoff.maximum)
