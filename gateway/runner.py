"""Runs one transport: its event loop, its bridge link, its heartbeat, its orderly stop.

The same :class:`TransportHost` serves the in-process mode (one transport, no pipes) and the
child-process mode (:func:`child_main`, the target of each ``multiprocessing.Process``).
Everything a transport should not have to write lives here: batching envelopes to the bridge,
backpressure, the heartbeat the supervisor watches for a stuck loop, counting, noticing that
the supervisor is gone (within ~1 s, even after a SIGKILL of the supervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection

import transports
from gateway import channel, logs
from gateway.config import TransportConfig
from gateway.message import Envelope
from gateway.settings import GeneralSettings
from transports.base import Transport, TransportContext

BATCH_MAX = 500
INBOX_BATCHES = 64
PARENT_GONE_GRACE = 1.0


class Outbox:
    """Envelopes waiting to go up the pipe, sent in batches by a thread of their own.

    The event loop never blocks on a pipe write: ``put`` appends under a lock; the sender
    thread takes whatever has accumulated (natural batching: one envelope when idle, hundreds
    under load) and writes one frame per target. Bounded by ``capacity``; when full, the
    ``block`` policy makes ``emit`` wait (backpressure), ``drop_oldest`` drops and counts.
    """

    def __init__(self, conn: Connection | None, capacity: int, policy: str,
                 log: logging.Logger, batch_max: int = BATCH_MAX) -> None:
        self.conn = conn
        self.batch_max = batch_max
        self.capacity = capacity
        self.policy = policy
        self.log = log
        self.items: deque[tuple[str, Envelope]] = deque()
        self.control: deque[bytes] = deque()
        self.cond = threading.Condition()
        self.closed = False
        self.dropped = 0
        self.sent = 0
        self.broken = False
        self._thread = threading.Thread(target=self._send_loop, name="outbox", daemon=True)
        if conn is not None:
            self._thread.start()

    def has_room(self) -> bool:
        return len(self.items) < self.capacity

    def put(self, target: str, envelope: Envelope) -> bool:
        """Queue one envelope; False when full under the block policy (caller waits)."""
        with self.cond:
            if len(self.items) >= self.capacity:
                if self.policy != "drop_oldest":
                    return False
                self.items.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    self.log.warning("bridge full: dropped %d oldest envelopes so far "
                                     "(queue_full_policy = drop_oldest)", self.dropped)
            self.items.append((target, envelope))
            self.cond.notify()
        return True

    def put_many(self, items: list[tuple[str, Envelope]]) -> int:
        """Queue as many of ``items`` as fit (all under drop_oldest); returns how many."""
        with self.cond:
            room = self.capacity - len(self.items)
            if self.policy != "drop_oldest":
                items = items[:max(room, 0)]
            else:
                overflow = len(items) - room
                for _ in range(max(overflow, 0)):
                    if self.items:
                        self.items.popleft()
                        self.dropped += 1
                if overflow > 0:
                    self.log.warning("bridge full: dropped %d oldest envelopes so far "
                                     "(queue_full_policy = drop_oldest)", self.dropped)
            self.items.extend(items)
            self.cond.notify()
        return len(items)

    def put_control(self, frame: bytes) -> None:
        with self.cond:
            self.control.append(frame)
            self.cond.notify()

    def _send_loop(self) -> None:
        assert self.conn is not None
        while True:
            with self.cond:
                while not self.items and not self.control and not self.closed:
                    self.cond.wait()
                if self.closed and not self.items and not self.control:
                    return
                control = list(self.control)
                self.control.clear()
                batch = [self.items.popleft() for _ in range(min(self.batch_max, len(self.items)))]
            frames = control[:]
            by_target: dict[str, list[Envelope]] = {}
            for target, envelope in batch:
                by_target.setdefault(target, []).append(envelope)
            frames += [channel.envelope_frame(t, envs) for t, envs in by_target.items()]
            try:
                for frame in frames:
                    self.conn.send_bytes(frame)
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


class TransportHost:
    """One transport's life inside its process (or the supervisor's, in single mode)."""

    def __init__(self, config: TransportConfig, general: GeneralSettings,
                 log: logging.Logger, outbox: Outbox | None) -> None:
        self.config = config
        self.general = general
        self.log = log
        self.outbox = outbox
        self.targets = config.settings.bridge
        self.ctx = TransportContext(config.name, general, self._emit, log, self._emit_many)
        cls = transports.get(config.kind)
        self.transport: Transport = cls(config.settings, self.ctx)
        self.inbox: asyncio.Queue[tuple[int, list[Envelope]]] = asyncio.Queue()
        self.on_batch_done: Callable[[], None] = lambda: None
        self.stop_task: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()
        self._busy = False

    async def _emit(self, envelope: Envelope) -> None:
        target = envelope.target_transport
        targets = self.targets if target is None else (
            (target,) if isinstance(target, str) else target)
        if self.outbox is None or not targets:
            self.ctx.counters.extra["unrouted"] = int(
                self.ctx.counters.extra.get("unrouted", 0)) + 1
            self.log.debug("no bridge target for %s envelope %d", envelope.kind,
                           envelope.sequence)
            return
        for name in targets:
            while not self.outbox.put(name, envelope):
                await asyncio.sleep(0.005)  # backpressure: the bridge is full

    async def _emit_many(self, envelopes: list[Envelope]) -> None:
        if self.outbox is None:
            for envelope in envelopes:
                await self._emit(envelope)
            return
        items = []
        for envelope in envelopes:
            target = envelope.target_transport
            targets = self.targets if target is None else (
                (target,) if isinstance(target, str) else target)
            items += [(name, envelope) for name in targets]
        while items:
            done = self.outbox.put_many(items)
            items = items[done:]
            if items:
                await asyncio.sleep(0.005)  # backpressure: the bridge is full

    def stats(self) -> dict[str, object]:
        c = self.ctx.counters
        return {
            "time": time.monotonic(), "envelopes_in": c.envelopes_in,
            "envelopes_out": c.envelopes_out, "errors": c.errors, "last_error": c.last_error,
            "dropped": c.dropped + (self.outbox.dropped if self.outbox else 0),
            "extra": dict(c.extra),
        }

    async def _heartbeat(self) -> None:
        while True:
            if self.outbox is not None:
                self.outbox.put_control(channel.heartbeat_frame(self.stats()))
            await asyncio.sleep(self.general.heartbeat_interval)

    async def _consume(self) -> None:
        accepts = self.transport.accepts
        while True:
            batch_id, envelopes = await self.inbox.get()
            self._busy = True
            self.ctx.counters.envelopes_in += len(envelopes)
            wanted = [e for e in envelopes if e.kind in accepts]
            try:
                if wanted:
                    await self.transport.receive_batch(wanted)
            except Exception as exc:
                self.ctx.counters.error(f"receive: {exc}")
                self.log.exception("error handling %d envelope(s) from %s", len(wanted),
                                   sorted({e.source_transport for e in wanted}))
            finally:
                self._busy = False
            if self.outbox is not None and batch_id:
                self.outbox.put_control(channel.ack_frame(batch_id))
            self.on_batch_done()
            self.inbox.task_done()

    async def _life(self) -> None:
        await self.transport.connect()
        await self.transport.run()

    async def serve(self) -> int:
        """Run until the transport ends or a stop is requested; return the exit code."""
        tasks = [asyncio.create_task(self._heartbeat(), name="heartbeat"),
                 asyncio.create_task(self._consume(), name="consume")]
        life = asyncio.create_task(self._life(), name="life")
        stop = asyncio.create_task(self.stop_requested.wait(), name="stop")
        code = 0
        await asyncio.wait({life, stop}, return_when=asyncio.FIRST_COMPLETED)
        if life.done() and not self.stop_requested.is_set():
            exc = life.exception()
            if exc is not None:
                self.log.error("transport crashed: %s: %s", type(exc).__name__, exc,
                               exc_info=exc)
                code = 1
            else:
                self.log.info("transport finished")
        self.ctx.stopping.set()
        if not life.done():
            life.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await life
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.inbox.join(), self.general.shutdown_timeout / 2)
        try:
            await asyncio.wait_for(self.transport.close(), self.general.shutdown_timeout / 2)
        except Exception as exc:  # noqa: BLE001 - report, then still exit in order
            self.log.error("error while closing: %s", exc)
            code = code or 1
        stop.cancel()
        for task in tasks:
            task.cancel()
        if self.outbox is not None:
            self.outbox.put_control(channel.heartbeat_frame(self.stats()))
        return code


def _watch_parent(log: logging.Logger, on_gone: threading.Event) -> None:
    """Exit soon after the supervisor dies, however it died (SIGKILL included)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    on_gone.set()
    log.warning("supervisor is gone; exiting")
    time.sleep(PARENT_GONE_GRACE)
    os._exit(70)


def _set_parent_death_signal() -> None:
    """Linux: have the kernel SIGKILL us when the process that forked us dies (belt and braces)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_main(config: TransportConfig, general: GeneralSettings, up: Connection,
               down: Connection) -> None:
    """Entry point of a transport's process."""
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the supervisor orders the shutdown
    log = logs.setup(config.name, general.log_level, general.log_file)
    parent_gone = threading.Event()
    threading.Thread(target=_watch_parent, args=(log, parent_gone), daemon=True,
                     name="parent-watch").start()
    code = asyncio.run(_child_async(config, general, up, down, log))
    logging.shutdown()
    os._exit(code)


async def _child_async(config: TransportConfig, general: GeneralSettings, up: Connection,
                       down: Connection, log: logging.Logger) -> int:
    outbox = Outbox(up, general.channel_capacity, general.queue_full_policy, log,
                    general.bridge_batch_max)
    try:
        host = TransportHost(config, general, log, outbox)
    except Exception as exc:
        log.error("cannot create transport %s: %s", config.kind, exc, exc_info=exc)
        outbox.close(1.0)
        return 1
    loop = asyncio.get_running_loop()
    slots = threading.Semaphore(INBOX_BATCHES)

    def hand_over(frame: bytes) -> None:
        """On the loop: parse (all CPU work stays on one thread: no GIL ping-pong)."""
        try:
            what, batch_id, envelopes = channel.parse_down(frame)
        except Exception as exc:  # noqa: BLE001 - a bad frame is logged, not fatal
            log.error("bad frame from the supervisor: %s", exc)
            slots.release()
            return
        if what == "stop":
            slots.release()
            host.stop_task = loop.create_task(_stop_after_inbox(host))  # after queued batches
            return
        host.inbox.put_nowait((batch_id, envelopes))

    def read_down() -> None:
        while True:
            slots.acquire()  # at most INBOX_BATCHES waiting: backpressure up the chain
            try:
                frame = down.recv_bytes()
            except (EOFError, OSError):
                loop.call_soon_threadsafe(host.stop_requested.set)
                return
            try:
                loop.call_soon_threadsafe(hand_over, frame)
            except RuntimeError:
                return
            if frame == channel.STOP_FRAME:
                return

    host.on_batch_done = slots.release
    threading.Thread(target=read_down, name="bridge-in", daemon=True).start()
    code = await host.serve()
    outbox.close(general.shutdown_timeout / 2)
    log.debug("exiting with code %d", code)
    return code


async def _stop_after_inbox(host: TransportHost) -> None:
    await host.inbox.join()
    host.stop_requested.set()
