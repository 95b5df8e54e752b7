"""OpenEVSE RAPI line framing: checksums, command builders and an incremental line parser.

Sans-I/O: bytes go in through :meth:`RapiParser.feed`, frames and garbage reports come out;
builders return the bytes to write. One parser serves the serial/PTY/TCP transport and the
simulator (which parses commands with the same code that parses replies).

A line on the wire::

    $ NAME [param ...] [:ss] ^XX <CR>
    |  |               |     +-- XOR of every byte before '^' (or *XX: 8-bit sum), hex
    |  |               +-------- optional sequence id, two hex digits, never 00
    |  +------------------------ two characters: GS, SC, OK, NK, AT ...
    +--------------------------- a '$' anywhere starts a new line

Errors say whose fault they are: :class:`RapiCommandError` is ours (a command we refused to
build, e.g. over the controller's 31-character limit); :class:`RapiGarbage` reports what the
peer (or the line) garbled and is an event, not an exception, so a transport counts it and
keeps reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CR = b"\r"
#: The controller's input buffer holds 32 bytes: 31 characters from '$' to the checksum.
MAX_COMMAND_CHARS = 31
#: At most this many tokens in a command (name and sequence id included).
MAX_TOKENS = 10
#: A line this long without CR is garbage; replies are far shorter.
MAX_LINE = 256
#: Async lines: state change, boot, button, WiFi mode request.
ASYNC_NAMES = frozenset({"AT", "AB", "AN", "WF"})
REPLY_NAMES = frozenset({"OK", "NK"})

_SEQ_RE = re.compile(r"^:[0-9A-Fa-f]{2}$")
_NAME_RE = re.compile(r"^[A-Z0-9]{2}$")
_PRINTABLE = frozenset(range(0x20, 0x7F))


class RapiError(Exception):
    """Base of the codec's exceptions."""


class RapiCommandError(RapiError, ValueError):
    """A command we refuse to build (our fault, never sent): too long, too many tokens..."""


def xor_checksum(data: bytes) -> int:
    """The ``^XX`` checksum: XOR of every byte."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def sum_checksum(data: bytes) -> int:
    """The legacy ``*XX`` checksum: 8-bit additive sum."""
    return sum(data) & 0xFF


def escape(raw: bytes, limit: int = 80) -> str:
    """Printable form of offending bytes for a log line (non-ASCII as \\xNN, cut at ``limit``)."""
    text = raw[:limit].decode("ascii", "backslashreplace")
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + (f"...(+{len(raw) - limit} bytes)" if len(raw) > limit else "")


def _check_token(token: str) -> None:
    if not token or any(c in token for c in " $^*\r\n") or not token.isprintable():
        raise RapiCommandError(f"bad RAPI parameter {token!r}")


def encode_line(
    name: str,
    params: tuple[str | int, ...] | list[str | int] = (),
    seq: int | None = None,
    checksum: str = "xor",
) -> bytes:
    """One line (command, reply or async) with checksum and CR; no length limit.

    ``checksum``: ``xor`` (``^XX``, the preferred form), ``sum`` (``*XX``) or ``none``.
    """
    if not _NAME_RE.match(name):
        raise RapiCommandError(f"bad RAPI command name {name!r}")
    tokens = [str(p) for p in params]
    for token in tokens:
        _check_token(token)
    body = "$" + " ".join([name, *tokens])
    if seq is not None:
        if not 1 <= seq <= 0xFF:
            raise RapiCommandError(f"sequence id {seq} outside 1..255")
        body += f" :{seq:02X}"
    raw = body.encode("ascii")
    if checksum == "xor":
        raw += f"^{xor_checksum(raw):02X}".encode("ascii")
    elif checksum == "sum":
        raw += f"*{sum_checksum(raw):02X}".encode("ascii")
    elif checksum != "none":
        raise RapiCommandError(f"unknown checksum form {checksum!r}")
    return raw + CR


def encode_command(
    name: str, *params: str | int, seq: int | None = None, checksum: str = "xor"
) -> bytes:
    """A command line, refused (never sent) if the controller would drop or reject it."""
    count = 1 + len(params) + (1 if seq is not None else 0)
    if count > MAX_TOKENS:
        raise RapiCommandError(f"${name}: {count} tokens, the controller takes {MAX_TOKENS}")
    line = encode_line(name, params, seq, checksum)
    if len(line) - 1 > MAX_COMMAND_CHARS:
        raise RapiCommandError(
            f"{escape(line)}: {len(line) - 1} characters, the controller drops lines over "
            f"{MAX_COMMAND_CHARS}"
        )
    return line


def encode_reply(ok: bool, *params: str | int, seq: int | None = None) -> bytes:
    """``$OK ...`` / ``$NK ...`` as the controller writes it (upper-case ``^XX``)."""
    return encode_line("OK" if ok else "NK", params, seq)


@dataclass(frozen=True, slots=True)
class RapiFrame:
    """One well-formed line: a command (to the device), a reply or an async notification."""

    name: str
    params: tuple[str, ...]
    seq: int | None
    checksum: str  # xor | sum | none
    raw: bytes

    @property
    def is_reply(self) -> bool:
        return self.name in REPLY_NAMES

    @property
    def is_async(self) -> bool:
        return self.name in ASYNC_NAMES

    @property
    def ok(self) -> bool:
        return self.name == "OK"


@dataclass(frozen=True, slots=True)
class RapiGarbage:
    """Bytes that are not a valid line: counted and logged by the reader, never fatal.

    ``reason``: noise (bytes outside a line), truncated (a '$' arrived mid-line), too_long,
    bad_bytes, bad_checksum, no_checksum, malformed (no command name).
    """

    reason: str
    raw: bytes
    detail: str = ""

    def describe(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"RAPI {self.reason}{extra}: {escape(self.raw)}"


RapiEvent = RapiFrame | RapiGarbage


def parse_line(line: bytes, require_checksum: bool = True) -> RapiEvent:
    """Decode one line from '$' to just before CR (the CR itself excluded)."""
    if any(b not in _PRINTABLE for b in line):
        return RapiGarbage("bad_bytes", line, "non-printable byte in line")
    text = line.decode("ascii")
    checksum = "none"
    body = text
    mark = max(text.rfind("^"), text.rfind("*"))
    if mark > 0 and len(text) - mark == 3:
        digits = text[mark + 1 :]
        try:
            expected = int(digits, 16)
        except ValueError:
            return RapiGarbage("bad_checksum", line, f"checksum {digits!r} is not hex")
        body = text[:mark]
        head = body.encode("ascii")
        if text[mark] == "^":
            checksum, actual = "xor", xor_checksum(head)
        else:
            checksum, actual = "sum", sum_checksum(head)
        if actual != expected:
            return RapiGarbage("bad_checksum", line, f"got {expected:02X}, computed {actual:02X}")
    elif mark > 0:
        return RapiGarbage("bad_checksum", line, "checksum is not two hex digits")
    elif require_checksum:
        return RapiGarbage("no_checksum", line)
    tokens = body[1:].split()
    if not tokens or not _NAME_RE.match(tokens[0].upper()):
        return RapiGarbage("malformed", line, "no command name")
    seq: int | None = None
    if len(tokens) > 1 and _SEQ_RE.match(tokens[-1]):
        seq = int(tokens[-1][1:], 16)
        tokens = tokens[:-1]
    return RapiFrame(tokens[0].upper(), tuple(tokens[1:]), seq, checksum, line)


class RapiParser:
    """Incremental line parser: any split of the same bytes yields the same events.

    Noise outside a line is reported when the next '$' arrives (or every ``MAX_LINE`` bytes),
    a line over ``MAX_LINE`` without CR is reported once and skipped up to the next '$' or CR.
    """

    def __init__(self, require_checksum: bool = True, max_line: int = MAX_LINE) -> None:
        self.require_checksum = require_checksum
        self.max_line = max_line
        self._line = bytearray()
        self._in_line = False
        self._skipping = False  # inside an over-long line, waiting for '$' or CR
        self._noise = bytearray()

    def feed(self, data: bytes) -> list[RapiEvent]:
        events: list[RapiEvent] = []
        for byte in data:
            if byte == 0x24:  # '$'
                self._flush_noise(events)
                if self._in_line and self._line:
                    events.append(RapiGarbage("truncated", bytes(self._line), "new '$' mid-line"))
                self._line = bytearray(b"$")
                self._in_line = True
                self._skipping = False
            elif self._skipping:
                if byte == 0x0D:
                    self._skipping = False
            elif self._in_line:
                if byte == 0x0D:
                    events.append(parse_line(bytes(self._line), self.require_checksum))
                    self._line = bytearray()
                    self._in_line = False
                elif len(self._line) >= self.max_line:
                    detail = f"no CR in {self.max_line} bytes"
                    events.append(RapiGarbage("too_long", bytes(self._line), detail))
                    self._line = bytearray()
                    self._in_line = False
                    self._skipping = True
                else:
                    self._line.append(byte)
            elif byte not in (0x0D, 0x0A):
                self._noise.append(byte)
                if len(self._noise) >= self.max_line:
                    self._flush_noise(events)
        return events

    def _flush_noise(self, events: list[RapiEvent]) -> None:
        if self._noise:
            events.append(RapiGarbage("noise", bytes(self._noise), "bytes outside a line"))
            self._noise = bytearray()

    def reset(self) -> None:
        """Forget a partial line (after a reconnect: the old peer's half line is meaningless)."""
        self._line = bytearray()
        self._in_line = False
        self._skipping = False
        self._noise = bytearray()
