"""Vantage QLink V-commands: a sans-I/O codec for both ends of an IP-Enabler link.

Facts and their sources are in the design note QLINK.md; this module holds only what the
bytes look like. One parser serves the transport (which reads replies and events) and the
controller simulator (which reads commands and writes replies and events), so the two ends
cannot drift apart.

Wire shape (ASCII, one line each)::

    command   V<XX>[!|@|#] <decimal> <decimal> ...   CR (LF and CRLF also accepted)
    reply     <decimal> ... | <hexpair> <hexpair> | R<XX>[#] <params...> | VER ... | a|b|c|d
    error     256 (bad command) | 257 (bad parameter) | 258 (system error)
    event     SW | IR | LO | LS | LV | LE | LC | AON | AOFF  <decimal/hex params>

Events are told from replies by shape alone: every event tag holds a letter that is not a hex
digit, and no reply starts with such a word (except ``R..`` detailed tags and ``VER``). So an
event that arrives ahead of the reply to the command causing it is never taken for that reply.
A bare 256/257/258 is always an error code: a caller must not ``VEC`` those numbers.

The event values and LED masks live in ``protocols/qlink_events.py`` and are re-exported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from protocols.qlink_events import (
    EVENT_TAGS,
    LED_CODES,
    AllLoadsEvent,
    Event,
    IrEvent,
    LcdEvent,
    LedEvent,
    LedState,
    LoadEvent,
    StationLoadEvent,
    SwitchEvent,
    VariableEvent,
    decode_leds,
    encode_leds,
)

__all__ = [  # the events are re-exported: ``from protocols.qlink import LoadEvent`` works
    "ARITY", "EVENT_TAGS", "LED_CODES", "AllLoadsEvent", "Command", "CommandError",
    "ErrorReply", "Event", "Garbled", "Incoming", "IrEvent", "LcdEvent", "LedEvent", "LedState",
    "LineSplitter", "LoadEvent", "QLinkError", "QLinkParser", "Reply", "StationLoadEvent",
    "SwitchEvent", "VariableEvent", "classify", "command", "decode_leds", "encode_leds",
    "escape", "format_fade", "parse_command", "parse_event",
]

ERROR_CODES: dict[int, str] = {256: "bad command", 257: "bad parameter", 258: "system error"}
MAX_LINE = 512  # longer without a line end is garbage (a VGN text line is well under this)
MAX_LEVEL = 100  # a load level in percent (QLINK.md: "Level: integer 0-100, 0 = off")

Modifier = Literal["", "!", "@", "#"]

#: Parameter counts (min, max) of the V-commands this project speaks or simulates.
ARITY: dict[str, tuple[int, int]] = {
    "VGL": (1, 1), "VLO": (2, 3), "VGB": (4, 4), "VLB": (5, 6), "VGA": (3, 3), "VLA": (4, 5),
    "VGD": (3, 3), "VSW": (4, 4), "VGS": (3, 3), "VGT": (2, 2), "VLS": (3, 3), "VLT": (2, 3),
    "VLD": (4, 4), "VEC": (1, 1), "VGV": (0, 1), "VQM": (0, 0), "VCL": (1, 2), "VOS": (1, 3),
    "VOL": (1, 3), "VOD": (1, 3), "VQA": (0, 0),
}

_VERB = re.compile(r"^(V[A-Z]{2})([!@#]?)$")
_DETAILED = re.compile(r"^R[A-Z]{2}#?$")
_HEXPAIR = re.compile(r"^[0-9A-Fa-f]{2}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def escape(raw: bytes) -> str:
    """Bytes as printable text for a log line (``b'\\x00LO'`` -> ``\\x00LO``)."""
    return raw.decode("ascii", "backslashreplace").encode("unicode_escape").decode("ascii")


class QLinkError(Exception):
    """Base of the codec's errors; ``line`` holds the offending bytes."""

    def __init__(self, message: str, line: bytes = b"") -> None:
        super().__init__(f"{message}: {escape(line)!r}" if line else message)
        self.line = line


class CommandError(QLinkError):
    """A command line that a controller refuses; ``code`` is the error it answers (256/257)."""

    def __init__(self, message: str, line: bytes, code: int) -> None:
        super().__init__(message, line)
        self.code = code


# ---------------------------------------------------------------------------- lines in


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply line. ``tag`` is ``RGL``/``RGL#`` for detailed replies, ``VER`` for VGV, else ''."""

    text: str
    tag: str = ""
    values: tuple[str, ...] = ()

    @property
    def detailed(self) -> bool:
        return self.tag.startswith("R")

    def ints(self) -> tuple[int, ...]:
        """The values as decimals; raises ValueError if one is not (the caller knows the verb)."""
        return tuple(int(float(v)) for v in self.values)

    def hex_values(self) -> tuple[int, ...]:
        """The values as hex (VLT masks); raises ValueError if one is not."""
        return tuple(int(v, 16) for v in self.values)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``256``/``257``/``258``: the controller refused the command in flight."""

    code: int

    @property
    def meaning(self) -> str:
        return ERROR_CODES.get(self.code, "unknown error")

    def __str__(self) -> str:
        return f"{self.code} {self.meaning}"


@dataclass(frozen=True, slots=True)
class Garbled:
    """A line that is neither a reply nor an event; kept for the log and the counters."""

    raw: bytes
    reason: str

    def __str__(self) -> str:
        return f"{self.reason}: {escape(self.raw)!r}"


Incoming = Event | Reply | ErrorReply | Garbled


def _ints(tokens: list[str], count: int, optional: int = 0) -> list[int] | None:
    if not count <= len(tokens) <= count + optional:
        return None
    if not all(t.isdigit() for t in tokens):
        return None
    return [int(t) for t in tokens]


def _hex(token: str) -> int | None:
    return int(token, 16) if re.fullmatch(r"[0-9A-Fa-f]{1,4}", token) else None


def parse_event(tag: str, args: list[str], raw: bytes) -> Event | Garbled:
    """One event line already split into tag and arguments."""
    if tag in ("SW", "IR"):
        v = _ints(args, 4, 1)
        if v is None or v[3] > 1:
            return Garbled(raw, f"{tag} line with bad parameters")
        cls = SwitchEvent if tag == "SW" else IrEvent
        return cls(v[0], v[1], v[2], v[3] == 1, v[4] if len(v) == 5 else None)
    if tag in ("LO", "LS"):
        v = _ints(args, 5 if tag == "LO" else 4)
        if v is None:
            return Garbled(raw, f"{tag} line with bad parameters")
        if v[-1] > MAX_LEVEL:  # a load level is 0-100 (QLINK.md); _ints admits no negatives
            return Garbled(raw, f"{tag} level {v[-1]} out of range 0-{MAX_LEVEL}")
        return LoadEvent(*v) if tag == "LO" else StationLoadEvent(*v)
    if tag == "LV":
        v = _ints(args, 3)
        return Garbled(raw, "LV line with bad parameters") if v is None else VariableEvent(*v)
    if tag in ("AON", "AOFF"):
        v = _ints(args, 1)
        if v is None:
            return Garbled(raw, f"{tag} line with bad parameters")
        return AllLoadsEvent(tag == "AON", v[0])
    if tag == "LE":
        head = _ints(args[:2], 2)
        masks = [_hex(t) for t in args[2:]]
        if head is None or len(masks) != 2 or None in masks:
            return Garbled(raw, "LE line with bad parameters")
        return LedEvent(head[0], head[1], masks[0] or 0, masks[1] or 0)
    v = _ints(args, 4)  # LC
    return Garbled(raw, "LC line with bad parameters") if v is None else LcdEvent(*v)


def classify(raw: bytes) -> Incoming:
    """One line (no line end) from a controller -> event, reply, error code or garbage."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return Garbled(raw, "non-ASCII bytes")
    if not text.isprintable():
        return Garbled(raw, "control characters")
    tokens = text.split()
    if not tokens:
        return Garbled(raw, "blank line")
    head, args = tokens[0], tokens[1:]
    if head in EVENT_TAGS:
        return parse_event(head, args, raw)
    if _DETAILED.match(head) or head == "VER":
        return Reply(text, head, tuple(args))
    if "|" in text:  # VGN: Name|Room|Floor|Type
        return Reply(text.strip(), "", tuple(text.strip().split("|")))
    if len(tokens) == 1 and tokens[0].isdigit() and int(tokens[0]) in ERROR_CODES:
        return ErrorReply(int(tokens[0]))
    if all(_NUMBER.match(t) or _HEXPAIR.match(t) for t in tokens):
        return Reply(text, "", tuple(tokens))
    return Garbled(raw, "neither a reply nor an event")


@dataclass
class LineSplitter:
    """Cuts a byte stream into lines at CR, LF or CRLF; empty lines vanish.

    Partial input is normal: the tail waits in ``buffer`` for the next ``feed``. A run of more
    than ``MAX_LINE`` bytes without a line end is returned as one over-long line, so that one
    lost terminator cannot make the buffer grow without bound.
    """

    buffer: bytearray = field(default_factory=bytearray)
    overflow: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        lines: list[bytes] = []
        while True:
            cut = min((i for i in (self.buffer.find(b"\r"), self.buffer.find(b"\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            line = bytes(self.buffer[:cut])
            del self.buffer[: cut + 1]
            if self.overflow:
                self.overflow = False
                continue
            if line:
                lines.append(line)
        if len(self.buffer) > MAX_LINE:
            lines.append(bytes(self.buffer))
            self.buffer.clear()
            self.overflow = True
        return lines


class QLinkParser:
    """Controller-to-client direction: ``feed(bytes)`` returns what the bytes said, in order."""

    def __init__(self) -> None:
        self._lines = LineSplitter()

    def feed(self, data: bytes) -> list[Incoming]:
        out: list[Incoming] = []
        for line in self._lines.feed(data):
            if len(line) > MAX_LINE:
                out.append(Garbled(line[:64], f"line over {MAX_LINE} bytes without a line end"))
            else:
                out.append(classify(line))
        return out


# ---------------------------------------------------------------------------- commands


def format_fade(seconds: float) -> str:
    """Fade time as the controller reads it: ``0``, ``2.3`` (tenths of a second)."""
    tenths = round(seconds * 10)
    return str(tenths // 10) if tenths % 10 == 0 else f"{tenths // 10}.{tenths % 10}"


@dataclass(frozen=True, slots=True)
class Command:
    """One V-command. ``modifier`` '#' asks for a detailed reply, '!' for none."""

    verb: str
    args: tuple[str, ...] = ()
    modifier: Modifier = ""

    @property
    def expects_reply(self) -> bool:
        return self.modifier != "!"

    @property
    def reply_tag(self) -> str:
        """The detailed reply's tag without ``#``: ``VGL`` -> ``RGL``."""
        return "R" + self.verb[1:]

    def text(self) -> str:
        return " ".join((self.verb + self.modifier, *self.args))

    def encode(self, line_end: bytes = b"\r") -> bytes:
        return self.text().encode("ascii") + line_end

    def ints(self) -> tuple[int, ...]:
        return tuple(int(float(a)) for a in self.args)

    def matches(self, reply: Reply | ErrorReply) -> bool:
        """Could ``reply`` answer this command? Errors and regular replies always could."""
        if isinstance(reply, ErrorReply) or not reply.detailed:
            return True
        return reply.tag.rstrip("#") == self.reply_tag


def command(verb: str, *args: int | float | str, modifier: Modifier = "") -> Command:
    """Build a command, checking it the way a controller would (CommandError on our mistake)."""
    text_args = tuple(a if isinstance(a, str) else
                      (format_fade(a) if isinstance(a, float) else str(a)) for a in args)
    cmd = Command(verb, text_args, modifier)
    low, high = ARITY.get(verb, (0, 16))
    if not low <= len(args) <= high or not _VERB.match(verb + modifier):
        raise CommandError("not a valid V-command", cmd.encode(b""), 256)
    return cmd


def parse_command(raw: bytes) -> Command:
    """A client's line (no line end) -> Command; CommandError(256/257) says what to answer."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CommandError("non-ASCII command", raw, 256) from None
    tokens = text.split()
    if not tokens:
        raise CommandError("empty command", raw, 256)
    found = _VERB.match(tokens[0])
    if not found:
        raise CommandError("unknown verb", raw, 256)
    verb, modifier = found.group(1), found.group(2)
    if verb not in ARITY:
        raise CommandError("unknown verb", raw, 256)
    low, high = ARITY[verb]
    args = tokens[1:]
    if not low <= len(args) <= high:
        raise CommandError(f"{verb} takes {low}-{high} parameters", raw, 257)
    if not all(_NUMBER.match(a) and not a.startswith("-") for a in args):
        raise CommandError("parameters must be unsigned decimals", raw, 257)
    return Command(verb, tuple(args), modifier)  # type: ignore[arg-type]
