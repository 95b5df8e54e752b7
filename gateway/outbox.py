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


class Outbox:
    """Envelopes waiting to go up the pipe, sent in batches by a thread of their own.

    The event loop never blocks on a pipe write: ``put`` appends under a lock; the sender
    thread takes whatever has accumulated (natural batching: one envelope when idle, hundreds
    under load) and writes one frame per target. Bounded by ``capacity``; when full, the
    ``block`` policy makes ``emit`` wait (backpressure), ``drop_oldest`` drops and counts.
    ``urgent`` puts (command results, commands inside their window) never wait and never
    drop: they are bounded by the command windows instead (gateway/commands.py).
    """

    def __init__(self, conn: Connection | None, capacity: int, policy: str,
                 log: logging.Logger, batch_max: int = BATCH_MAX) -> None:
        self.conn = conn
        self.batch_max = batch_max
        self.capacity = capacity
        self.policy = policy
        self.log = log
        self.items: deque[tuple[str, channel.Row]] = deque()
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

    def has_room(self) -> bool:
        return len(self.items) < self.capacity

    def put(self, target: str, envelope: Envelope, urgent: bool = False) -> bool:
        """Queue one envelope; False when full under the block policy (caller waits)."""
        with self.cond:
            if len(self.items) >= self.capacity and not urgent:
                if self.policy != "drop_oldest":
                    return False
                self.items.popleft()
                self.drops.dropped(1)
            self.items.append((target, channel.row(envelope)))
            self.cond.notify()
        return True

    def put_many(self, items: list[tuple[str, channel.Row]]) -> int:
        """Queue as many of ``items`` (rows) as fit (all under drop_oldest); returns how many."""
        with self.cond:
            room = self.capacity - len(self.items)
            if self.policy != "drop_oldest":
                items = items[:max(room, 0)]
            else:
                dropped = 0
                for _ in range(max(len(items) - room, 0)):
                    if self.items:
                        self.items.popleft()
                        dropped += 1
                self.drops.dropped(dropped)
            self.items.extend(items)
            self.cond.notify()
        return len(items)

    def _send_loop(self) -> None:
        assert self.conn is not None
        while True:
            with self.cond:
                while not self.items and not self.closed:
                    self.cond.wait()
                if self.closed and not self.items:
                    return
                batch = [self.items.popleft() for _ in range(min(self.batch_max, len(self.items)))]
            by_target: dict[str, list[channel.Row]] = {}
            for target, item in batch:
                by_target.setdefault(target, []).append(item)
            try:
                for target, envs in by_target.items():
                    self.conn.send_bytes(channel.envelope_frame(target, envs))
            except OSError:
                self.broken = True  # the supervisor is gone; the parent watch ends us
                return
            self.sent += len(batch)

    def close(self, timeout: float) -> None:
        """Send what is queued (up to ``timeout``), then stop the thread."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
