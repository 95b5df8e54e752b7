"""Who may write: the group secret (HMAC on peer messages and config pushes), a token for people.

Writes (``POST``/``DELETE``) are refused unless they carry the api token or the group signature;
with neither configured the node takes no writes at all. Open mode (``loadsharing_api_open``),
which real OpenEVSE controllers and members need (their peer client sends no credentials), must
be chosen in the INI; even then the INI stays the ceiling of every value a write may set
(docs/loadsharing.md). Reports on ``/ws`` are signed only when the group has a secret:

- every report a node publishes on ``/ws`` carries ``pgw_ts`` (unix seconds) and ``pgw_mac`` =
  HMAC-SHA256(secret, ``"report." + ts + "." + report``); a receiver drops frames whose MAC is
  wrong or whose timestamp is outside ``window`` of its own wall clock (replays of old frames;
  the node itself ignores any report not newer than the sender's latest by (epoch, seq));
- requests between peers (config pushes, reciprocal adds, removals) carry ``X-PGW-Timestamp``
  and ``X-PGW-Signature`` = HMAC(secret, ``METHOD + " " + path + "." + ts + "." + body``); a
  signature is accepted once (a replay inside the window is refused);
- a person's write needs ``Authorization: Bearer <api token>`` (the token works with or
  without a secret).

Wall time is used here on purpose: a signature must mean the same thing on two machines.
Clocks of the group must agree within ``window`` (NTP on a LAN does far better).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

TS_HEADER = "X-PGW-Timestamp"
SIG_HEADER = "X-PGW-Signature"
DEFAULT_WINDOW = 120.0


def _mac(secret: str, text: bytes) -> str:
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()


class GroupAuth:
    """Signs and checks with the group secret; every check passes when there is none."""

    def __init__(self, secret: str = "", api_token: str = "",
                 window: float = DEFAULT_WINDOW, *, open_mode: bool = False) -> None:
        self.secret = secret
        self.api_token = api_token
        self.window = window
        self.open_mode = open_mode
        self._seen: dict[str, float] = {}  # signature -> wall time, for replay refusal

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    # -- reports on /ws ----------------------------------------------------------------------
    def sign_report(self, report_text: str, now: float | None = None) -> dict[str, object]:
        if not self.secret:
            return {}
        ts = int(time.time() if now is None else now)
        return {"pgw_ts": ts, "pgw_mac": _mac(self.secret, f"report.{ts}.{report_text}".encode())}

    def check_report(self, frame: Mapping[str, object], report_text: str,
                     now: float | None = None) -> str | None:
        """None when acceptable, else why not (for the log)."""
        if not self.secret:
            return None
        ts, mac = frame.get("pgw_ts"), frame.get("pgw_mac")
        if not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(mac, str):
            return "unsigned report (the group has a secret)"
        if abs((time.time() if now is None else now) - ts) > self.window:
            return f"report timestamp {ts} outside the {self.window:g} s window"
        if not hmac.compare_digest(mac, _mac(self.secret, f"report.{ts}.{report_text}".encode())):
            return "bad report signature"
        return None

    # -- HTTP requests between peers ---------------------------------------------------------
    def sign_request(self, method: str, path: str, body: bytes,
                     now: float | None = None) -> dict[str, str]:
        if not self.secret:
            return {}
        ts = str(int(time.time() if now is None else now))
        text = f"{method.upper()} {path}.{ts}.".encode() + body
        return {TS_HEADER: ts, SIG_HEADER: _mac(self.secret, text)}

    def check_request(self, method: str, path: str, body: bytes, headers: Mapping[str, str],
                      now: float | None = None) -> str | None:
        """None when the write may proceed, else the reason for a 401."""
        if self.open_mode:
            return None
        wall = time.time() if now is None else now
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer ") and self.api_token:
            if hmac.compare_digest(auth[7:].strip(), self.api_token):
                return None
            return "Invalid token"
        if not self.secret:
            if not self.api_token:
                return ("Writes are closed: set loadsharing_api_token or "
                        "loadsharing_group_secret, or loadsharing_api_open = true")
            return "Authentication required"
        ts, sig = headers.get(TS_HEADER, ""), headers.get(SIG_HEADER, "")
        if not ts or not sig:
            return "Authentication required"
        if not ts.isdigit() or abs(wall - int(ts)) > self.window:
            return "Request timestamp outside the allowed window"
        text = f"{method.upper()} {path}.{ts}.".encode() + body
        if not hmac.compare_digest(sig, _mac(self.secret, text)):
            return "Invalid signature"
        for old, at in list(self._seen.items()):
            if wall - at > 2 * self.window:
                del self._seen[old]
        if sig in self._seen:
            return "Replayed request"
        self._seen[sig] = wall
        return None


def auth_from(settings: Any) -> GroupAuth:
    """The node's auth from its settings (``loadsharing_group_secret``, ``_api_token``,
    ``_auth_window``, ``_api_open``)."""
    secret, token = settings.loadsharing_group_secret, settings.loadsharing_api_token
    return GroupAuth(secret.get_secret_value() if secret else "",
                     token.get_secret_value() if token else "",
                     settings.loadsharing_auth_window, open_mode=settings.loadsharing_api_open)
