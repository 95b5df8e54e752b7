"""One member's status, pulled the OpenEVSE way: ``GET /status`` once, then its ``/ws``.

Per member a :class:`PeerClient` task: bootstrap over HTTP (10 s timeout), then a WebSocket
(PING frames every 15 s; no JSON text for ``heartbeat_timeout`` -> drop and reconnect), backoff
1 s doubling to 60 s between failed attempts, the last known status kept across reconnects.
``last_seen`` moves only when a JSON message arrives. Every message is handed on at once
(event driven): status deltas to ``on_status``, our own protocol's reports (``pgw_report``) to
``on_report``, which feeds :meth:`Node.receive`.

A peer is not trusted to be sane. Oversized frames (``MAX_FRAME``) close the socket; a flood is
rate limited (excess frames dropped and counted; a sustained flood closes the socket); garbage
and impossible values (negative amps, 10,000 A, a report naming another node, a bad signature)
are logged with the offending bytes escaped and the frame dropped *without* moving
``last_seen``. A peer whose frames are dropped goes offline in its peers' views, where it is
reserved the assumed current: it can only ever lower the others' limits, never raise them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, PayloadTooBig

from gateway.backoff import Backoff, FailureLog
from gateway.reconnect import LinkKeeper
from transports.loadsharing.auth import GroupAuth
from transports.loadsharing.http_api import TokenBucket
from transports.loadsharing.messages import MessageError, Report, decode

MAX_FRAME = 64 * 1024
RATE = 50.0  # frames per second, sustained
BURST = 100.0
FLOOD_CUT = 200  # frames dropped in a row before the socket is closed
BOOTSTRAP_TIMEOUT = 10.0
PING_INTERVAL = 15.0
MAX_AMPS = 80.0  # what a single-phase J1772 charger can offer; beyond is impossible
#: what ends one attempt (and is retried after the backoff); anything else is a bug
LOST = (OSError, aiohttp.ClientError, InvalidHandshake, ConnectionClosed, TimeoutError,
        ValueError)
#: /status keys that are amps (A) and must be sane; ``amp`` is mA on the OpenEVSE wire
AMP_KEYS = ("pilot", "max_current", "min_current", "loadsharing_min_current",
            "loadsharing_max_current")


def insane(frame: dict[str, Any]) -> str | None:
    """Why ``frame`` holds an impossible value, or None."""
    amp = frame.get("amp")
    if amp is not None:
        if isinstance(amp, bool) or not isinstance(amp, int | float) or not math.isfinite(amp):
            return f"amp is not a number: {amp!r}"
        if amp < 0 or amp >= 10_000 * 1000:
            return f"impossible amp {amp!r} mA"
    for key in AMP_KEYS:
        v = frame.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return f"{key} is not a number: {v!r}"
        if not 0 <= v <= MAX_AMPS:
            return f"impossible {key} {v!r} A"
    volt = frame.get("voltage")
    if volt is not None and (isinstance(volt, bool) or not isinstance(volt, int | float)
                             or not 0 <= volt <= 1000):
        return f"impossible voltage {volt!r}"
    return None


def insane_report(report: Report, host: str) -> str | None:
    s = report.status
    if report.node != host:
        return f"report names node {report.node!r}, not {host!r}"
    if s.max_current > MAX_AMPS or s.amp > MAX_AMPS * 2 or s.pilot > MAX_AMPS:
        return f"impossible report values (max {s.max_current}, amp {s.amp}, pilot {s.pilot})"
    if report.limit > MAX_AMPS:
        return f"impossible limit {report.limit}"
    return None


def escaped(raw: str | bytes) -> str:
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")
    return text[:300].encode("unicode_escape").decode("ascii")


class PeerClient:
    def __init__(self, host: str, session: aiohttp.ClientSession, auth: GroupAuth,
                 log: logging.Logger, *, timeout: float,
                 on_status: Callable[[str, dict[str, Any]], None],
                 on_report: Callable[[Report], None]) -> None:
        self.host = host
        self.session = session
        self.auth = auth
        self.log = log
        self.timeout = timeout
        self.on_status = on_status
        self.on_report = on_report
        self.status: dict[str, Any] = {}  # last known, kept across reconnects
        self.last_seen: float | None = None  # monotonic, on a good message only
        self.connected = False
        self.counters = {"frames": 0, "reports": 0, "bad": 0, "flood": 0, "oversize": 0}
        self.backoff = Backoff(initial=1.0, maximum=60.0)
        self.keeper: LinkKeeper[None] = LinkKeeper(f"peer {host}", log, backoff=self.backoff,
                                                   lost=LOST, on_down=self._down)
        self.failure = self.keeper.failure
        self._bad = FailureLog(log, f"peer {host} messages")
        self._bucket = TokenBucket(RATE, BURST)
        self._dropped_in_row = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"peer-{self.host}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping
                pass

    async def run(self) -> None:
        """Bootstrap and follow until cancelled; the loop is :class:`LinkKeeper`'s."""
        await self.keeper.keep(self._bootstrap, self._serve)

    async def _serve(self, _: None) -> None:
        await self._follow()
        raise ConnectionError("connection closed")

    async def _down(self, _: str) -> None:
        self.connected = False

    async def _bootstrap(self) -> None:
        url = f"http://{self.host}/status"
        timeout = aiohttp.ClientTimeout(total=BOOTSTRAP_TIMEOUT)
        async with self.session.get(url, timeout=timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"GET /status answered {resp.status}")
            raw = await resp.content.read(MAX_FRAME + 1)
        if len(raw) > MAX_FRAME:
            self.counters["oversize"] += 1
            raise ValueError(f"/status over {MAX_FRAME} bytes")
        self.ingest(raw.decode("utf-8", "backslashreplace"))

    async def _follow(self) -> None:
        async with connect(f"ws://{self.host}/ws", max_size=MAX_FRAME, open_timeout=10,
                           ping_interval=PING_INTERVAL, ping_timeout=PING_INTERVAL,
                           close_timeout=2) as sock:
            self.connected = True
            quiet_since = time.monotonic()
            while True:
                left = self.timeout - (time.monotonic() - quiet_since)
                try:
                    async with asyncio.timeout(max(0.01, left)):
                        message = await sock.recv()
                except TimeoutError:
                    raise TimeoutError(f"no JSON text for {self.timeout:g} s") from None
                except PayloadTooBig:
                    self.counters["oversize"] += 1
                    self._bad.failed(f"frame over {MAX_FRAME} bytes")
                    raise
                if self._flooding():
                    if self._dropped_in_row >= FLOOD_CUT:
                        raise ValueError("flooding: socket closed")
                    continue
                if self.ingest(message):
                    quiet_since = time.monotonic()
                    self.keeper.up()  # the recovery: a good message, not a mere connect

    def _flooding(self) -> bool:
        if self._bucket.take():
            self._dropped_in_row = 0
            return False
        self.counters["flood"] += 1
        self._dropped_in_row += 1
        self._bad.failed(f"more than {RATE:g} messages/s: excess dropped")
        return True

    def ingest(self, message: str | bytes) -> bool:
        """One message: True if it was good (and ``last_seen`` moved)."""
        if isinstance(message, bytes):
            return self._reject("binary frame", message)
        try:
            frame = json.loads(message)
        except ValueError:
            return self._reject("not JSON", message)
        if not isinstance(frame, dict):
            return self._reject("not a JSON object", message)
        why = insane(frame)
        if why is not None:
            return self._reject(why, message)
        report = None
        text = frame.pop("pgw_report", None)
        if text is not None:
            if not isinstance(text, str):
                return self._reject("pgw_report is not a string", message)
            why = self.auth.check_report(frame, text)
            if why is not None:
                return self._reject(why, message)
            try:
                report = decode(text.encode())
            except MessageError as exc:
                return self._reject(str(exc), message)
            why = insane_report(report, self.host)
            if why is not None:
                return self._reject(why, message)
        frame.pop("pgw_ts", None)
        frame.pop("pgw_mac", None)
        self.counters["frames"] += 1
        self.last_seen = time.monotonic()
        self._bad.recovered()
        if frame:
            self.status.update(frame)
            self.on_status(self.host, frame)
        if report is not None:
            self.counters["reports"] += 1
            self.on_report(report)
        return True

    def _reject(self, why: str, raw: str | bytes) -> bool:
        self.counters["bad"] += 1
        self._bad.failed(f"{why}: {escaped(raw)}")
        return False
