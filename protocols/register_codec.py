"""The register value codec: registers (or bits) <-> engineering values.

Data types, scale/offset, enum options, bit fields, and word/byte order live here; what a map
is and how it is loaded and validated stays in :mod:`protocols.registers`. Pure: no I/O. The
transport (decode what was read, check and encode what is written) and the simulator (encode
the values it serves) both speak through this one codec.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from protocols.registers import INT_RANGE, Number, RegisterValue, Value, WriteRejected


def _words_to_bytes(regs: Sequence[int], order: str) -> bytes:
    words = list(regs)
    if order in ("CDAB", "DCBA"):
        words.reverse()
    swap = order in ("BADC", "DCBA")
    out = bytearray()
    for w in words:
        hi, lo = (w >> 8) & 0xFF, w & 0xFF
        out += bytes((lo, hi) if swap else (hi, lo))
    return bytes(out)


def _bytes_to_words(data: bytes, order: str) -> list[int]:
    swap = order in ("BADC", "DCBA")
    words = [
        (data[i + 1] << 8 | data[i]) if swap else (data[i] << 8 | data[i + 1])
        for i in range(0, len(data), 2)
    ]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    return words


def _tidy(value: float, spec: RegisterValue) -> Number:
    if spec.decimals is not None:
        value = round(value, spec.decimals)
        return int(value) if spec.decimals == 0 else value
    return value


def decode(spec: RegisterValue, regs: Sequence[int] | Sequence[bool]) -> Value:
    """Registers (or bits) as read -> the engineering value (scaled, enum text, string)."""
    if spec.dtype == "bool":
        return bool(regs[0])
    if spec.dtype == "string":
        # strings keep byte order within a register only; words are always in address order
        data = _words_to_bytes(regs, "BADC" if spec.order in ("BADC", "DCBA") else "ABCD")
        return data.split(b"\x00", 1)[0].decode("latin-1").rstrip()
    raw_bytes = _words_to_bytes(regs, spec.order)
    if spec.dtype == "float32":
        raw: Number = struct.unpack(">f", raw_bytes)[0]
        if not math.isfinite(raw):
            return _tidy(raw * spec.scale + spec.offset, spec)
        raw = float(f"{raw:.7g}")
    else:
        raw = int.from_bytes(raw_bytes, "big", signed=spec.dtype in ("s16", "s32", "s64"))
        if spec.dtype == "bits":
            raw = (raw >> spec.bit_start) & ((1 << spec.bit_width) - 1)
        if spec.options:
            return spec.option_text(int(raw))
    if spec.scale == 1 and spec.offset == 0:
        return raw
    return _tidy(raw * spec.scale + spec.offset, spec)


def to_raw(spec: RegisterValue, value: Value) -> int | float | str | bool:
    """An engineering value a user wants written -> the raw value; WriteRejected otherwise."""
    if spec.dtype == "bool":
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in ("0", "1", "true", "false", "on", "off"):
                raise WriteRejected(f"{spec.name}: {value!r} is not a boolean")
            return low in ("1", "true", "on")
        return bool(value)
    if spec.dtype == "string":
        text = str(value)
        if len(text.encode("latin-1", "replace")) > spec.count * 2:
            raise WriteRejected(f"{spec.name}: at most {spec.count * 2} characters")
        return text
    if spec.options:
        for key, text in spec.options:
            if value == text or (not isinstance(value, bool) and value == key):
                return key
            if isinstance(value, str) and value.strip() == str(key):
                return key
        allowed = ", ".join(f"{k}={t}" for k, t in spec.options)
        raise WriteRejected(f"{spec.name}: {value!r} is not one of {allowed}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WriteRejected(f"{spec.name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise WriteRejected(f"{spec.name}: {value!r} is not a finite number")
    if spec.minimum is not None and number < spec.minimum:
        raise WriteRejected(f"{spec.name}: {value} is below the minimum {spec.minimum}")
    if spec.maximum is not None and number > spec.maximum:
        raise WriteRejected(f"{spec.name}: {value} is above the maximum {spec.maximum}")
    exact = isinstance(value, int) and not isinstance(value, bool)
    raw = value if exact and spec.scale == 1 and spec.offset == 0 else (
        (number - spec.offset) / spec.scale)
    if spec.dtype == "float32":
        return float(raw)
    rounded = round(raw)
    if abs(rounded - raw) > 1e-6 * max(1.0, abs(raw)):
        raise WriteRejected(f"{spec.name}: {value} is not a multiple of the step {spec.scale}")
    if spec.dtype == "bits":
        low, high = 0, (1 << spec.bit_width) - 1
    else:
        low, high = INT_RANGE[spec.dtype]
    if not low <= rounded <= high:
        raise WriteRejected(f"{spec.name}: {value} does not fit a {spec.dtype}")
    return int(rounded)


def encode(
    spec: RegisterValue, raw: int | float | str | bool, current: int = 0
) -> list[int] | list[bool]:
    """A raw value (from :func:`to_raw`) -> the registers to write.

    ``current`` is the register's present content for a ``bits`` value (read-modify-write).
    """
    if spec.dtype == "bool":
        return [bool(raw)]
    if spec.dtype == "string":
        data = str(raw).encode("latin-1", "replace").ljust(spec.count * 2, b"\x00")
        return _bytes_to_words(data, "BADC" if spec.order in ("BADC", "DCBA") else "ABCD")
    if spec.dtype == "bits":
        mask = ((1 << spec.bit_width) - 1) << spec.bit_start
        word = (current & ~mask) | ((int(raw) << spec.bit_start) & mask)
        return _bytes_to_words(word.to_bytes(2, "big"), spec.order)
    if spec.dtype == "float32":
        data = struct.pack(">f", float(raw))
    else:
        signed = spec.dtype in ("s16", "s32", "s64")
        data = int(raw).to_bytes(spec.count * 2, "big", signed=signed)
    return _bytes_to_words(data, spec.order)


def encode_value(spec: RegisterValue, value: Value, current: int = 0) -> list[int] | list[bool]:
    """Engineering value -> registers, for a simulator serving a value (no write checks)."""
    if spec.dtype in ("bool", "string") or spec.options:
        return encode(spec, to_raw(spec, value), current)
    if isinstance(value, int) and spec.scale == 1 and spec.offset == 0:
        raw: float = value
    else:
        raw = (float(value) - spec.offset) / spec.scale
    if spec.dtype == "float32":
        return encode(spec, raw, current)
    low, high = (0, (1 << spec.bit_width) - 1) if spec.dtype == "bits" else INT_RANGE[spec.dtype]
    return encode(spec, min(max(round(raw), low), high), current)
