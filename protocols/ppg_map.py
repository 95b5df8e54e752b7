"""PythonProtocolGateway's protocol files, read as they are, into a register map.

A user migrating from HotNoob/PythonProtocolGateway (PPG) points ``protocol_version`` at one
of its files: ``<protocol>.input_registry_map.csv``, ``<protocol>.holding_registry_map.csv``
(that table only), or ``<protocol>.json`` (both tables beside it). Written from PPG's
documented format (its ``documentation/usage/creating_and_editing_protocols.md``), not from
its code; what this reader does differently is listed in ``docs/supported-devices.md``.

The CSV: a header row (names case-insensitive, ``_`` read as a space, ``,`` or ``;`` as the
delimiter, whichever the header has more of) with the columns ``variable name``, ``data
type``, ``register``, ``documented name``, ``description``, ``writable``, ``values``,
``unit`` and ``read interval``; other columns are ignored. Per row:

- name: the variable name, else the documented name; lower case, spaces as ``_``;
- register: decimal, ``x``/``0x`` hexadecimal, ``N.bM`` (bit M), ``N.M`` (byte M), a range
  ``A~B`` (or ``A-B``; ``rA~B`` for reversed word order) for multi-register values;
- data type (default USHORT): USHORT/UINT16, SHORT/INT16, UINT/UINT32, INT/INT32, BYTE/UINT8,
  ``Nbit`` (N bits from the register's bit offset), 8/16/32BIT_FLAGS (one on/off value per
  bit named in the codes), ASCII (``ASCII.N``: N characters), with ``_LE``/``_BE`` suffixes;
- unit: a leading number is the multiplier (``0.1kWh`` = scale 0.1, unit kWh); a unit with
  ``or`` or ``:`` in it is text, multiplier 1;
- values: JSON codes (``{"0": "Standby", "1": "Normal"}``, flags ``{"b0": "Fault"}``) become
  the value's options; ``A~B`` its allowed range; the JSON file's ``<documented name>_codes``
  entries count as well;
- writable: R (default), W/RW/R/W/YES (written only in holding tables), RD (not read), WO;
- a row whose documented name ends in ``_h`` followed by one ending in ``_l`` is one 32-bit
  value (high word first), named without the suffix.

From the JSON: ``batch_size`` (PPG's default, 45, when it says none) and ``byteorder``; its
transport keys (``transport``, ``baud``, ...) are the INI section's business here.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protocols.registers import MapError, RegisterMap, RegisterValue, check_values

TABLE_SUFFIXES = {".input_registry_map.csv": "input", ".holding_registry_map.csv": "holding"}
#: PPG reads at most this many registers per request unless its JSON says otherwise
PPG_BATCH = 45
_REGISTER = re.compile(r"^(?P<reg>0?x[0-9a-f]+|\d+)\.(?:b(?P<bit>\d{1,2})|(?P<byte>\d))$")
_RANGE = re.compile(r"^(?P<rev>r?)(?P<a>0?x[0-9a-f]+|\d+)\s*[~-]\s*(?P<b>0?x[0-9a-f]+|\d+)$")
_UNIT = re.compile(r"^\s*(?P<num>-?\d+(?:\.\d+)?)?\s*(?P<sym>.*?)\s*$")
_BITS = re.compile(r"^(?P<n>\d{1,2})BIT$")
_NAME = re.compile(r"[^a-z0-9_]")
#: PPG's unit spellings -> (unit, Home Assistant device class, state class)
UNITS: dict[str, tuple[str, str, str]] = {
    "w": ("W", "power", "measurement"), "kw": ("kW", "power", "measurement"),
    "v": ("V", "voltage", "measurement"), "a": ("A", "current", "measurement"),
    "ma": ("mA", "current", "measurement"), "hz": ("Hz", "frequency", "measurement"),
    "va": ("VA", "apparent_power", "measurement"), "var": ("var", "reactive_power",
                                                           "measurement"),
    "wh": ("Wh", "energy", "total_increasing"), "kwh": ("kWh", "energy", "total_increasing"),
    "c": ("°C", "temperature", "measurement"), "°c": ("°C", "temperature", "measurement"),
    "%": ("%", "", "measurement"), "s": ("s", "duration", "measurement"),
}
ALIASES = {"UINT8": "BYTE", "INT16": "SHORT", "UINT16": "USHORT", "UINT32": "UINT",
           "INT32": "INT"}


def tables_of(path: Path) -> tuple[Path | None, dict[str, Path]]:
    """(the protocol's JSON, {table: csv}) for a named PPG file."""
    name = path.name
    for suffix, table in TABLE_SUFFIXES.items():
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            settings = path.with_name(stem + ".json")
            return (settings if settings.exists() else None), {table: path}
    stem = name[: -len(".json")]
    found = {t: path.with_name(stem + s) for s, t in TABLE_SUFFIXES.items()}
    return path, {t: p for t, p in found.items() if p.exists()}


def load_ppg(path_text: str) -> RegisterMap:
    """A PPG protocol file -> a validated map; MapError names the file and line."""
    path = Path(path_text)
    settings_path, tables = tables_of(path)
    settings: dict[str, Any] = {}
    if settings_path is not None:
        try:
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MapError(settings_path, 0, f"cannot read PPG settings: {exc}") from None
        if not isinstance(settings, dict):
            raise MapError(settings_path, 0, "PPG settings must be a JSON object")
    if not tables:
        raise MapError(path, 0, "no <protocol>.input_registry_map.csv or "
                       ".holding_registry_map.csv beside it")
    little = str(settings.get("byteorder", "big")).lower() == "little"
    codes = {k.lower(): v for k, v in settings.items() if k.endswith("_codes")
             and isinstance(v, dict)}
    values: list[RegisterValue] = []
    names: set[str] = set()
    skipped: list[str] = []
    for table, csv_path in tables.items():
        try:
            text = csv_path.read_text(encoding="latin-1")
        except OSError as exc:
            raise MapError(csv_path, 0, f"cannot read the map: {exc.strerror}") from None
        for read in _read_table(text, csv_path, table, codes, little, skipped):
            value = _unique(read, names)
            names.add(value.name)
            values.append(value)
    try:
        batch = int(settings.get("batch_size", PPG_BATCH))
    except (TypeError, ValueError):
        batch = PPG_BATCH
    batch = min(max(batch, 1), 125)
    values.sort(key=lambda v: (v.table, v.address, v.bit_start))
    check_values(values, (), batch, path)
    stem = re.sub(r"(\.(input|holding)_registry_map\.csv|\.json)$", "", path.name,
                  flags=re.IGNORECASE)
    meta = {"source": "PythonProtocolGateway", "model": stem}
    if skipped:  # said once by the transport when it starts (see Member)
        meta["skipped"] = "; ".join(skipped)
    return RegisterMap(stem, str(path), tuple(values), batch, (), meta)


def _unique(value: RegisterValue, names: set[str]) -> RegisterValue:
    if value.name not in names:
        return value
    i = 2
    while f"{value.name}_{i}" in names:
        i += 1
    return replace(value, name=f"{value.name}_{i}")


class Unsupported(ValueError):
    """A row of a data type this reader does not decode: left out, named in the map's meta."""


@dataclass
class _Row:
    line: int
    name: str
    documented: str
    dtype: str
    register: str
    unit: str
    values: str
    writable: str
    description: str


def _clean(text: str) -> str:
    return text.strip().lower().replace(" ", "_")


def _rows(text: str, path: Path) -> list[_Row]:
    lines = text.splitlines()
    if not lines:
        raise MapError(path, 0, "empty file")
    header = lines[0].lower().replace("_", " ")
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter)
    columns = [c.strip().lower().replace("_", " ") for c in next(reader)]
    if "register" not in columns or not {"variable name", "documented name"} & set(columns):
        raise MapError(path, 1, "not a PythonProtocolGateway registry map: the header needs "
                       "register and variable name or documented name")
    rows = []
    for line, cells in enumerate(reader, 2):
        cell = dict(zip(columns, [c.strip() for c in cells], strict=False))
        rows.append(_Row(line, cell.get("variable name", ""), _clean(cell.get(
            "documented name", "")), cell.get("data type", ""), cell.get("register", "").lower(),
            cell.get("unit", ""), cell.get("values", ""), cell.get("writable", "") or cell.get(
            "write", ""), cell.get("description", "")))
    return rows


def _join_high_low(rows: list[_Row]) -> list[tuple[_Row, _Row | None]]:
    """Pairs ``x_h`` with a following ``x_l`` (one 32-bit value); other rows alone."""
    out: list[tuple[_Row, _Row | None]] = []
    i = 0
    while i < len(rows):
        row = rows[i]
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        if (nxt is not None and row.documented.endswith("_h")
                and nxt.documented == row.documented[:-2] + "_l"):
            out.append((row, nxt))
            i += 2
            continue
        out.append((row, None))
        i += 1
    return out


def _read_table(  # noqa: PLR0917
    text: str, path: Path, table: str, codes: dict[str, dict[str, str]], little: bool,
    skipped: list[str],
) -> list[RegisterValue]:
    out: list[RegisterValue] = []
    for row, low in _join_high_low(_rows(text, path)):
        if not row.name and not row.documented:
            continue
        mode = row.writable.strip().upper()
        if mode in ("RD", "READDISABLED", "DISABLED", "D"):
            continue
        try:
            out.extend(_values(row, low, path, table, codes, little, mode))
        except Unsupported as exc:
            skipped.append(f"{path.name}: {exc}")
    return out


def _number(text: str) -> int:
    text = text.strip().lower()
    if text.startswith(("0x", "x")):
        return int(text.lstrip("0").lstrip("x") or "0", 16)
    return int(text)


def _values(  # noqa: PLR0917 - one row's fields and the table's context
    row: _Row, low: _Row | None, path: Path, table: str, codes: dict[str, dict[str, str]],
    little: bool, mode: str,
) -> list[RegisterValue]:
    def fail(message: str) -> MapError:
        return MapError(path, row.line, message)

    documented = row.documented[:-2] if low is not None else row.documented
    raw_name = row.name or documented
    name = _NAME.sub("", _clean(raw_name).replace("__", "_"))
    if low is not None and not row.name:
        name = _NAME.sub("", documented)
    if not name:
        raise fail(f"{raw_name!r}: no usable name")
    if not name[0].isalpha():
        name = f"v_{name}"
    kind = (low.dtype if low is not None and low.dtype else row.dtype).strip().upper() or (
        "UINT" if low is not None else "USHORT")
    length = 0
    if "." in kind:
        kind, _, n = kind.partition(".")
        length = int(n) if n.isdigit() else 0
    order = "DCBA" if little else "ABCD"
    if kind.endswith("_LE"):
        kind, order = kind[:-3], "DCBA"
    elif kind.endswith("_BE"):
        kind, order = kind[:-3], "ABCD"
    kind = ALIASES.get(kind, kind)
    if low is not None and kind == "USHORT":
        kind = "UINT"
    address, bit, byte, span, reverse = _register(row.register, fail)
    scale, unit = _unit(low.unit if low is not None and not row.unit else row.unit)
    access = "r"
    if mode in ("W", "RW", "R/W", "WRITE", "YES") and table == "holding":
        access = "rw"
    elif mode in ("WO", "WRITEONLY") and table == "holding":
        access = "w"
    options, flags, minimum, maximum = _codes(row.values, codes.get(documented + "_codes"))
    unit, device_class, state_class = UNITS.get(unit.lower(), (unit, "", ""))
    base = RegisterValue(name=name, table=table, address=address, dtype="u16", count=1,
                         scale=scale, unit=unit, access=access, description=row.description,
                         line=row.line, decimals=_decimals(scale), minimum=minimum,
                         maximum=maximum, device_class=device_class, state_class=state_class,
                         display_name=raw_name.strip() if row.name else "")
    if kind.endswith("BIT_FLAGS"):
        width = int(kind.split("BIT")[0])
        return _flags(base, flags, width, byte)
    match = _BITS.match(kind)
    if kind == "BYTE" or match:
        width = 8 if kind == "BYTE" else int(match.group("n")) if match else 16
        start = (8 if byte == 0 else 0) if kind == "BYTE" else bit
        if start + width > 16:
            raise fail(f"{name}: {width} bits from bit {start} do not fit a register")
        return [replace(base, dtype="bits", bit_start=start, bit_width=width, options=options,
                        **_no_class(options))]
    if kind in ("ASCII", "HEX"):
        if kind == "HEX":
            raise Unsupported(f"{name} (HEX, line {row.line})")
        count = max(span, (length + 1) // 2, 1)
        return [replace(base, dtype="string", count=count, scale=1.0, decimals=None,
                        unit="", device_class="", state_class="")]
    dtypes = {"USHORT": ("u16", 1), "SHORT": ("s16", 1), "UINT": ("u32", 2), "INT": ("s32", 2)}
    if kind not in dtypes:
        raise Unsupported(f"{name} ({kind}, line {row.line})")
    dtype, count = dtypes[kind]
    if count == 2 and reverse:
        order = "CDAB" if order == "ABCD" else "BADC"
    if count == 1 and order == "DCBA":
        order = "BADC"
    return [replace(base, dtype=dtype, count=count, order=order, options=options,
                    **_no_class(options))]


def _no_class(options: tuple[tuple[int, str], ...]) -> dict[str, str]:
    """An enum has no unit or measurement class (its options say what it is)."""
    return {"unit": "", "device_class": "", "state_class": ""} if options else {}


def _register(text: str, fail: Any) -> tuple[int, int, int, int, bool]:
    """(address, bit, byte, registers spanned, reversed) of a register cell."""
    try:
        match = _REGISTER.match(text)
        if match:
            bit = int(match.group("bit")) if match.group("bit") else 0
            byte = int(match.group("byte")) if match.group("byte") else 0
            return _number(match.group("reg")), bit, byte, 1, False
        match = _RANGE.match(text)
        if match:
            first, last = _number(match.group("a")), _number(match.group("b"))
            return first, 0, 0, max(1, last - first + 1), bool(match.group("rev"))
        return _number(text), 0, 0, 1, False
    except ValueError:
        raise fail(f"register {text!r} is not a register number") from None


def _unit(text: str) -> tuple[float, str]:
    if " or " in f" {text.lower()} " or ":" in text:
        return 1.0, text.strip()
    match = _UNIT.match(text)
    number, symbol = (match.group("num"), match.group("sym")) if match else (None, text)
    scale = float(number) if number else 1.0
    return (scale or 1.0), symbol.strip()


def _decimals(scale: float) -> int | None:
    if scale == 1:
        return None
    text = f"{scale:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def _codes(text: str, from_json: dict[str, str] | None
           ) -> tuple[tuple[tuple[int, str], ...], dict[int, str], float | None, float | None]:
    """(options, named flag bits, min, max) from a values cell and the JSON's codes."""
    table: dict[str, str] | None = from_json
    minimum = maximum = None
    if "{" in text:
        try:
            loaded = json.loads(text)
            table = loaded if isinstance(loaded, dict) else table
        except ValueError:
            pass
    else:
        match = _RANGE.match(text.strip().lower())
        if match and not match.group("rev"):
            minimum, maximum = float(_number(match.group("a"))), float(_number(match.group("b")))
    options: list[tuple[int, str]] = []
    flags: dict[int, str] = {}
    for given, label in (table or {}).items():
        key = str(given).strip().lower()
        if re.fullmatch(r"b\d{1,2}", key):
            flags[int(key[1:])] = str(label)
        elif re.fullmatch(r"-?\d+", key):
            options.append((int(key), str(label)))
    return tuple(options), flags, minimum, maximum


def _flags(base: RegisterValue, flags: dict[int, str], width: int, byte: int
           ) -> list[RegisterValue]:
    """One on/off value per named bit; without names, the flags as one number."""
    count = 2 if width == 32 else 1
    offset = 8 if width == 8 and byte == 0 else 0  # BYTE 0 is the high byte
    base = replace(base, unit="", device_class="", state_class="")
    if not flags:
        if width == 8:
            return [replace(base, dtype="bits", bit_start=offset, bit_width=8, scale=1.0,
                            decimals=None)]
        return [replace(base, dtype="u32" if count == 2 else "u16", count=count, scale=1.0,
                        decimals=None)]
    out = []
    for bit, label in sorted(flags.items()):
        if bit >= width:
            continue
        address = base.address + (count - 1 - bit // 16)  # high word first
        suffix = _NAME.sub("", _clean(label)) or f"b{bit}"
        out.append(replace(base, name=f"{base.name}_{suffix}", address=address, dtype="bits",
                           bit_start=offset + bit % 16, bit_width=1, scale=1.0, decimals=None,
                           unit="", device_class="", state_class="",
                           options=((0, "Off"), (1, "On")), access="r", display_name=label,
                           entity_category="diagnostic"))
    return out
