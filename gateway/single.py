"""One transport, run in the supervisor's own process, under the multiprocess mode's rules.

Why not simply ``TransportHost.serve()``: a configuration with one transport (the commonest
on a small Pi: one charger, one inverter) deserves the same promises as a larger one. Here:

- the restart policy is the same data and the same decision (:func:`gateway.policy.decide`):
  a crashed transport is rebuilt after its backoff, more than ``restart_max_count`` crashes in
  ``restart_window`` mark it failed, retried after ``restart_failed_retry`` (0: the process
  exits 1 and the service manager takes over);
- the heartbeat is watched by a thread: the transport's loop must beat every
  ``heartbeat_interval``; silent for ``heartbeat_timeout`` means stuck. A stuck event loop
  cannot be cancelled from inside, so the process exits (code 70) and systemd's
  ``Restart=on-failure`` starts it again: the one case the two modes differ, and said so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

from gateway.config import TransportConfig
from gateway.policy import Failed, History, RestartPolicy, decide
from gateway.runner import TransportHost
from gateway.settings import GeneralSettings

EXIT_STUCK = 70


class InProcess:
    """The single transport's supervisor: restart policy, heartbeat watchdog, status row."""

    def __init__(self, config: TransportConfig, general: GeneralSettings,
                 log: logging.Logger, notifier: Any = None) -> None:
        self.config = config
        self.general = general
        self.log = log
        self.notifier = notifier
        self.policy = RestartPolicy.from_general(general)
        self.history = History()
        self.host: TransportHost | None = None
        self.state = "starting"
        self.restarts = 0
        self.last_error = ""
        self.last_error_at = 0.0
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        self._beat = time.monotonic()
        self._ready = False

    def request_stop(self) -> None:
        self.stopping.set()
        if self.host is not None:
            self.host.stop_requested.set()

    def beat(self) -> None:
        """Called on the loop by the host's heartbeat: the loop is alive."""
        self._beat = time.monotonic()
        if self.notifier is not None:
            if not self._ready:
                self._ready = True
                self.notifier.ready()
                self.notifier.status(f"1 transport: {self.config.name} running in-process")
            if self.notifier.watchdog_interval():
                self.notifier.watchdog()

    def _watch(self) -> None:
        """A thread: exit the process when the loop stops beating (nothing else can end it)."""
        timeout = self.general.heartbeat_timeout
        while True:
            time.sleep(min(1.0, self.general.heartbeat_interval))
            silent = time.monotonic() - self._beat
            if self.state == "running" and silent > timeout:
                self.log.error("%s sent no heartbeat for %.0f s: stuck; exiting (code %d) so "
                               "that the service manager restarts the gateway",
                               self.config.name, silent, EXIT_STUCK)
                logging.shutdown()
                os._exit(EXIT_STUCK)

    async def run(self) -> int:
        threading.Thread(target=self._watch, name="heartbeat-watch", daemon=True).start()
        while True:
            self.host = TransportHost(self.config, self.general, self.log, outbox=None)
            self.host.on_beat = self.beat
            if self.stopping.is_set():
                return 0
            self.state = "running"
            self._beat = started = time.monotonic()
            code = await self.host.serve()
            if self.stopping.is_set() or code == 0:
                self.state = "stopped"
                return code
            ran_for = time.monotonic() - started
            self.last_error = f"exited with code {code}"
            self.last_error_at = time.time()
            decision, self.history = decide(self.policy, self.history, ran_for,
                                            time.monotonic())
            if isinstance(decision, Failed):
                self.state = "failed"
                if decision.retry_after is None:
                    self.log.error("%s crashed more than %d times in %.0f s: giving up",
                                   self.config.name, self.policy.max_count, self.policy.window)
                    return code
                delay = decision.retry_after
                self.log.error("%s crashed more than %d times in %.0f s: marked failed, "
                               "retrying in %.0f s", self.config.name, self.policy.max_count,
                               self.policy.window, delay)
            else:
                self.state = "restarting"
                delay = decision.delay
                self.log.warning("%s crashed after %.1f s; restarting in %.1f s",
                                 self.config.name, ran_for, delay)
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except TimeoutError:
                pass
            self.restarts += 1

    def public(self) -> dict[str, Any]:
        """The status API's row, as :meth:`gateway.supervisor.Slot.public` has it."""
        stats: dict[str, Any] = dict(self.host.stats()) if self.host is not None else {}
        return {
            "name": self.config.name, "kind": self.config.kind, "state": self.state,
            "pid": None, "restarts": self.restarts,
            "envelopes_in": stats.get("envelopes_in", 0),
            "envelopes_out": stats.get("envelopes_out", 0),
            "dropped": stats.get("dropped", 0), "errors": stats.get("errors", 0),
            "last_error": self.last_error or stats.get("last_error", ""),
            "last_error_at": self.last_error_at or stats.get("last_error_at", 0.0),
            "recovered_at": stats.get("recovered_at", 0.0),
            "exit_code": None, "uptime": round(time.monotonic() - self.started, 1),
            "counters": dict(stats.get("extra") or {}),  # every counter it reports
        }
