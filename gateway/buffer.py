"""Store-and-forward for outputs: envelopes wait on disk until the sink acknowledges them.

Why outside the outputs (Telegraf's ``models/buffer.go`` idea): batching, the size cap, drop
counting, retry pacing and the on-disk format are the same for MQTT, InfluxDB and whatever
comes next. An output only says how to write one batch (:class:`Sink`) and which failures are
worth retrying (:class:`SinkUnavailable`) or hopeless (:class:`Rejected`).

What is promised (docs/transports/mqtt.md "Delivery guarantees" says the same to users):

- At-least-once, in order. An envelope is appended to SQLite (WAL) when it is accepted and
  deleted only after the sink acknowledged the batch holding it. A crash between the sink's
  write and our delete re-delivers that batch: duplicates are possible, loss is not.
- Group commits: a batch from the bridge (``accept``) is one transaction, committed before
  ``receive_batch()`` returns, so the runner's acknowledgement to the bridge means "on disk";
  single ``put()`` calls are committed at the end of the event-loop turn; at most
  ``buffer_commit_rows`` rows per transaction. ``buffer_commit_interval`` > 0 waits that long
  to gather more (fewer writes on an SD card, at the price of losing that window's envelopes
  if the process is killed -9). ``synchronous=NORMAL`` survives a crash of
  the process; a power cut may lose the last commits (``buffer_sync = full`` closes that).
- Past ``buffer_size`` waiting envelopes the oldest waiting ones are dropped: counted in
  ``counters.dropped`` / ``extra["buffer_dropped"]`` and logged (first drop of an episode at
  once, then a summary at most every 60 s). Never silent.
- A batch the sink rejects for good (:class:`Rejected`: bad data, not a sink outage) is
  dropped, counted in ``extra["buffer_rejected"]`` and logged with the sink's reason.

Size: a few lines over the ~400 guide on purpose: the SQLite queue (``DiskQueue``) and the
delivery loop around it (``StoreAndForward``) share one invariant (delete only what the sink
acknowledged) that is easier to check in one file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.backoff import Backoff, FailureLog
from gateway.buffer_settings import BufferSettings
from gateway.message import Envelope
from transports.base import Counters

_SCHEMA = "CREATE TABLE IF NOT EXISTS envelopes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
_DROP_LOG_INTERVAL = 60.0


class SinkUnavailable(Exception):
    """The sink is down or refused for a reason that may pass (retry the same batch later)."""


class Rejected(Exception):
    """The sink refused this batch for good (bad data): retrying it cannot help."""


class Sink(Protocol):
    async def write(self, batch: Sequence[Envelope]) -> None:
        """Deliver ``batch`` and return once the sink acknowledged all of it."""


def encode(envelope: Envelope) -> str:
    """One row's text: the envelope's fields as JSON (readable with sqlite3 for a post-mortem).

    Written out by hand rather than ``to_dict()``: ``dataclasses.asdict`` deep-copies and
    costs several times the JSON encoding itself.
    """
    target = envelope.target_transport
    return json.dumps(
        {
            "source_transport": envelope.source_transport,
            "kind": envelope.kind,
            "data": envelope.data,
            "target_transport": list(target) if isinstance(target, tuple) else target,
            "source_transport_info": envelope.source_transport_info,
            "timestamp": envelope.timestamp,
            "sequence": envelope.sequence,
        },
        default=str,
        separators=(",", ":"),
    )


def decode(body: str) -> Envelope:
    data: dict[str, Any] = json.loads(body)
    target = data.get("target_transport")
    if isinstance(target, list):
        data["target_transport"] = tuple(target)
    return Envelope(**data)


class DiskQueue:
    """The SQLite table itself: append, peek in order, delete up to an id. No asyncio here."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = path
        self.sync = sync
        self._db: sqlite3.Connection | None = None
        self.count = 0

    def open(self, log: logging.Logger | None = None) -> None:
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            # A file that is not a database (power cut mid-write on some cards): keep it for
            # a post-mortem, start afresh rather than refuse to run.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            if log is not None:
                log.error("buffer %s unreadable (%s); moved to %s", self.path, exc, aside)
            if self._db is not None:
                self._db.close()
                self._db = None
            self.path.rename(aside)
            self._connect()

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.sync.upper()}")
        db.execute(_SCHEMA)
        self.count = int(db.execute("SELECT COUNT(*) FROM envelopes").fetchone()[0])

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("buffer is not open")
        return self._db

    def append(self, bodies: Sequence[str]) -> None:
        db = self.db
        db.execute("BEGIN")
        db.executemany("INSERT INTO envelopes (body) VALUES (?)", ((b,) for b in bodies))
        db.execute("COMMIT")
        self.count += len(bodies)

    def peek(self, limit: int) -> list[tuple[int, str]]:
        rows = self.db.execute(
            "SELECT id, body FROM envelopes ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def oldest_timestamp(self) -> float:
        """When the oldest waiting envelope was read (unix seconds); 0.0 when none waits."""
        row = self.db.execute("SELECT body FROM envelopes ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return 0.0
        try:
            stamp = json.loads(row[0]).get("timestamp", 0.0)
        except (ValueError, AttributeError):
            return 0.0
        return float(stamp) if isinstance(stamp, int | float) else 0.0

    def delete_through(self, last_id: int) -> int:
        cur = self.db.execute("DELETE FROM envelopes WHERE id <= ?", (last_id,))
        self.count -= cur.rowcount
        return int(cur.rowcount)

    def drop_oldest(self, n: int, after_id: int = 0) -> int:
        """Delete the ``n`` oldest rows with id > ``after_id`` (the batch in flight is spared)."""
        cur = self.db.execute(
            "DELETE FROM envelopes WHERE id IN "
            "(SELECT id FROM envelopes WHERE id > ? ORDER BY id LIMIT ?)",
            (after_id, n),
        )
        self.count -= cur.rowcount
        return int(cur.rowcount)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class StoreAndForward:
    """Accepts envelopes into a :class:`DiskQueue` and feeds them to a :class:`Sink` in order.

    ``put()`` is synchronous and cheap; ``run(sink)`` is the delivery loop (cancel it to stop);
    ``close(sink)`` persists what is pending and drains for up to ``drain_timeout``.
    """

    def __init__(
        self,
        path: Path,
        settings: BufferSettings,
        log: logging.Logger,
        counters: Counters,
        what: str = "sink",
    ) -> None:
        self.settings = settings
        self.log = log
        self.counters = counters
        self.queue = DiskQueue(path, settings.buffer_sync)
        self.failure = FailureLog(log, what)
        self.backoff = Backoff(settings.retry_initial, settings.retry_max)
        self._pending: list[str] = []
        self._commit_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._work = asyncio.Event()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._inflight_last = 0
        self._inflight: asyncio.Future[bool] | None = None
        self._waiting_since: float | None = None
        self._drops_unlogged = 0
        self._last_drop_log = 0.0
        self._opened = False
        self.commits = 0
        for key in ("buffer_rows", "buffer_dropped", "buffer_rejected", "delivered"):
            counters.extra.setdefault(key, 0)
        counters.extra.setdefault("buffer_oldest_at", 0.0)

    def _show_rows(self, oldest_changed: bool) -> None:
        """The status counters: rows waiting, and when the oldest of them was read (one
        indexed query, only when the oldest row may have changed)."""
        self.counters.extra["buffer_rows"] = self.queue.count
        if oldest_changed:
            self.counters.extra["buffer_oldest_at"] = self.queue.oldest_timestamp()

    # -- accepting -----------------------------------------------------------------------
    def open(self) -> None:
        if self._opened:
            return
        self.queue.open(self.log)
        self._opened = True
        self._show_rows(oldest_changed=True)
        if self.queue.count:
            self.log.info("buffer holds %d envelopes from before; delivering them first",
                          self.queue.count)
            self._mark_work()

    def put(self, envelope: Envelope) -> None:
        """Accept one envelope: it is on disk by the end of this event-loop turn."""
        if not self._opened:
            self.open()
        self._pending.append(encode(envelope))
        if len(self._pending) >= self.settings.buffer_commit_rows:
            self.commit()
        elif self._commit_handle is None:
            loop = asyncio.get_running_loop()
            if self.settings.buffer_commit_interval > 0:
                self._commit_handle = loop.call_later(
                    self.settings.buffer_commit_interval, self.commit
                )
            else:
                self._commit_handle = loop.call_soon(self.commit)

    def accept(self, envelopes: Sequence[Envelope]) -> None:
        """Accept a batch; with ``buffer_commit_interval = 0`` it is on disk when this returns.

        The runner acknowledges a batch to the bridge after ``receive_batch()`` returns, so
        committing here makes the acknowledgement mean "on disk" (one transaction per batch).
        """
        for envelope in envelopes:
            self.put(envelope)
        if self.settings.buffer_commit_interval <= 0:
            self.commit()

    def commit(self) -> None:
        """Write what is pending in one transaction, then enforce the size cap."""
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
        if not self._pending or not self._opened:
            return
        rows, self._pending = self._pending, []
        was_empty = self.queue.count == 0
        self.queue.append(rows)
        self.commits += 1
        excess = self.queue.count - self.settings.buffer_size
        if excess > 0:
            self._dropped(self.queue.drop_oldest(excess, self._inflight_last))
        self._show_rows(oldest_changed=was_empty or excess > 0)
        self._mark_work()

    def _mark_work(self) -> None:
        if self._waiting_since is None:
            self._waiting_since = time.monotonic()
        self._work.set()

    def _dropped(self, n: int) -> None:
        if n <= 0:
            return
        self.counters.dropped += n
        self.counters.incr("buffer_dropped", n)
        self._drops_unlogged += n
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self.log.warning(
                "buffer full (%d envelopes): dropped the %d oldest (%d dropped in all)",
                self.settings.buffer_size, self._drops_unlogged,
                self.counters.extra["buffer_dropped"],
            )
            self._drops_unlogged = 0
            self._last_drop_log = now

    @property
    def backlog(self) -> int:
        """Envelopes accepted and not yet acknowledged by the sink."""
        return self.queue.count + len(self._pending)

    def wake(self) -> None:
        """Cut a retry wait short (the output saw its sink come back)."""
        self._wake.set()

    # -- delivering ----------------------------------------------------------------------
    async def _wait_for_batch(self) -> None:
        while self.queue.count == 0:
            self._work.clear()
            self._waiting_since = None
            await self._work.wait()
        interval = self.settings.flush_interval
        if interval <= 0:
            return
        while self.queue.count < self.settings.batch_size:
            since = self._waiting_since or time.monotonic()
            remaining = since + interval - time.monotonic()
            if remaining <= 0:
                return
            self._work.clear()
            try:
                await asyncio.wait_for(self._work.wait(), remaining)
            except TimeoutError:
                return

    async def deliver_once(self, sink: Sink) -> bool:
        """Write the oldest batch; True when the sink took it (or rejected it for good).

        The write runs shielded: cancelling the delivery loop (shutdown) lets a write already
        on the wire finish and be acknowledged, so close() does not send it a second time.
        """
        async with self._lock:
            rows = self.queue.peek(self.settings.batch_size)
            if not rows:
                return True
            self._inflight = asyncio.ensure_future(self._write(sink, rows))
            return await asyncio.shield(self._inflight)

    async def _write(self, sink: Sink, rows: list[tuple[int, str]]) -> bool:
        self._inflight_last = rows[-1][0]
        try:
            await sink.write([decode(body) for _, body in rows])
        except Rejected as exc:
            self.counters.incr("buffer_rejected", len(rows))
            self.counters.error(f"rejected: {exc}")
            self.log.error("sink rejected %d envelopes for good, dropped: %s", len(rows), exc)
        except SinkUnavailable as exc:
            self.counters.error(str(exc))
            self.failure.failed(exc)
            return False
        finally:
            self._inflight_last = 0
        if not self._opened:
            return True  # closed meanwhile: the rows stay and are sent again (at-least-once)
        delivered = self.queue.delete_through(rows[-1][0])
        self.counters.incr("delivered", delivered)
        self._show_rows(oldest_changed=True)
        self._waiting_since = time.monotonic() if self.queue.count else None
        if self.failure.failing:
            self.failure.recovered()
            self.counters.recovered()
        self.backoff.reset()
        return True

    async def run(self, sink: Sink, ready: asyncio.Event | None = None) -> None:
        """Deliver forever, in order, retrying with backoff; returns only by cancellation.

        ``ready`` (set while the sink is connected) gates every attempt: nothing is tried, and
        so no failure is logged, before a sink that connects by itself is up.
        """
        self.open()
        while True:
            await self._wait_for_batch()
            if ready is not None:
                await ready.wait()
            # Cleared before the attempt, not after: a wake() that comes while the attempt
            # fails (the sink's "I am back") must cut the following wait short, not be lost.
            self._wake.clear()
            if await self.deliver_once(sink):
                continue
            delay = self.backoff.next_delay() or self.settings.retry_max
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def close(self, sink: Sink | None, can_deliver: bool = True) -> None:
        """Persist what is pending; deliver for up to ``drain_timeout``; close the file."""
        if not self._opened:
            return
        self.commit()
        deadline = time.monotonic() + self.settings.drain_timeout
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight], timeout=self.settings.drain_timeout)
        if sink is not None and can_deliver:
            while self.queue.count and time.monotonic() < deadline:
                try:
                    ok = await asyncio.wait_for(
                        self.deliver_once(sink), max(0.01, deadline - time.monotonic())
                    )
                except TimeoutError:
                    break
                if not ok:
                    break
        if self.queue.count:
            self.log.warning("%d envelopes kept in the buffer for the next start",
                             self.queue.count)
        self.queue.close()
        self._opened = False
