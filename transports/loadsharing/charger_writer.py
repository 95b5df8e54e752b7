"""The one writer of a grouped charger's current: node limit + user preference -> commands.

Sans-I/O (the clock passed in, commands returned), so the rules are property-tested
(pytests/test_loadsharing_writer.py) and every role of the transport uses the same ones:

- the charger offers ``min(node limit, user maximum)``, 0 (paused) when the user paused it or the
  result is below the charger's minimum: a person's write never raises a charger above what its
  node allows; it lowers it, and the preference is kept across restarts (:class:`PreferenceStore`);
- the watchdog: a charger status showing more than that (changed at the charger's own display or
  WiFi page, a lost write, a reboot that restored its own maximum) is put back at once, once a
  write had ``grace`` seconds to land, and logged once per episode (and its end once);
- restarts and role changes start from nothing sent: the first limit a node gives (its fallback
  or lower) always goes out, so a charger never stays at a value nobody now stands behind.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transports.charger import ChargerStatus, Command, Pause, Resume, SetLimit, UserRequest

FILE_NAME = "charger_preference.json"


@dataclass
class Preference:
    """What the user asked of this charger: at most ``max_current`` A; ``paused``: not at all."""

    max_current: float | None = None
    paused: bool = False


class PreferenceStore:
    """The preference in the transport's state directory (atomic write, tolerant read)."""

    def __init__(self, state_dir: Path, log: logging.Logger) -> None:
        self.path = state_dir / FILE_NAME
        self.log = log

    def load(self) -> Preference:
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Preference()
        except (OSError, ValueError) as exc:
            self.log.warning("%s unreadable (%s): no user preference", self.path, exc)
            return Preference()
        amps = body.get("max_current") if isinstance(body, dict) else None
        if isinstance(amps, bool) or not isinstance(amps, int | float) \
                or not math.isfinite(amps) or amps < 0:
            amps = None
        paused = bool(body.get("paused")) if isinstance(body, dict) else False
        return Preference(amps, paused)

    def save(self, pref: Preference) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"max_current": pref.max_current, "paused": pref.paused}))
        tmp.replace(self.path)


class ChargerWriter:
    def __init__(self, *, max_current: int, min_current: int, grace: float,
                 preference: Preference | None = None,
                 log: logging.Logger | None = None) -> None:
        self.max_current = max_current  # the INI's: no request goes above it
        self.min_current = min_current
        self.grace = grace
        self.preference = preference or Preference()
        self.log = log or logging.getLogger("loadsharing.charger")
        self.limit: int | None = None  # the node's (or role's) limit; None: none yet
        self.stop = False  # pause means disable (the group's disable-mode failsafe)
        self.sent: int | None = None  # what the charger was last told to offer
        self.sent_at = -math.inf
        self.status: ChargerStatus | None = None
        self.logged = False  # a deviation episode was logged (its end is, once)
        self.corrections = 0

    # -- what the charger should offer ------------------------------------------------------
    def target(self) -> int | None:
        if self.limit is None:
            return None
        amps = self.limit
        if self.preference.paused:
            return 0
        if self.preference.max_current is not None:
            amps = min(amps, math.floor(self.preference.max_current))
        return amps if amps >= max(1, self.min_current) else 0

    def allocation_max(self) -> int:
        """The maximum this member asks of the allocation (the user's, within the INI)."""
        amps = self.max_current
        if self.preference.max_current is not None:
            amps = min(amps, math.floor(self.preference.max_current))
        return max(amps, self.min_current)

    @property
    def wants_charge(self) -> bool:
        """False when the user paused, or asked less than the charger's minimum."""
        p = self.preference
        return not p.paused and (p.max_current is None or p.max_current >= self.min_current)

    # -- inputs -----------------------------------------------------------------------------
    def set_limit(self, amps: int, now: float, *, stop: bool = False) -> list[Command]:
        self.limit, self.stop = amps, stop
        return self._sync(now)

    def resend(self, now: float) -> list[Command]:
        """The charger fell back on its own (a missed pulse): say the limit again."""
        return self._sync(now, force=True)

    def restart(self) -> None:
        """A new node or role takes over: nothing sent counts; its first limit goes out."""
        self.sent = None
        self.limit = None

    def request(self, req: UserRequest, now: float) -> tuple[list[Command], dict[str, Any]]:
        """A user's write: the new preference, the commands, and what to tell the user."""
        p = self.preference
        asked = req.amps
        if asked is not None:
            p.max_current = min(float(asked), float(self.max_current))
            if asked > 0:
                p.paused = False
        if req.charging is not None:
            p.paused = not req.charging
        cmds = self._sync(now, force=True)  # a write also makes the charger report at once
        applied = self.target()
        detail = self._explain(asked, req.charging, applied)
        result = "ok" if asked is None or applied is None or applied >= asked else "limited"
        return cmds, {"ok": True, "result": result, "detail": detail,
                      **({"amps": applied} if applied is not None else {})}

    def on_status(self, status: ChargerStatus, now: float) -> list[Command]:
        """The watchdog: a charger above its target is put back (after ``grace``)."""
        self.status = status
        over = self._over(status)
        if over is None:
            if self.logged:
                self.log.info("charger back within this node's limit (%s A)", self.target())
            self.logged = False
            return []
        if now - self.sent_at < self.grace:
            return []  # our last write may not have landed yet: the next status tells
        if not self.logged:
            self.logged = True
            self.log.warning("charger %s, above this node's limit %s A (changed at the "
                             "charger, a lost write or a reboot): setting it back", over,
                             self.target())
        self.corrections += 1
        return self._sync(now, force=True)

    def _over(self, status: ChargerStatus) -> str | None:
        """How the charger exceeds its target, or None."""
        target = self.target()
        if target is None or self.sent is None:
            return None
        if target == 0:
            return None if status.paused or status.state == "unknown" \
                else f"charging allowed ({status.state})"
        offered = status.offered_current
        if not status.paused and offered is not None and offered > target:
            return f"offers {offered:g} A"
        return None

    # -- output -----------------------------------------------------------------------------
    def _sync(self, now: float, force: bool = False) -> list[Command]:
        target = self.target()
        if target is None or (target == self.sent and not force):
            return []
        cmds: list[Command]
        if target == 0:
            cmds = [Pause(stop=self.stop)]
        else:
            cmds = [SetLimit(target)]
            if self.sent is None or self.sent == 0 or force:
                cmds.append(Resume())
        self.sent, self.sent_at = target, now
        return cmds

    def _explain(self, asked: float | None, charging: bool | None, applied: int | None) -> str:
        if applied is None:
            return "kept as this charger's preference; the load-sharing node has no limit yet"
        limit = self.limit
        parts = []
        if asked is not None:
            if asked > self.max_current:
                parts.append(f"{asked:g} A is above this charger's maximum "
                             f"{self.max_current} A")
            if applied == 0 and 0 < asked < self.min_current:
                parts.append(f"{asked:g} A is below this charger's minimum "
                             f"{self.min_current} A: paused")
            elif limit is not None and asked > limit:
                parts.append(f"the group allows {limit} A of the {asked:g} A asked")
            elif not parts:
                parts.append(f"as asked (the group allows {limit} A)")
        if charging is False:
            parts.append("paused as asked")
        elif charging is True and applied == 0:
            parts.append(f"charging allowed, but the group allows {limit} A now")
        elif charging is True and not parts:
            parts.append(f"charging allowed (the group allows {limit} A)")
        return f"applied {applied} A: " + "; ".join(parts)
