"""The supervisor: one process per transport, restarts by policy, ordered shutdown, routing.

Mechanism only; the restart decision is :func:`gateway.policy.decide`. Start method:
``forkserver`` by default, the gateway's own (gateway/forkserver.py, docs/architecture.md): a
child starts in ~12 ms instead of spawn's ~80 ms, and, unlike ``fork``, inherits no threads,
sockets or asyncio loop from the supervisor. The server is started after a daemon detaches
(python-daemon closes every fd).

Per transport a :class:`Slot` holds what outlives its process: the restart history, the queue of
batches waiting for it, and the batches sent but not yet acknowledged (re-sent to the next
process after a crash: at-least-once). Three threads per slot move bytes, each waiting on its
pipe or its condition, never polling: ``up`` reads the child's data pipe and routes frames to
target slots; ``ctl`` reads its control pipe (heartbeats, acknowledgements); ``down`` writes
the slot's queue into its child's pipe. A full target queue blocks the ``up`` thread of its
sources (backpressure reaches the inputs) but never a ``ctl`` thread: no traffic can stall a
heartbeat or an acknowledgement (docs/architecture.md "No deadlock").

Size: over the ~400 guide on purpose: the routing threads and the process life share one
invariant (a slot's condition guards its queue, its unacknowledged batches, its pipe and its
state, and every change of any of them notifies it), easier to check in one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import transports
from gateway import channel
from gateway.config import GatewayConfig, TransportConfig, read_ini
from gateway.forkserver import ForkedChild, ForkServer, ForkServerError
from gateway.policy import Failed, History, Restart, RestartPolicy, decide

CHILD_TARGET = "gateway.runner:child_from_fds"  # what the fork server runs in a child

log = logging.getLogger("supervisor")

RUNNING, RESTARTING, FAILED, STOPPED, STARTING = (
    "running", "restarting", "failed", "stopped", "starting")
MAX_UNACKED = 32
SLOT_QUEUE = 256  # frames waiting in the supervisor for one target
_STOP = b"S"


@dataclass
class Slot:
    """One transport's place in the supervisor, across its successive processes."""

    config: TransportConfig
    state: str = STARTING
    process: Any = None
    pid: int | None = None
    up: Connection | None = None
    down: Connection | None = None
    restarts: int = 0
    history: History = field(default_factory=History)
    started_at: float = 0.0
    last_heartbeat: float = 0.0
    heartbeat_seen: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""
    last_error_at: float = 0.0
    exit_code: int | None = None
    dropped_for_target: int = 0
    queue: deque[bytes] = field(default_factory=deque)
    unacked: deque[tuple[int, bytes]] = field(default_factory=deque)
    cond: threading.Condition = field(default_factory=threading.Condition)
    next_batch: int = 1
    generation: int = 0
    restart_handle: asyncio.TimerHandle | None = None
    reader: threading.Thread | None = None
    kill_reason: str = ""

    @property
    def name(self) -> str:
        return self.config.name

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.config.kind, "state": self.state, "pid": self.pid,
            "restarts": self.restarts,
            "envelopes_in": self.stats.get("envelopes_in", 0),
            "envelopes_out": self.stats.get("envelopes_out", 0),
            "dropped": self.stats.get("dropped", 0) + self.dropped_for_target,
            "errors": self.stats.get("errors", 0),
            "last_error": self.last_error or self.stats.get("last_error", ""),
            "last_error_at": self.last_error_at or self.stats.get("last_error_at", 0.0),
            "recovered_at": self.stats.get("recovered_at", 0.0),
            "exit_code": self.exit_code,
            "counters": dict(self.stats.get("extra", {})),  # every counter it reports
        }


def forkserver_preload(kinds: set[str]) -> list[str]:
    """What the fork server imports, in order, shared by every child copy-on-write: the
    runner, the kinds' modules, last gateway.preloaded (what those list in ``PRELOAD``, then
    ``gc.freeze()``)."""
    return ["gateway.runner", *transports.modules_for(kinds), "gateway.preloaded"]


def start_forkserver_early(config_path: str) -> ForkServer | None:
    """Before the configuration is validated: from a plain read of the INI file, start the
    fork server when it will be needed, so that its imports and the validation run side by
    side (the supervisor adopts it). A file that does not parse is left to the validation.
    Only on the foreground path: a daemon starts its server after it detached (python-daemon
    closes every descriptor)."""
    try:
        raw, _ = read_ini(config_path)
    except Exception:  # noqa: BLE001 - the validation reports it properly
        return None
    sections = {name: values for name, values in raw.items() if name != "general"}
    method = raw.get("general", {}).get("start_method", "forkserver").strip()
    if len(sections) < 2 or method != "forkserver":
        return None  # one transport runs in-process; another start method has no server
    return ForkServer(forkserver_preload(
        {v.get("transport", "").strip() for v in sections.values()}))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return "exited normally" if code == 0 else f"exited with code {code}"


class Supervisor:
    def __init__(self, config: GatewayConfig, notifier: Any = None,
                 forkserver: ForkServer | None = None) -> None:
        self.config = config
        self.general = config.general
        self.policy = RestartPolicy.from_general(config.general)
        self.ctx = multiprocessing.get_context(config.general.start_method)
        #: forks the children (gateway/forkserver.py); spawn and fork use multiprocessing
        self.forkserver: ForkServer | None = None
        self._preload = forkserver_preload({tc.kind for tc in config.transports.values()})
        if config.general.start_method == "forkserver":
            self.forkserver = forkserver or ForkServer(self._preload)
        elif forkserver is not None:
            forkserver.close()
        self.slots = {name: Slot(tc) for name, tc in config.transports.items()}
        self.notifier = notifier
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutting_down = False
        self.done = asyncio.Event()
        self._ready_sent = False
        self._last_status = ""
        #: called with (source, frame) for every envelope frame (the status page's readings)
        self.frame_tap: Callable[[str, bytes], None] | None = None

    # ----------------------------------------------------------------- processes
    def start_slot(self, slot: Slot) -> None:
        if self.shutting_down:
            return
        up_r, up_w = self.ctx.Pipe(duplex=False)
        ctl_r, ctl_w = self.ctx.Pipe(duplex=False)
        down_r, down_w = self.ctx.Pipe(duplex=False)
        process: Any
        if self.forkserver is not None:
            process = self._fork(slot, [up_w.fileno(), ctl_w.fileno(), down_r.fileno()])
        else:
            from gateway.runner import child_main  # spawn/fork only: ~1 MB the server spares

            process = self.ctx.Process(
                target=child_main, name=f"pgw-{slot.name}",
                args=(slot.config, self.general, channel.ChildEnds(up_w, ctl_w, down_r)),
                daemon=False)
            process.start()
        up_w.close()
        ctl_w.close()
        down_r.close()
        with slot.cond:
            slot.process, slot.pid, slot.up, slot.down = process, process.pid, up_r, down_w
            slot.generation += 1
            slot.cond.notify_all()
        self._set_state(slot, RUNNING)
        slot.exit_code = None
        slot.started_at = slot.last_heartbeat = time.monotonic()
        slot.heartbeat_seen = False
        assert self.loop is not None
        self.loop.add_reader(process.sentinel, self._on_exit, slot, process)
        slot.reader = threading.Thread(target=self._up_loop, args=(slot, up_r), daemon=True,
                                       name=f"up-{slot.name}")
        slot.reader.start()
        threading.Thread(target=self._ctl_loop, args=(slot, ctl_r), daemon=True,
                         name=f"ctl-{slot.name}").start()
        log.info("started %s (%s) pid=%d", slot.name, slot.config.kind, process.pid)

    def _fork(self, slot: Slot, fds: list[int]) -> ForkedChild:
        """Fork ``slot``'s process; a fork server that died (killed, out of memory) is
        replaced once, logged once: its children died with it and restart through the new
        one."""
        assert self.forkserver is not None
        args = (slot.config, self.general)
        try:
            return self.forkserver.start(CHILD_TARGET, args, fds)
        except ForkServerError as exc:
            log.warning("%s; starting a new one", exc)
            self.forkserver.close(timeout=1.0)
            self.forkserver = ForkServer(self._preload)
            return self.forkserver.start(CHILD_TARGET, args, fds)

    def _on_exit(self, slot: Slot, process: Any) -> None:
        assert self.loop is not None
        self.loop.remove_reader(process.sentinel)
        process.join(0.1)
        code = process.exitcode
        ran_for = time.monotonic() - slot.started_at
        with slot.cond:
            if slot.process is process:
                slot.process, slot.pid = None, None
                if slot.down is not None:
                    slot.down.close()
                    slot.down = None
            slot.cond.notify_all()
        slot.exit_code = code
        if self.shutting_down or code == 0:
            self._set_state(slot, STOPPED)
            log.info("%s stopped (%s)", slot.name, describe_exit(code))
            self._update_status()
            return
        stuck = bool(slot.kill_reason)
        prefix = f"{slot.kill_reason}: " if slot.kill_reason else ""
        slot.last_error = prefix + describe_exit(code)
        slot.last_error_at = time.time()
        slot.kill_reason = ""
        decision, slot.history = decide(self.policy, slot.history, ran_for, time.monotonic())
        if stuck and isinstance(decision, Restart):
            # Killed by us as stuck: it did not crash, and a backoff would only add to the
            # outage the heartbeat timeout already cost. The intensity limit still counts it.
            decision = Restart(0.0)
        if isinstance(decision, Failed):
            self._set_state(slot, FAILED)
            when = (f"retrying in {decision.retry_after:.0f} s" if decision.retry_after
                    else "not retried")
            log.error("%s %s after %.1f s; more than %d restarts in %.0f s: marked failed, %s",
                      slot.name, describe_exit(code), ran_for, self.policy.max_count,
                      self.policy.window, when)
            if decision.retry_after:
                slot.restart_handle = self.loop.call_later(
                    decision.retry_after, self._restart, slot)
        else:
            self._set_state(slot, RESTARTING)
            log.warning("%s %s after %.1f s; restarting in %.1f s", slot.name,
                        describe_exit(code), ran_for, decision.delay)
            slot.restart_handle = self.loop.call_later(decision.delay, self._restart, slot)
        self._update_status()

    @staticmethod
    def _set_state(slot: Slot, state: str) -> None:
        """Change a slot's state and wake whoever waits on it (routers wait for FAILED)."""
        with slot.cond:
            slot.state = state
            slot.cond.notify_all()

    def _restart(self, slot: Slot) -> None:
        slot.restart_handle = None
        if self.shutting_down:
            return
        slot.restarts += 1
        self.start_slot(slot)

    # ----------------------------------------------------------------- routing
    @staticmethod
    def _frames(conn: Connection) -> Iterator[bytes]:
        """A child's frames until its pipe closes (closed on our side too)."""
        while True:
            try:
                yield conn.recv_bytes()
            except (EOFError, OSError):
                with contextlib.suppress(OSError):
                    conn.close()
                return

    def _up_loop(self, slot: Slot, conn: Connection) -> None:
        """Read one child's data frames and route them (may wait for a full target)."""
        for frame in self._frames(conn):
            if frame[:1] == b"E":
                if self.frame_tap is not None:
                    self.frame_tap(slot.name, frame)
                self._route(slot, frame)
            else:
                self._control(slot, frame)

    def _ctl_loop(self, slot: Slot, conn: Connection) -> None:
        """Read one child's heartbeats and acknowledgements; never waits for anything else."""
        for frame in self._frames(conn):
            self._control(slot, frame)

    def _control(self, slot: Slot, frame: bytes) -> None:
        kind = frame[:1]
        if kind == b"H":
            slot.stats = channel.parse_heartbeat(frame)
            slot.last_heartbeat = time.monotonic()
            slot.heartbeat_seen = True
        elif kind == b"A":
            batch_id = channel.parse_ack(frame)
            with slot.cond:
                while slot.unacked and slot.unacked[0][0] <= batch_id:
                    slot.unacked.popleft()
                slot.cond.notify_all()

    def _route(self, source: Slot, frame: bytes) -> None:
        name = channel.frame_target(frame)
        target = self.slots.get(name)
        if target is None or (target.state in (FAILED, STOPPED) and not self.shutting_down):
            self._drop(source, name, "does not exist" if target is None
                       else f"is {target.state}")
            return
        with target.cond:
            while len(target.queue) >= SLOT_QUEUE and target.state not in (FAILED, STOPPED):
                target.cond.wait()  # backpressure: this source's data waits, nothing else
            if len(target.queue) >= SLOT_QUEUE:
                dropped = True
            else:
                dropped = False
                target.queue.append(frame)
                target.cond.notify_all()
        if dropped:
            self._drop(source, name, f"is {target.state}")

    @staticmethod
    def _drop(source: Slot, name: str, why: str) -> None:
        source.dropped_for_target += 1
        if source.dropped_for_target == 1 or source.dropped_for_target % 1000 == 0:
            log.warning("dropping envelopes from %s: target %s %s (%d batches so far)",
                        source.name, name, why, source.dropped_for_target)

    def _down_ready(self, slot: Slot, sent_generation: int) -> bool:
        if slot.down is None:
            return False
        if slot.generation != sent_generation:
            return True
        return bool(slot.queue) and (slot.queue[0] is _STOP or len(slot.unacked) < MAX_UNACKED)

    def _down_loop(self, slot: Slot) -> None:
        """Feed a slot's queue to whichever process is its current one; re-send on restart."""
        sent_generation = 0
        while True:
            with slot.cond:
                while not self._down_ready(slot, sent_generation):
                    if slot.down is None and slot.state == STOPPED and self.shutting_down:
                        return
                    slot.cond.wait()
                conn, generation = slot.down, slot.generation
                assert conn is not None
                frames: list[bytes] = []
                if generation != sent_generation:
                    frames = [channel.batch_frame(i, f) for i, f in slot.unacked]
                else:
                    item = slot.queue.popleft()
                    if item is _STOP:
                        frames = [channel.STOP_FRAME]
                    else:
                        batch_id = slot.next_batch
                        slot.next_batch += 1
                        slot.unacked.append((batch_id, item))
                        frames = [channel.batch_frame(batch_id, item)]
                    slot.cond.notify_all()  # room for the routers waiting on this slot
            try:
                for frame in frames:
                    conn.send_bytes(frame)
                sent_generation = generation
            except OSError:
                # The child died mid-write; its successor gets everything unacknowledged.
                with slot.cond:
                    while slot.down is conn:
                        slot.cond.wait()

    # ----------------------------------------------------------------- watching
    async def _watchdog(self) -> None:
        """Kill a child whose heartbeat stopped: alive but stuck is broken too."""
        interval = min(1.0, self.general.heartbeat_interval)
        watchdog = self.notifier.watchdog_interval() if self.notifier else None
        while not self.shutting_down:
            now = time.monotonic()
            for slot in self.slots.values():
                if slot.state == RUNNING and slot.pid and (
                        now - slot.last_heartbeat > self.general.heartbeat_timeout):
                    slot.kill_reason = (f"stuck: no heartbeat for "
                                        f"{now - slot.last_heartbeat:.0f} s")
                    log.error("%s pid=%d sent no heartbeat for %.0f s: stuck, killing it",
                              slot.name, slot.pid, now - slot.last_heartbeat)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGKILL)
                    slot.last_heartbeat = now
            self._update_status()
            if self.notifier is not None and watchdog:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for slot in self.slots.values():
            counts[slot.state] = counts.get(slot.state, 0) + 1
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    def _update_status(self) -> None:
        if self.notifier is None:
            return
        if not self._ready_sent and all(
                s.heartbeat_seen or s.state in (FAILED, STOPPED) for s in self.slots.values()):
            self._ready_sent = True
            self.notifier.ready()
        text = self.summary()
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(f"{len(self.slots)} transports: {text}")

    # ----------------------------------------------------------------- life
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_shutdown, sig)
        for slot in self.slots.values():
            threading.Thread(target=self._down_loop, args=(slot,), daemon=True,
                             name=f"down-{slot.name}").start()
        for slot in self.slots.values():
            self.start_slot(slot)
        watchdog = asyncio.create_task(self._watchdog())
        await self.done.wait()
        watchdog.cancel()
        if self.forkserver is not None:
            self.forkserver.close()
        return 0

    def request_shutdown(self, sig: int | None = None) -> None:
        if self.shutting_down:
            return
        log.info("received %s: stopping inputs, then outputs",
                 signal.Signals(sig).name if sig else "stop")
        if self.notifier is not None:
            self.notifier.stopping()
        assert self.loop is not None
        self.loop.create_task(self.shutdown())

    def stop_order(self) -> list[list[Slot]]:
        """Inputs (nobody bridges to them) first, then everything that receives."""
        targets = {t for s in self.slots.values() for t in s.config.settings.bridge}
        first = [s for s in self.slots.values() if s.name not in targets]
        rest = [s for s in self.slots.values() if s.name in targets]
        return [group for group in (first, rest) if group]

    async def shutdown(self) -> None:
        self.shutting_down = True
        for slot in self.slots.values():
            if slot.restart_handle is not None:
                slot.restart_handle.cancel()
            if slot.state in (RESTARTING, FAILED, STARTING):
                self._set_state(slot, STOPPED)
        deadline = time.monotonic() + self.general.shutdown_timeout
        for group in self.stop_order():
            for slot in group:
                if slot.process is not None:
                    with slot.cond:
                        slot.queue.append(_STOP)  # may exceed SLOT_QUEUE by this one
                        slot.cond.notify_all()
            await self._wait_exit(group, deadline)
        log.info("all transports stopped")
        self.done.set()

    async def _wait_exit(self, group: list[Slot], deadline: float) -> None:
        def busy(slot: Slot) -> bool:
            # Exited, and everything it wrote has been read and routed.
            return slot.process is not None or (
                slot.reader is not None and slot.reader.is_alive())

        while any(busy(s) for s in group):
            if time.monotonic() > deadline:
                for slot in group:
                    if slot.process is not None and slot.pid:
                        log.warning("%s did not stop in time: killing pid %d", slot.name,
                                    slot.pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(slot.pid, signal.SIGKILL)
                deadline = time.monotonic() + 2.0
            await asyncio.sleep(0.05)
