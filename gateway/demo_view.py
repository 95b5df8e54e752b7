"""The demo's live terminal view: each device with a few key values, the group's current
against its breaker, any transport in trouble; drawn from the gateway's own ``/api/state``.

:func:`render_view` is pure (a state -> lines); :class:`LiveView` polls and prints it, in place
on a terminal (whose log then goes to a file: its last warnings are shown) or one picture after
another on a pipe.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, TextIO


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def render_view(state: dict[str, Any], header: str = "", width: int = 100) -> list[str]:
    """The compact picture: transports' health, each device's key values, the group's current
    against its breaker. Pure: a state as ``/api/state`` returns it -> lines."""
    transports = state.get("transports", [])
    running = sum(1 for t in transports if t["state"] == "running")
    lines = [f"{time.strftime('%H:%M:%S')}  {running}/{len(transports)} transports running"
             + (f"  {header}" if header else "")]
    for t in transports:
        if t["state"] != "running" or t.get("restarts"):
            why = t.get("last_error") or ""
            lines.append(f"  ! {t['name']}: {t['state']}, {t.get('restarts', 0)} restarts"
                         + (f", last error: {why}" if why else ""))
    devices = state.get("devices", [])
    if devices:
        name_width = min(28, max(len(f"{d['device']}") for d in devices))
        for d in devices:
            values = "  ".join(f"{k} {_fmt(v)}" for k, v in d.get("key_values", {}).items())
            if not d.get("available", True):
                values = f"UNAVAILABLE ({d.get('reason', '')})  " + values
            line = f"  {d['device']:<{name_width}} {d['age']:>5.0f}s  {values}"
            lines.append(line[:width])
    else:
        lines.append("  (no readings yet)")
    for g in state.get("groups", []):
        if not g.get("reachable"):
            lines.append(f"  load sharing [{g['section']}]: node not answering ({g['error']})")
            continue
        breaker = float(g.get("breaker") or 0)
        current = float(g.get("allocated") or 0)
        filled = round(20 * current / breaker) if breaker > 0 else 0
        bar = "#" * min(20, filled) + "-" * max(0, 20 - filled)
        members = ", ".join(f"{m['id']} {_fmt(m['target_current'])} A ({m['reason']})"
                            for m in g.get("members", []))
        failsafe = "  FAILSAFE" if g.get("failsafe") else ""
        drawn = g.get("drawn")
        drawing = f"{_fmt(float(drawn))} A drawn, " if isinstance(drawn, (int, float)) else ""
        lines.append(f"  load sharing [{g['section']}]: {drawing}{_fmt(current)} A allocated "
                     f"of a {_fmt(breaker)} A breaker [{bar}]{failsafe}")
        if members:
            lines.append(f"    {members}"[:width])
    return lines


class LiveView:
    """Polls the gateway's ``/api/state`` and prints :func:`render_view` every few seconds.

    On a terminal the screen is redrawn in place (the gateway's log then goes to a file); on
    a pipe each picture is printed after the previous one.
    """

    def __init__(self, url: str, interval: float, out: TextIO, header: str, *,
                 redraw: bool, started: float, log_path: Path | None = None) -> None:
        self.url, self.interval, self.out, self.header = url, interval, out, header
        self.redraw, self.started, self.log_path = redraw, started, log_path
        self.stop = threading.Event()
        self.first_reading: float | None = None
        self.thread = threading.Thread(target=self._loop, name="demo-view", daemon=True)

    def _fetch(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url, timeout=3) as response:
                value = json.load(response)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _loop(self) -> None:
        while not self.stop.wait(min(1.0, self.interval) if self.first_reading is None
                                 else self.interval):
            state = self._fetch()
            if state is None:
                continue
            if self.first_reading is None:
                if not state.get("devices"):
                    continue
                self.first_reading = time.monotonic() - self.started
            lines = render_view(state, width=shutil.get_terminal_size((100, 24)).columns)
            if self.log_path is not None:
                lines += _log_warnings(self.log_path)
            if self.redraw:
                self.out.write("\x1b[H\x1b[2J" + self.header + "\n")
            else:
                self.out.write("\n")
            self.out.write("\n".join(lines) + "\n")
            if self.first_reading is not None and not self.redraw:
                self.out.write(f"  (first reading {self.first_reading:.1f} s after start)\n")
            self.out.flush()


def _log_warnings(path: Path, count: int = 3) -> list[str]:
    """The log file's last warnings and errors, for the view that hides the log."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 65536))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    found = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line
             or line.startswith("Traceback")]
    if not found:
        return []
    return [f"  log ({path}):"] + [f"    {line[:140]}" for line in found[-count:]]
