"""Register maps: the value types, loading, and validating a map file.

Pure: no I/O besides reading the map file. The same map drives the transport and the
simulator; the value codec (registers <-> engineering values) is in
``protocols/register_codec.py``. The file format is described in ``protocols/maps/README.md``;
read planning lives in ``protocols/read_plan.py``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

MAPS_DIR = Path(__file__).resolve().parent / "maps"

TABLES = ("holding", "input", "coil", "discrete")
BIT_TABLES = frozenset({"coil", "discrete"})
READ_FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
#: data type -> registers it spans (string: from the count column)
TYPE_WIDTH = {
    "u16": 1, "s16": 1, "enum": 1, "bits": 1, "u32": 2, "s32": 2, "float32": 2,
    "u64": 4, "s64": 4, "string": 0, "bool": 1,
}
INT_RANGE = {
    "u16": (0, 0xFFFF), "enum": (0, 0xFFFF), "s16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFFFFFF), "s32": (-0x80000000, 0x7FFFFFFF),
    "u64": (0, 2**64 - 1), "s64": (-(2**63), 2**63 - 1),
}
ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
COLUMNS = (
    "name", "table", "address", "type", "count", "order", "bits", "scale", "offset", "unit",
    "access", "min", "max", "options", "device_class", "state_class", "description",
    "display_name", "entity_category", "writable",
)
ENTITY_CATEGORIES = ("", "diagnostic", "config")
#: file names that are PythonProtocolGateway protocol files (:mod:`protocols.ppg_map`)
PPG_SUFFIXES = (".input_registry_map.csv", ".holding_registry_map.csv", ".json")
#: ``writable`` column: "" = as ``access`` says; "opt-in" = a device configuration register
#: (address, baud rate, ...) written only when the section's ``writable =`` key names it
WRITE_POLICIES = ("", "opt-in")
REQUIRED = ("name", "table", "address", "type")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

Number = int | float
Value = int | float | str | bool


class MapError(ValueError):
    """A map file is wrong; the message names the file and line."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        super().__init__(f"{Path(path).name}:{line}: {message}")


class WriteRejected(ValueError):
    """A write a map does not allow (not writable, out of range, not an option)."""


@dataclass(frozen=True)
class RegisterValue:
    """One named value of a map: where it lives, how it is coded, what it means."""

    name: str
    table: str
    address: int
    dtype: str
    count: int
    order: str = "ABCD"
    bit_start: int = 0
    bit_width: int = 16
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    access: str = "r"
    minimum: float | None = None
    maximum: float | None = None
    options: tuple[tuple[int, str], ...] = ()
    device_class: str = ""
    state_class: str = ""
    description: str = ""
    line: int = 0
    decimals: int | None = None
    display_name: str = ""
    entity_category: str = ""
    write_policy: str = ""
    #: the value whose reading is this one's power-of-ten scale (a SunSpec scale factor);
    #: ``scale`` is then that power as last read (see ModbusDevice.decode)
    scale_from: str = ""
    #: the words a device sends for "not implemented" (SunSpec): such a reading is skipped
    absent: tuple[int, ...] = ()

    @property
    def opt_in(self) -> bool:
        """Writable on the wire, but only by a section that lists it in ``writable =``."""
        return self.write_policy == "opt-in" and "w" in self.access

    @property
    def end(self) -> int:
        """One past the last register (or bit) this value uses."""
        return self.address + self.count

    @property
    def writable(self) -> bool:
        return "w" in self.access

    @property
    def readable(self) -> bool:
        return "r" in self.access

    def option_text(self, raw: int) -> str:
        for key, text in self.options:
            if key == raw:
                return text
        return str(raw)


@dataclass(frozen=True)
class RegisterMap:
    """A loaded, validated map: its values and what the device allows for reads."""

    name: str
    path: str
    values: tuple[RegisterValue, ...]
    batch_size: int = 125
    #: (table, first, last) inclusive ranges the device answers with an exception
    unreadable: tuple[tuple[str, int, int], ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {v.name: v for v in self.values})

    def __getitem__(self, name: str) -> RegisterValue:
        return self._by_name[name]  # type: ignore[attr-defined]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def readable_values(self) -> list[RegisterValue]:
        return [v for v in self.values if v.readable]


# --------------------------------------------------------------------------- loading


def available_maps() -> list[str]:
    """Names a ``protocol_version`` may take (the shipped maps)."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.csv"))


def map_path(name_or_path: str) -> Path:
    """A shipped map's name, or a path to one's own ``.csv`` file (or a PythonProtocolGateway
    ``.json``) -> the file."""
    if name_or_path.endswith((".csv", ".json")):
        return Path(name_or_path)
    return MAPS_DIR / f"{name_or_path}.csv"


@lru_cache(maxsize=32)
def load_map(name_or_path: str) -> RegisterMap:
    """Load and validate a map by name (``eg4_v58``) or path; raises MapError.

    A PythonProtocolGateway protocol file (``*.input_registry_map.csv``,
    ``*.holding_registry_map.csv``, ``*.json``) is read by :mod:`protocols.ppg_map`."""
    if name_or_path.lower().endswith(PPG_SUFFIXES):
        from protocols.ppg_map import load_ppg  # only a section using such a file needs it

        return load_ppg(name_or_path)
    path = map_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MapError(path, 0, f"cannot read the map: {exc.strerror}") from None
    return parse_map(text, path)


def parse_map(text: str, path: Path | str = "<map>") -> RegisterMap:
    """Parse map text (see maps/README.md); every error names the file and line."""
    meta: dict[str, str] = {}
    header: list[str] | None = None
    header_line = 0
    values: list[RegisterValue] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#!"):
            key, sep, val = stripped[2:].partition("=")
            if not sep:
                raise MapError(path, lineno, "a directive reads '#! key = value'")
            meta[key.strip().lower()] = val.strip()
            continue
        if not stripped or stripped.startswith("#"):
            continue
        row = [cell.strip() for cell in next(csv.reader([line]))]
        if header is None:
            header, header_line = [c.lower() for c in row], lineno
            unknown = [c for c in header if c not in COLUMNS]
            if unknown:
                raise MapError(path, lineno, f"unknown column(s) {unknown}; known: {COLUMNS}")
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise MapError(path, lineno, f"the header lacks column(s) {missing}")
            continue
        if len(row) > len(header):
            raise MapError(path, lineno, f"{len(row)} cells for {len(header)} columns")
        cells = dict(zip(header, row + [""] * (len(header) - len(row)), strict=True))
        values.append(_parse_row(cells, path, lineno))
    if header is None:
        raise MapError(path, header_line, "no header line and no values")
    batch_size = _int_meta(meta, "batch_size", 125, path)
    unreadable = _parse_unreadable(meta.get("unreadable", ""), path)
    name = Path(path).stem
    _validate(values, unreadable, batch_size, path)
    return RegisterMap(name, str(path), tuple(values), batch_size, unreadable, meta)


def _int_meta(meta: dict[str, str], key: str, default: int, path: Path | str) -> int:
    if key not in meta:
        return default
    try:
        value = int(meta[key], 0)
    except ValueError:
        raise MapError(path, 0, f"directive {key} = {meta[key]!r} is not an integer") from None
    if not 1 <= value <= 2000:
        raise MapError(path, 0, f"directive {key} = {value} is out of 1..2000")
    return value


def _parse_unreadable(text: str, path: Path | str) -> tuple[tuple[str, int, int], ...]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        table, _, span = part.partition(":")
        first, _, last = span.partition("-")
        try:
            lo, hi = int(first, 0), int(last or first, 0)
        except ValueError:
            lo = hi = -1
        if table not in TABLES or not 0 <= lo <= hi <= 0xFFFF:
            raise MapError(path, 0, f"unreadable range {part!r}: expected table:first-last")
        out.append((table, lo, hi))
    return tuple(out)


def _number(cells: dict[str, str], key: str, path: Path | str, line: int) -> float | None:
    text = cells.get(key, "")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise MapError(path, line, f"{key} {text!r} is not a number") from None


def _decimals(scale_text: str) -> int | None:
    try:
        exponent = Decimal(scale_text).normalize().as_tuple().exponent
    except InvalidOperation:
        return None
    return max(0, -exponent) if isinstance(exponent, int) else None


def _parse_row(cells: dict[str, str], path: Path | str, line: int) -> RegisterValue:
    def fail(message: str) -> MapError:
        return MapError(path, line, message)

    name, table, dtype = cells["name"], cells["table"].lower(), cells["type"].lower()
    if not _NAME.match(name):
        raise fail(f"name {name!r}: letters, digits and _ only, starting with a letter")
    if table not in TABLES:
        raise fail(f"{name}: unknown table {table!r}; known: {', '.join(TABLES)}")
    if dtype not in TYPE_WIDTH:
        raise fail(f"{name}: unknown type {dtype!r}; known: {', '.join(TYPE_WIDTH)}")
    try:
        address = int(cells["address"], 0)
    except ValueError:
        raise fail(f"{name}: address {cells['address']!r} is not an integer") from None
    if not 0 <= address <= 0xFFFF:
        raise fail(f"{name}: address {address} is outside 0..65535")
    if (table in BIT_TABLES) != (dtype == "bool"):
        raise fail(f"{name}: type bool goes with coil/discrete tables and only there")
    width = TYPE_WIDTH[dtype]
    count_text = cells.get("count", "")
    count = width
    if count_text:
        try:
            count = int(count_text)
        except ValueError:
            raise fail(f"{name}: count {count_text!r} is not an integer") from None
        if width and count != width:
            raise fail(f"{name}: a {dtype} spans {width} register(s), not {count}")
    if count < 1:
        raise fail(f"{name}: a string needs its count of registers")
    if address + count > 0x10000:
        raise fail(f"{name}: a {dtype} at {address} runs past register 65535")
    order = (cells.get("order") or "ABCD").upper()
    if order not in ORDERS:
        raise fail(f"{name}: unknown order {order!r}; known: {', '.join(ORDERS)}")
    bit_start, bit_width = 0, 16
    bits_text = cells.get("bits", "")
    if dtype == "bits":
        first, _, last = bits_text.partition("-")
        try:
            bit_start = int(first)
            bit_width = int(last or first) - bit_start + 1
        except ValueError:
            raise fail(f"{name}: a bits value needs bits = N or N-M, got {bits_text!r}") from None
        if not (0 <= bit_start <= 15 and 1 <= bit_width <= 16 - bit_start):
            raise fail(f"{name}: bits {bits_text!r} are outside 0..15")
    elif bits_text:
        raise fail(f"{name}: the bits column is for type bits only")
    scale_text = cells.get("scale", "") or "1"
    scale = _number({"scale": scale_text}, "scale", path, line) or 0.0
    if scale == 0:
        raise fail(f"{name}: scale must not be 0")
    offset = _number(cells, "offset", path, line) or 0.0
    access = (cells.get("access") or "r").lower()
    if access not in ("r", "rw", "w"):
        raise fail(f"{name}: access {access!r} is not r, rw or w")
    if "w" in access and table in ("input", "discrete"):
        raise fail(f"{name}: {table} registers cannot be written")
    minimum, maximum = _number(cells, "min", path, line), _number(cells, "max", path, line)
    if minimum is not None and maximum is not None and minimum > maximum:
        raise fail(f"{name}: min {minimum} is above max {maximum}")
    options = _parse_options(cells.get("options", ""), fail, name)
    if dtype == "enum" and not options:
        raise fail(f"{name}: an enum needs options like 0=Off;1=On")
    if options and dtype not in ("u16", "s16", "enum", "bits", "u32", "s32"):
        raise fail(f"{name}: options go with integer types, not {dtype}")
    category = cells.get("entity_category", "").lower()
    if category not in ENTITY_CATEGORIES:
        raise fail(f"{name}: entity_category {category!r} is not diagnostic or config")
    policy = cells.get("writable", "").lower()
    if policy not in WRITE_POLICIES:
        raise fail(f"{name}: writable {policy!r}: leave it empty or write opt-in")
    if policy and "w" not in access:
        raise fail(f"{name}: writable = opt-in needs access rw or w")
    decimals = None
    if dtype != "float32" and (scale != 1 or offset != 0):
        decimals = _decimals(scale_text)
        if decimals is not None and offset:
            decimals = max(decimals, _decimals(cells.get("offset", "0")) or 0)
    return RegisterValue(
        name=name, table=table, address=address, dtype=dtype, count=count, order=order,
        bit_start=bit_start, bit_width=bit_width, scale=scale, offset=offset,
        unit=cells.get("unit", ""), access=access, minimum=minimum, maximum=maximum,
        options=options, device_class=cells.get("device_class", ""),
        state_class=cells.get("state_class", ""), description=cells.get("description", ""),
        line=line, decimals=decimals, display_name=cells.get("display_name", ""),
        entity_category=category, write_policy=policy,
    )


def _parse_options(text: str, fail: object, name: str) -> tuple[tuple[int, str], ...]:
    out: list[tuple[int, str]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, label = part.partition("=")
        try:
            number = int(key, 0)
        except ValueError:
            number = None
        if not sep or number is None or not label.strip():
            raise fail(f"{name}: option {part!r} is not like 3=Label")  # type: ignore[operator]
        out.append((number, label.strip()))
    return tuple(out)


def check_values(
    values: list[RegisterValue],
    unreadable: tuple[tuple[str, int, int], ...],
    batch_size: int,
    path: Path | str,
) -> None:
    """The checks every map passes (unique names, no overlaps, reads that fit), for maps
    made by other readers (PythonProtocolGateway files)."""
    _validate(values, unreadable, batch_size, path)


def _validate(
    values: list[RegisterValue],
    unreadable: tuple[tuple[str, int, int], ...],
    batch_size: int,
    path: Path | str,
) -> None:
    seen: dict[str, int] = {}
    used: dict[tuple[str, int], list[RegisterValue]] = {}
    for v in values:
        if v.name in seen:
            raise MapError(path, v.line, f"{v.name}: name already used on line {seen[v.name]}")
        seen[v.name] = v.line
        limit = 2000 if v.table in BIT_TABLES else batch_size
        if v.count > limit:
            raise MapError(path, v.line, f"{v.name}: {v.count} registers exceed one read")
        for table, lo, hi in unreadable:
            if table == v.table and v.address <= hi and lo < v.end and v.readable:
                raise MapError(path, v.line, f"{v.name}: lies in unreadable range {lo}-{hi}")
        for addr in range(v.address, v.end):
            for other in used.get((v.table, addr), []):
                if not _bits_disjoint(v, other):
                    raise MapError(
                        path, v.line,
                        f"{v.name}: {v.table} register {addr} overlaps {other.name} "
                        f"(line {other.line})",
                    )
            used.setdefault((v.table, addr), []).append(v)


def _bits_disjoint(a: RegisterValue, b: RegisterValue) -> bool:
    """Two ``bits`` views of one register may share it when their bits don't overlap."""
    if a.dtype != "bits" or b.dtype != "bits" or a.address != b.address:
        return False
    return a.bit_start + a.bit_width <= b.bit_start or b.bit_start + b.bit_width <= a.bit_start


def check_writable(regmap: RegisterMap, names: tuple[str, ...]) -> tuple[str, ...]:
    """A section's ``writable =`` list against its map: each name a writable register."""
    for name in names:
        if name not in regmap:
            raise ValueError(f"writable: {name!r} is not a value of map {regmap.name}")
        if not regmap[name].writable:
            raise ValueError(f"writable: {name!r} is read-only in map {regmap.name}")
    return names
