"""What nodes tell each other: one self-contained report, sent on every change and as heartbeat.

A report is at once a heartbeat (``last_seen``), a status (the allocation inputs), a view (whom
the sender hears, both ways) and an acknowledgement (the inputs it has, the limit it applies, and
how long ago it heard each peer's latest report: the echo that lets a receiver bound the report's
age without synchronised clocks). Plain JSON, so part 2 can carry it over HTTP/WebSocket as is.

:func:`decode` checks every field; a bad message raises :class:`MessageError` carrying the
offending bytes escaped, for the caller to log and count, never to crash on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

MAGIC = "pgw_loadsharing"
VERSION = 1


class MessageError(ValueError):
    """A peer sent something we can't use. ``raw`` is the escaped input."""

    def __init__(self, reason: str, raw: bytes | str = b"") -> None:
        text = raw if isinstance(raw, str) else raw[:300].decode("utf-8", "backslashreplace")
        self.raw = text.encode("unicode_escape").decode("ascii")[:200]
        reason = reason if len(reason) <= 200 else reason[:200] + "..."  # quotes a peer's value
        super().__init__(f"{reason}: {self.raw}")


@dataclass(frozen=True, slots=True)
class LedMember:
    """An OpenEVSE member as the acting controller of a mixed group sees it (an allocation
    input of the whole group: it travels in that controller's status, versioned with it).
    ``reserve``: what an offline (silent, not yet joined) member may still draw."""

    host: str
    online: bool = False
    demanding: bool = False
    min_current: int = 6
    max_current: int = 32
    priority: int = 0
    reserve: float = 0.0

    def wire(self) -> list[Any]:
        return [self.host, self.online, self.demanding, self.min_current, self.max_current,
                self.priority, round(self.reserve, 3)]


@dataclass(frozen=True, slots=True)
class Status:
    """A member's allocation inputs (versioned) plus what it shows (not versioned)."""

    demanding: bool = False
    min_current: int = 6
    max_current: int = 32
    priority: int = 0
    version: int = 0
    amp: float = 0.0  # drawn, A
    voltage: float = 0.0
    pilot: float = 0.0
    state: int = 0
    vehicle: int = 0
    led: tuple[LedMember, ...] = ()  # the OpenEVSE members, from their acting controller only

    def inputs(self) -> tuple[Any, ...]:
        """The fields the allocation reads; a change of them bumps ``version``."""
        return (self.demanding, self.min_current, self.max_current, self.priority, self.led)


@dataclass(frozen=True, slots=True)
class Report:
    node: str
    epoch: int  # grows on every start of the node: orders incarnations
    seq: int  # grows on every report within an epoch
    group: str  # group_hash() of the group configuration
    status: Status
    view: tuple[str, ...]  # sorted; the sender's two-way view, itself included
    view_age: float  # seconds the sender has held this view, by its own clock
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)  # member -> (epoch, version)
    echo: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # peer -> epoch, seq, age
    ready: bool = False
    limit: float = 0.0
    mode: str = ""

    @property
    def order(self) -> tuple[int, int]:
        return (self.epoch, self.seq)


def group_hash(
    *,
    group_id: str,
    group_max: float,
    safety_factor: float,
    assumed: float,
    failsafe_mode: str,
    timeout: float,
    members: tuple[str, ...],
    rules: int = 1,
) -> str:
    """Deterministic digest of what must be equal on every member for the allocation to agree:
    the group's values, its members, and the allocation rules' version (``rules``)."""
    fields: list[object] = [group_id, round(group_max, 3), round(safety_factor, 6),
                            round(assumed, 3), failsafe_mode, round(timeout, 3), sorted(members)]
    if rules != 1:
        fields.append(f"rules:{rules}")  # version 1 hashes as before: an upgrade stays agreed
    canon = json.dumps(fields, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def encode(report: Report) -> bytes:
    s = report.status
    body = {
        MAGIC: VERSION,
        "node": report.node,
        "epoch": report.epoch,
        "seq": report.seq,
        "group": report.group,
        "status": {
            "demanding": s.demanding, "min_current": s.min_current, "max_current": s.max_current,
            "priority": s.priority, "version": s.version, "amp": s.amp, "voltage": s.voltage,
            "pilot": s.pilot, "state": s.state, "vehicle": s.vehicle,
            **({"led": [m.wire() for m in s.led]} if s.led else {}),
        },
        "view": list(report.view),
        "view_age": round(report.view_age, 3),
        "inputs": {k: list(v) for k, v in report.inputs.items()},
        "echo": {k: [e, q, round(a, 3)] for k, (e, q, a) in report.echo.items()},
        "ready": report.ready,
        "limit": report.limit,
        "mode": report.mode,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode(raw: bytes) -> Report:
    """Bytes from a peer -> a checked :class:`Report`; raises :class:`MessageError`."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not JSON ({exc.msg if hasattr(exc, 'msg') else exc})", raw) from None
    if not isinstance(body, dict) or body.get(MAGIC) != VERSION:
        raise MessageError(f"not a version {VERSION} load-sharing report", raw)
    try:
        st = body["status"]
        status = Status(
            demanding=_bool(st["demanding"]),
            min_current=_int(st["min_current"]),
            max_current=_int(st["max_current"]),
            priority=_int(st["priority"]),
            version=_int(st["version"]),
            amp=_num(st.get("amp", 0.0)),
            voltage=_num(st.get("voltage", 0.0)),
            pilot=_num(st.get("pilot", 0.0)),
            state=_int(st.get("state", 0)),
            vehicle=_int(st.get("vehicle", 0)),
            led=tuple(_led(x) for x in _list(st.get("led", []))),
        )
        if not 0 <= status.min_current <= status.max_current:
            raise ValueError("min_current/max_current out of order")
        inputs = {
            _str(k): (_int(v[0]), _int(v[1])) for k, v in _dict(body["inputs"]).items()
        }
        echo = {
            _str(k): (_int(v[0]), _int(v[1]), _num(v[2])) for k, v in _dict(body["echo"]).items()
        }
        return Report(
            node=_str(body["node"]),
            epoch=_int(body["epoch"]),
            seq=_int(body["seq"]),
            group=_str(body["group"]),
            status=status,
            view=tuple(sorted(_str(v) for v in body["view"])),
            view_age=_num(body["view_age"]),
            inputs=inputs,
            echo=echo,
            ready=_bool(body["ready"]),
            limit=_num(body["limit"]),
            mode=_str(body.get("mode", "")),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise MessageError(f"bad report field ({exc})", raw) from None


def _led(v: Any) -> LedMember:
    host, online, demanding, lo, hi, priority, reserve = _list(v)
    m = LedMember(_str(host), _bool(online), _bool(demanding), _int(lo), _int(hi),
                  _int(priority), _num(reserve))
    if not 0 <= m.min_current <= m.max_current:
        raise ValueError(f"led member {m.host!r}: min_current/max_current out of order")
    return m


def _list(v: Any) -> list[Any]:
    if not isinstance(v, list) or len(v) > 64:
        raise ValueError(f"expected a list (at most 64 items), got {str(v)[:80]!r}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true/false, got {v!r}")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"expected a number, got {v!r}")
    if v < 0:
        raise ValueError(f"expected a number >= 0, got {v!r}")
    return float(v)


def _str(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 200:
        raise ValueError(f"expected a short string, got {v!r}")
    return v


def _dict(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"expected an object, got {v!r}")
    return v
