"""The child's side of the wire: envelopes up in batches, control frames apart.

Why apart from the runner: these are the two things a transport's process writes to the
supervisor, each from a thread of its own so that the event loop never blocks on a pipe, and
each with its own rule: data may wait for room (or drop, by policy), control never waits
behind data (docs/architecture.md "No deadlock").
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from multiprocessing.connection import Connection

from gateway import channel
from gateway.message import Envelope

BATCH_MAX = 500
DROP_LOG_INTERVAL = 60.0


class DropLog:
    """A drop logged at once, then at most one summary per ``interval``: never per call."""

    def __init__(self, log: logging.Logger, what: str, interval: float = DROP_LOG_INTERVAL
                 ) -> None:
        self.log = log
        self.what = what
        self.interval = interval
        self.total = 0
        self._unlogged = 0
        self._logged_at: float | None = None

    def dropped(self, n: int) -> None:
        if n <= 0:
            return
        self.total += n
        self._unlogged += n
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= self.interval:
            self.log.warning("%s: dropped %d (%d in all)", self.what, self._unlogged, self.total)
            self._unlogged = 0
            self._logged_at = now


class ControlLine:
    """Heartbeats and acknowledgements, on a pipe of their own and a thread of their own.

    Why apart from the data: a data frame waits when its target is full; a heartbeat or an
    acknowledgement that waited behind it would make a busy transport look stuck (and get it
    killed), or stop the acknowledgements that free the very room the data waits for.
    The supervisor reads this pipe in a thread that never waits for anything else.
    """

    def __init__(self, conn: Connection | None) -> None:
        self.conn = conn
        self.frames: deque[bytes] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._send_loop, name="control", daemon=True)
        if conn is not None:
            self._thread.start()

    def send(self, frame: bytes) -> None:
        if self.conn is None:
            return
        with self.cond:
            self.frames.append(frame)
            self.cond.notify()

    def _send_loop(self) -> None:
        assert self.conn is not None
        while True:
            with self.cond:
                while not self.frames and not self.closed:
                    self.cond.wait()
                if not self.frames:
                    return
                frames = list(self.frames)
                self.frames.clear()
            try:
                for frame in frames:
                    self.conn.send_bytes(frame)
            except OSError:
                return  # the supervisor is gone; the parent watch ends us

    def close(self, timeout: float) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)


Chunk = tuple[str, list[channel.Row]]  # (target, rows for it)


class Outbox:
    """Envelopes waiting to go up the pipe, sent in batches by a thread of their own.

    The event loop never blocks on a pipe write: ``put`` appends under a lock; the sender
    thread takes whatever has accumulated (natural batching: one envelope when idle, hundreds
    under load) and writes one frame per target. Bounded by ``capacity`` (envelopes); when
    full, the ``block`` policy makes ``emit`` wait (backpressure), ``drop_oldest`` drops and
    counts. ``urgent`` puts (command results, commands inside their window) never wait and
    never drop: they are bounded by the command windows instead (gateway/commands.py).

    Held as chunks, one per put (a target and its rows), not one entry per envelope: a scan's
    hundreds of readings are queued, taken and framed with list operations, no Python step per
    envelope (the sources' share of the bridge's CPU, bench/bridge.py).
    """

    def __init__(self, conn: Connection | None, capacity: int, policy: str,
                 log: logging.Logger, batch_max: int = BATCH_MAX) -> None:
        self.conn = conn
        self.batch_max = batch_max
        self.capacity = capacity
        self.policy = policy
        self.log = log
        self.chunks: deque[Chunk] = deque()
        self.count = 0  # envelopes in ``chunks``
        self.cond = threading.Condition()
        self.closed = False
        self.drops = DropLog(log, "bridge full (queue_full_policy = drop_oldest), oldest "
                             "envelopes")
        self.sent = 0
        self.broken = False
        self._thread = threading.Thread(target=self._send_loop, name="outbox", daemon=True)
        if conn is not None:
            self._thread.start()

    @property
    def dropped(self) -> int:
        return self.drops.total

    @property
    def items(self) -> list[tuple[str, channel.Row]]:
        """What waits, one (target, row) per envelope, oldest first (tests, introspection)."""
        with self.cond:
            return [(target, row) for target, rows in self.chunks for row in rows]

    def has_room(self) -> bool:
        return self.count < self.capacity

    def _drop_oldest(self, n: int) -> None:
        """Under the lock: drop the ``n`` oldest envelopes (counted and logged)."""
        dropped = 0
        while n > dropped and self.chunks:
            target, rows = self.chunks[0]
            take = min(n - dropped, len(rows))
            if take == len(rows):
                self.chunks.popleft()
            else:
                self.chunks[0] = (target, rows[take:])
            dropped += take
        self.count -= dropped
        self.drops.dropped(dropped)

    def put(self, target: str, envelope: Envelope, urgent: bool = False) -> bool:
        """Queue one envelope; False when full under the block policy (caller waits)."""
        with self.cond:
            if self.count >= self.capacity and not urgent:
                if self.policy != "drop_oldest":
                    return False
                self._drop_oldest(1)
            self.chunks.append((target, [channel.row(envelope)]))
            self.count += 1
            self.cond.notify()
        return True

    def put_many(self, chunks: list[Chunk]) -> list[Chunk]:
        """Queue the rows of ``chunks`` that fit (all under drop_oldest, dropping the oldest
        queued ones); returns what did not fit, for the caller to put again after a wait."""
        with self.cond:
            left: list[Chunk] = []
            if self.policy == "drop_oldest":
                wanted = sum(len(rows) for _, rows in chunks)
                self._drop_oldest(max(self.count + wanted - self.capacity, 0))
            for target, rows in chunks:
                room = len(rows) if self.policy == "drop_oldest" else \
                    max(self.capacity - self.count, 0)
                if left or room == 0:
                    left.append((target, rows))
                    continue
                fits = rows[:room] if room < len(rows) else rows
                if room < len(rows):
                    left.append((target, rows[room:]))
                self.chunks.append((target, fits))
                self.count += len(fits)
            self.cond.notify()
        return left

    def _take(self) -> dict[str, list[channel.Row]]:
        """Under the lock: up to ``batch_max`` of the oldest envelopes, by target."""
        by_target: dict[str, list[channel.Row]] = {}
        taken = 0
        while self.chunks and taken < self.batch_max:
            target, rows = self.chunks[0]
            room = self.batch_max - taken
            if len(rows) <= room:
                self.chunks.popleft()
                part = rows
            else:
                self.chunks[0] = (target, rows[room:])
                part = rows[:room]
            if target in by_target:
                by_target[target].extend(part)
            else:
                by_target[target] = list(part)
            taken += len(part)
        self.count -= taken
        return by_target

    def _send_loop(self) -> None:
        assert self.conn is not None
        while True:
            with self.cond:
                while not self.chunks and not self.closed:
                    self.cond.wait()
                if self.closed and not self.chunks:
                    return
                by_target = self._take()
            try:
                for target, rows in by_target.items():
                    self.conn.send_bytes(channel.envelope_frame(target, rows))
            except OSError:
                self.broken = True  # the supervisor is gone; the parent watch ends us
                return
            self.sent += sum(len(rows) for rows in by_target.values())

    def close(self, timeout: float) -> None:
        """Send what is queued (up to ``timeout``), then stop the thread."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
