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
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import transports
from gateway import channel, logs
from gateway.commands import CommandWindow
from gateway.config import TransportConfig
from gateway.message import COMMAND, EVENT, Envelope, command_result
from gateway.outbox import ControlLine, Outbox
from gateway.settings import GeneralSettings
from transports.base import Transport, TransportContext, describe_answer

INBOX_BATCHES = 64
PARENT_GONE_GRACE = 1.0
GC_THRESHOLD = 20_000


InboxItem = tuple[list[Envelope], Callable[[], None] | None]


class TransportHost:
    """One transport's life inside its process (or the supervisor's, in single mode).

    The inbox path (``_consume``) never waits on the bridge: readings go to ``receive_batch``,
    commands to a bounded queue of their own (``busy`` when full), results free the command
    window. That is what keeps two transports that send to each other from blocking each
    other (docs/architecture.md "No deadlock").
    """

    def __init__(self, config: TransportConfig, general: GeneralSettings,
                 log: logging.Logger, outbox: Outbox | None,
                 control: ControlLine | None = None) -> None:
        self.config = config
        self.general = general
        self.log = log
        self.outbox = outbox
        self.control = control
        self.targets = config.settings.bridge
        self.ctx = TransportContext(config.name, general, self._emit, log, self._emit_many,
                                    commander=self._command)
        cls = transports.get(config.kind)
        self.transport: Transport = cls(config.settings, self.ctx)
        self.inbox: asyncio.Queue[InboxItem] = asyncio.Queue()
        self.window = CommandWindow(general.command_window, general.command_timeout)
        self.commands: asyncio.Queue[Envelope] = asyncio.Queue(general.command_queue)
        self.stop_task: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()
        self.on_beat: Callable[[], None] = lambda: None  # single mode's watchdog
        self._busy = False

    def _targets(self, envelope: Envelope) -> tuple[str, ...]:
        target = envelope.target_transport
        if target is None:
            return tuple(self.targets)
        return (target,) if isinstance(target, str) else tuple(target)

    async def _emit(self, envelope: Envelope) -> None:
        targets = self._targets(envelope)
        if self.outbox is None or not targets:
            self.ctx.counters.incr("unrouted")
            self.log.debug("no bridge target for %s envelope %d", envelope.kind,
                           envelope.sequence)
            return
        for name in targets:
            while not self.outbox.put(name, envelope):
                await asyncio.sleep(0.005)  # backpressure: the bridge is full

    async def _emit_many(self, rows: list[channel.Row]) -> None:
        """Rows straight from ``emit_many``: no envelope object is built on this side."""
        if self.outbox is None:
            for item in rows:
                await self._emit(Envelope(*item))
            return
        if all(item[3] is None for item in rows):
            chunks = [(name, rows) for name in self.targets]  # one list, shared: never mutated
        else:
            by_target: dict[str, list[channel.Row]] = {}
            for item in rows:
                for name in self._targets(Envelope(*item)):
                    by_target.setdefault(name, []).append(item)
            chunks = list(by_target.items())
        while chunks:
            chunks = self.outbox.put_many(chunks)
            if chunks:
                await asyncio.sleep(0.005)  # backpressure: the bridge is full

    # -- commands ------------------------------------------------------------------------
    def _command(self, envelope: Envelope) -> None:
        """Send a command inside its target's window, or answer it ``busy`` here; never wait."""
        data = envelope.data
        if not data.get("request_id"):
            data = envelope.data = {**data, "request_id": f"{self.ctx.name}-{envelope.sequence}"}
        for target in self._targets(envelope):
            if self.outbox is None:
                self._answer_locally(target, data, "error", "no bridge in single-transport mode")
            elif not self.window.admit(target, str(data["request_id"]), data,
                                       time.monotonic()):
                self.ctx.counters.incr("commands_busy")
                self._answer_locally(target, data, "busy",
                                     f"{target} has {self.window.size} commands unanswered")
            else:
                self.outbox.put(target, envelope, urgent=True)

    def _answer_locally(self, target: str, data: dict[str, object], result: str,
                        detail: str) -> None:
        """A result for our own command, as if ``target`` had sent it."""
        answer = Envelope(target, EVENT, command_result(data, False, result, detail),
                          self.ctx.name)
        if EVENT in self.transport.accepts:
            self.inbox.put_nowait(([answer], None))

    def _answer(self, command: Envelope, ok: bool, result: str, detail: str = "",
                info: dict[str, str] | None = None) -> None:
        """Answer a command that came to us; never waits (bounded by the senders' windows)."""
        env = self.ctx.envelope(EVENT, command_result(command.data, ok, result, detail),
                                command.source_transport, info)
        if self.outbox is not None:
            self.outbox.put(command.source_transport, env, urgent=True)
            self.ctx.counters.envelopes_out += 1

    def _describe(self, command: Envelope) -> bool:
        """Answer ``describe`` from the transport's ``describe()``; False if it has none."""
        answer = describe_answer(self.transport, command)
        if answer is None:
            return False
        for kind, data, info in answer:
            env = self.ctx.envelope(kind, data, command.source_transport, info)
            if self.outbox is not None:
                self.outbox.put(command.source_transport, env, urgent=True)
                self.ctx.counters.envelopes_out += 1
        return True

    def _admit(self, command: Envelope) -> None:
        if command.data.get("command") == "describe" and self._describe(command):
            return
        try:
            self.commands.put_nowait(command)
        except asyncio.QueueFull:
            self.ctx.counters.incr("commands_refused_busy")
            self._answer(command, False, "busy",
                         f"{self.ctx.name} has {self.commands.maxsize} commands waiting")

    async def _run_commands(self) -> None:
        """Commands one at a time, in arrival order: one writer per device."""
        while True:
            command = await self.commands.get()
            try:
                await self.transport.receive(command)
            except Exception as exc:
                self.ctx.counters.error(f"command: {exc}")
                self.log.exception("command %s from %s failed", command.data.get("command"),
                                   command.source_transport)
                self._answer(command, False, "error", str(exc))
            finally:
                self.commands.task_done()

    def _expire(self) -> None:
        for target, data in self.window.expired(time.monotonic()):
            self.ctx.counters.incr("commands_timeout")
            self._answer_locally(target, data, "timeout",
                                 f"no answer from {target} in {self.window.timeout:g} s")

    # -- the inbox -----------------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        c = self.ctx.counters
        return {
            "time": time.monotonic(), "envelopes_in": c.envelopes_in,
            "envelopes_out": c.envelopes_out, "errors": c.errors, "last_error": c.last_error,
            "last_error_at": c.last_error_at, "recovered_at": c.recovered_at,
            "dropped": c.dropped + (self.outbox.dropped if self.outbox else 0),
            "extra": dict(c.extra),
        }

    async def _heartbeat(self) -> None:
        while True:
            if self.control is not None:
                self.control.send(channel.heartbeat_frame(self.stats()))
            self.on_beat()
            self._expire()
            await asyncio.sleep(self.general.heartbeat_interval)

    async def _consume(self) -> None:
        accepts = self.transport.accepts
        records = self.transport.records_commands
        while True:
            envelopes, done = await self.inbox.get()
            self._busy = True
            self.ctx.counters.envelopes_in += len(envelopes)
            kinds = {e.kind for e in envelopes}
            if COMMAND not in kinds and EVENT not in kinds:  # readings: the hot path
                wanted = envelopes if kinds <= accepts else [
                    e for e in envelopes if e.kind in accepts]
            else:
                wanted = self._sort_in(envelopes, accepts, records)
            try:
                if wanted:
                    await self.transport.receive_batch(wanted)
            except Exception as exc:
                self.ctx.counters.error(f"receive: {exc}")
                self.log.exception("error handling %d envelope(s) from %s", len(wanted),
                                   sorted({e.source_transport for e in wanted}))
            finally:
                self._busy = False
            if done is not None:
                done()
            self.inbox.task_done()

    def _sort_in(self, envelopes: list[Envelope], accepts: frozenset[str], records: bool
                 ) -> list[Envelope]:
        """Commands to their queue, results to the command window; the rest for receive."""
        wanted = []
        for e in envelopes:
            if e.kind == COMMAND and not records:
                if COMMAND in accepts:
                    self._admit(e)
                else:
                    self._answer(e, False, "unsupported", f"{self.ctx.name} takes no commands")
                continue
            if e.kind == EVENT and e.data.get("event") == "command_result":
                self.window.answered(e.source_transport, str(e.data.get("request_id")))
            if e.kind in accepts:
                wanted.append(e)
        return wanted

    async def _life(self) -> None:
        await self.transport.connect()
        await self.transport.run()

    async def serve(self) -> int:
        """Run until the transport ends or a stop is requested; return the exit code."""
        tasks = [asyncio.create_task(self._heartbeat(), name="heartbeat"),
                 asyncio.create_task(self._consume(), name="consume"),
                 asyncio.create_task(self._run_commands(), name="commands")]
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
        if self.control is not None:
            self.control.send(channel.heartbeat_frame(self.stats()))
        return code


def tune_gc() -> None:
    """Collect less often, and never scan what the imports made.

    A child tracks ~80k objects after its imports; every young collection that reaches an old
    generation walks them all, about half the bridge's CPU when measured. ``gc.freeze()``
    (also done in the forkserver, gateway/preloaded.py) moves them out of the collector's
    sight; a higher first threshold makes the young collections rarer. Cycles are still
    collected: the envelopes on the hot path are acyclic and freed by reference counting.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def _watch_parent(log: logging.Logger, on_gone: threading.Event) -> None:
    """Exit soon after the supervisor dies, however it died (SIGKILL included). Under spawn
    or fork only: a child of the fork server has no multiprocessing parent, and the kernel
    ends it with the server, which ends with the supervisor (:func:`_set_parent_death_signal`)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    multiprocessing.connection.wait([parent.sentinel])
    on_gone.set()
    log.warning("supervisor is gone; exiting")
    time.sleep(PARENT_GONE_GRACE)
    os._exit(70)


def _set_parent_death_signal() -> None:
    """Linux: have the kernel SIGKILL us when the process that forked us dies: the fork
    server, which exits when the supervisor does (gateway/forkserver.py)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def child_main(config: TransportConfig, general: GeneralSettings,
               ends: channel.ChildEnds) -> None:
    """Entry point of a transport's process."""
    _set_parent_death_signal()
    tune_gc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the supervisor orders the shutdown
    log = logs.setup(config.name, general.log_level, general.log_file)
    parent_gone = threading.Event()
    threading.Thread(target=_watch_parent, args=(log, parent_gone), daemon=True,
                     name="parent-watch").start()
    code = asyncio.run(_child_async(config, general, ends, log))
    logging.shutdown()
    os._exit(code)


def child_from_fds(fds: list[int], config: TransportConfig, general: GeneralSettings) -> None:
    """Entry point of a transport forked by gateway/forkserver.py: its three pipes arrive as
    descriptors (up, control, down)."""
    up, ctl, down = fds
    child_main(config, general, channel.ChildEnds(
        Connection(up, readable=False), Connection(ctl, readable=False),
        Connection(down, writable=False)))


async def _child_async(config: TransportConfig, general: GeneralSettings,
                       ends: channel.ChildEnds, log: logging.Logger) -> int:
    outbox = Outbox(ends.up, general.channel_capacity, general.queue_full_policy, log,
                    general.bridge_batch_max)
    control = ControlLine(ends.ctl)
    down = ends.down
    try:
        host = TransportHost(config, general, log, outbox, control)
    except Exception as exc:
        log.error("cannot create transport %s: %s", config.kind, exc, exc_info=exc)
        outbox.close(1.0)
        control.close(1.0)
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

        def done() -> None:
            control.send(channel.ack_frame(batch_id))
            slots.release()

        host.inbox.put_nowait((envelopes, done))

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

    threading.Thread(target=read_down, name="bridge-in", daemon=True).start()
    code = await host.serve()
    outbox.close(general.shutdown_timeout / 2)
    control.close(1.0)
    log.debug("exiting with code %d", code)
    return code


async def _stop_after_inbox(host: TransportHost) -> None:
    await host.inbox.join()
    host.stop_requested.set()
