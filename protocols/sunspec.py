"""SunSpec over Modbus: find the ``SunS`` marker, walk the model chain, make a register map.

Pure (sans-I/O, like :mod:`transports.modbus_bus.blocks`): :func:`discover` is a generator
that yields the reads it needs and is sent each answer's words (``None`` for an exception
reply), so the bus transport, a test or the simulator can drive it. :func:`sunspec_map` turns
the models found into an ordinary :class:`~protocols.registers.RegisterMap`, which the
existing read planning, codec, write checks and Home Assistant description then serve.

The model definitions (point names, types, scale-factor references, units, enum symbols,
bitfield bits, access) come from the official JSON definitions that ``pysunspec2`` ships, read
here on first use: a process without a SunSpec device never loads them.

Scale factors are registers (``sunssf``): the map keeps each point's raw integer with
``scale_from`` naming its factor's register, and the device applies ``10 ** factor`` as read
in the same scan (factors may change at run time; SunSpec allows it). Values a device marks
"not implemented" (0x8000, 0xFFFF, ... per type) are left out of the map when discovery reads
them, and skipped when a later scan reads them (``absent``). An accumulator's "not
implemented" is 0, which a new device's energy counter may also read: it is left out only
when discovery reads 0, never skipped later.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from protocols.read_plan import ReadRequest
from protocols.registers import RegisterMap, RegisterValue

#: "SunS" in two registers
MARKER = (0x5375, 0x6E53)
#: where devices put the marker, in the order the SunSpec specification lists them
BASES = (40000, 0, 50000)
END_ID = 0xFFFF
#: a chain longer than this is a device (or a test) that never ends it
MAX_MODELS = 64
#: the name ``protocol_version`` takes for a SunSpec device
PROTOCOL = "sunspec"

#: SunSpec type -> (register map type, registers, the words meaning "not implemented")
TYPES: dict[str, tuple[str, int, tuple[int, ...] | None]] = {
    "int16": ("s16", 1, (0x8000,)),
    "uint16": ("u16", 1, (0xFFFF,)),
    "count": ("u16", 1, (0xFFFF,)),
    "acc16": ("u16", 1, None),
    "enum16": ("enum", 1, (0xFFFF,)),
    "bitfield16": ("u16", 1, (0xFFFF,)),
    "sunssf": ("s16", 1, (0x8000,)),
    "int32": ("s32", 2, (0x8000, 0)),
    "uint32": ("u32", 2, (0xFFFF, 0xFFFF)),
    "acc32": ("u32", 2, None),
    "enum32": ("u32", 2, (0xFFFF, 0xFFFF)),
    "bitfield32": ("u32", 2, (0xFFFF, 0xFFFF)),
    "int64": ("s64", 4, (0x8000, 0, 0, 0)),
    "uint64": ("u64", 4, (0xFFFF,) * 4),
    "acc64": ("u64", 4, None),
    "float32": ("float32", 2, (0x7FC0, 0)),
}
#: types read past (their registers count, no value is made): padding and addresses
SKIPPED = {"pad": 1, "ipaddr": 2, "ipv6addr": 8, "eui48": 4, "float64": 4}
HEADER = ("ID", "L")

#: SunSpec unit -> (unit shown, Home Assistant device class, state class)
UNITS: dict[str, tuple[str, str, str]] = {
    "W": ("W", "power", "measurement"),
    "VA": ("VA", "apparent_power", "measurement"),
    "var": ("var", "reactive_power", "measurement"),
    "VAr": ("var", "reactive_power", "measurement"),
    "A": ("A", "current", "measurement"),
    "V": ("V", "voltage", "measurement"),
    "Hz": ("Hz", "frequency", "measurement"),
    "C": ("°C", "temperature", "measurement"),
    "Wh": ("Wh", "energy", "total_increasing"),
    "VAh": ("VAh", "", "total_increasing"),
    "varh": ("varh", "reactive_energy", "total_increasing"),
    "Pct": ("%", "", "measurement"),
    "Secs": ("s", "duration", ""),
    "cos()": ("", "power_factor", "measurement"),
    "% WMax": ("%", "", ""),
    "% VArMax": ("%", "", ""),
    "% VArAval": ("%", "", ""),
}


class NotSunSpec(ValueError):
    """No ``SunS`` marker at any base address, or a model chain that makes no sense."""


@dataclass(frozen=True)
class ModelBlock:
    """One model as found: its id, where its ID register is, its length, its body as read
    (empty for a model without a definition: it is walked past, not read)."""

    model_id: int
    address: int
    length: int
    body: tuple[int, ...] = ()

    @property
    def body_address(self) -> int:
        return self.address + 2


@dataclass(frozen=True)
class SunSpecMap:
    """A discovered device as a map, the scale factors as read at discovery, who it is."""

    regmap: RegisterMap
    exponents: dict[str, int]
    models: tuple[ModelBlock, ...]
    identity: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{m.model_id}@{m.address}" for m in self.models)


# --------------------------------------------------------------------------- definitions


@cache
def model_definition(model_id: int) -> dict[str, Any] | None:
    """The official definition of a model (pysunspec2's JSON), None for an unknown id."""
    try:
        text = (resources.files("sunspec2") / "models" / "json"
                / f"model_{model_id}.json").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    return json.loads(text)


def point_length(point: dict[str, Any]) -> int:
    kind = point["type"]
    if kind == "string":
        return int(point["size"])
    if kind in TYPES:
        return TYPES[kind][1]
    return SKIPPED.get(kind, int(point.get("size", 1)))


def group_length(group: dict[str, Any]) -> int:
    """Registers of one instance of a group (its repeating sub-groups counted once)."""
    own = sum(point_length(p) for p in group.get("points", []))
    return own + sum(group_length(g) * _fixed_count(g) for g in group.get("groups", []))


def _fixed_count(group: dict[str, Any]) -> int:
    count = group.get("count", 1)
    return count if isinstance(count, int) and count > 0 else 1


# --------------------------------------------------------------------------- discovery


def discover(
    bases: Sequence[int] = BASES, chunk: int = 125
) -> Generator[ReadRequest, list[int] | None, tuple[ModelBlock, ...]]:
    """Find the marker and read the chain: yields holding-register reads; send each one's
    words, or ``None`` when the device refused it (exception reply). Raises NotSunSpec."""
    for base in bases:
        words = yield ReadRequest("holding", base, 2, ())
        if words is not None and tuple(words[:2]) == MARKER:
            break
    else:
        raise NotSunSpec("no SunS marker at " + ", ".join(str(b) for b in bases))
    address = base + 2
    models: list[ModelBlock] = []
    for _ in range(MAX_MODELS):
        header = yield ReadRequest("holding", address, 2, ())
        if header is None or header[0] in (END_ID, 0):
            break  # the end marker; some devices refuse reads past their last model instead
        model_id, length = int(header[0]), int(header[1])
        if address + 2 + length > 0x10000:
            raise NotSunSpec(f"model {model_id} at {address} runs past register 65535")
        body: list[int] = []
        if model_definition(model_id) is not None:
            while len(body) < length:
                count = min(chunk, length - len(body))
                words = yield ReadRequest("holding", address + 2 + len(body), count, ())
                if words is None:
                    raise NotSunSpec(f"model {model_id} at {address}: its registers "
                                     f"{address + 2 + len(body)}+{count} are refused")
                body.extend(words[:count])
        models.append(ModelBlock(model_id, address, length, tuple(body)))
        address += 2 + length
    else:
        raise NotSunSpec(f"no end marker after {MAX_MODELS} models")
    return tuple(models)


def discover_image(image: dict[int, int], bases: Sequence[int] = BASES
                   ) -> tuple[ModelBlock, ...]:
    """Run :func:`discover` against a register image (tests, the simulator's self-check)."""
    steps = discover(bases)
    request = next(steps)
    while True:
        span = range(request.address, request.address + request.count)
        known = any(a in image for a in span)  # a span with no register set is "refused"
        words = [image.get(a, 0) for a in span] if known else None
        try:
            request = steps.send(words)
        except StopIteration as stop:
            return stop.value


# --------------------------------------------------------------------------- the map


@dataclass
class _Builder:
    writable: tuple[str, ...]
    values: list[RegisterValue] = field(default_factory=list)
    exponents: dict[str, int] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)

    def allowed(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.writable)


def sunspec_map(
    models: Iterable[ModelBlock], *, name: str = PROTOCOL, writable: Sequence[str] = (),
    keep_absent: bool = False,
) -> SunSpecMap:
    """The register map of the models found. Control points (access RW) are ``opt-in``
    writes, and only those ``writable`` names (shell patterns: ``controls_*``) are kept
    writable; all others read-only. ``keep_absent``: keep points the body marks as not
    implemented (the simulator, which fills them itself)."""
    builder = _Builder(tuple(writable))
    models = tuple(models)
    seen: dict[str, int] = {}
    for model in models:
        definition = model_definition(model.model_id)
        if definition is None or not model.body:
            continue
        group = definition["group"]
        seen[group["name"]] = seen.get(group["name"], 0) + 1
        prefix = group["name"] + ("" if seen[group["name"]] == 1 else f"_{seen[group['name']]}")
        _add_group(builder, group, prefix, model, 0, model.length + 2, (), keep_absent,
                   group.get("label", group["name"]))
    used = {v.scale_from for v in builder.values if v.scale_from}
    values = tuple(v for v in builder.values if v.name not in builder.exponents or v.name in used)
    exponents = {k: e for k, e in builder.exponents.items() if k in used}
    common = next((m for m in models if m.model_id == 1 and m.body), None)
    identity: dict[str, str] = {}
    meta = {"source": "sunspec"}
    if common is not None:
        prefix = "common"
        by_name = {v.name: v for v in values}
        for key, point in (("manufacturer", "Mn"), ("model", "Md"), ("serial_number", "SN"),
                           ("version", "Vr")):
            spec = by_name.get(f"{prefix}_{point}")
            if spec is not None:
                offset = spec.address - common.body_address
                identity[key] = _text(common.body[offset: offset + spec.count])
        meta.update({k: v for k, v in identity.items() if k != "serial_number"})
        if "serial_number" in identity:
            meta["serial_number"] = f"{prefix}_SN"
    regmap = RegisterMap(name, f"<sunspec {name}>", values, 125, (), meta)
    return SunSpecMap(regmap, exponents, models, identity)


def _text(words: Sequence[int]) -> str:
    data = b"".join(int(w).to_bytes(2, "big") for w in words)
    return data.split(b"\x00", 1)[0].decode("latin-1").strip()


def _words(model: ModelBlock, offset: int, count: int) -> tuple[int, ...]:
    """``count`` words at ``offset`` from the model's ID register (the body starts at 2)."""
    return tuple(model.body[offset - 2: offset - 2 + count])


def _add_group(  # noqa: PLR0917 - one recursive walk over a definition's groups
    b: _Builder, group: dict[str, Any], prefix: str, model: ModelBlock, offset: int,
    end: int, scope: tuple[dict[str, str], ...], keep_absent: bool, label: str,
) -> int:
    """Add a group's points from ``offset`` (registers after the model's ID register) on;
    returns the offset after it; ``end``: the model's end, the same way."""
    points = group.get("points", [])
    names = {p["name"]: f"{prefix}_{p['name']}" for p in points}
    scope = (names, *scope)
    counts: dict[str, int] = {}
    for point in points:
        length = point_length(point)
        if point["name"] not in HEADER:
            if point["type"] == "count" and 2 <= offset < len(model.body) + 2:
                counts[point["name"]] = model.body[offset - 2]
            _add_point(b, point, names[point["name"]], model, offset, scope, keep_absent, label)
        offset += length
    for sub in group.get("groups", []):
        count = sub.get("count", 1)
        if isinstance(count, str):
            repeat = counts.get(count, 0)
        elif count == 0:  # as many as fill the model
            size = group_length(sub)
            repeat = max(0, (end - offset) // size) if size else 0
        else:
            repeat = int(count)
        for i in range(repeat):
            if offset >= end:
                break
            name = f"{prefix}_{sub['name']}" + (f"_{i + 1}" if repeat > 1 or count != 1 else "")
            offset = _add_group(b, sub, name, model, offset, end, scope, keep_absent,
                                f"{label} {sub.get('label', sub['name'])} {i + 1}")
    return offset


def _resolve_sf(sf: Any, scope: tuple[dict[str, str], ...]) -> tuple[str, int | None]:
    """A point's ``sf``: a register's map name, or a fixed exponent."""
    if sf is None:
        return "", 0
    if isinstance(sf, int) or (isinstance(sf, str) and sf.lstrip("-").isdigit()):
        return "", int(sf)
    for names in scope:
        if sf in names:
            return names[sf], None
    return "", None  # a reference this model does not define: leave the point out


def _add_point(  # noqa: PLR0917
    b: _Builder, point: dict[str, Any], name: str, model: ModelBlock, offset: int,
    scope: tuple[dict[str, str], ...], keep_absent: bool, model_label: str,
) -> None:
    kind = point["type"]
    address = model.address + offset
    if kind in SKIPPED or address + point_length(point) > model.body_address + model.length:
        return
    words = _words(model, offset, point_length(point))
    if kind == "string":
        if not keep_absent and not _text(words):
            return
        b.values.append(_spec(b, point, name, address, "string", point_length(point), (),
                              model_label))
        return
    dtype, count, absent = TYPES[kind]
    if not keep_absent and absent is not None and words == absent:
        return
    if not keep_absent and kind.startswith("acc") and not any(words):
        return  # an accumulator's "not implemented" is 0 (at discovery only: see module doc)
    if kind == "sunssf":
        b.exponents[name] = _signed16(words[0]) if words else 0
        b.values.append(RegisterValue(name=name, table="holding", address=address, dtype="s16",
                                      count=1, absent=absent or (), entity_category="diagnostic",
                                      description=f"scale factor ({model_label})"))
        return
    if kind.startswith("bitfield") and point.get("symbols"):
        _add_bits(b, point, name, address, count=count, model_label=model_label)
        return
    options = tuple((int(s["value"]), s["name"]) for s in point.get("symbols", []))
    if dtype == "enum" and not options:
        dtype = "u16"
    scale_from, exponent = _resolve_sf(point.get("sf"), scope)
    if point.get("sf") is not None and not scale_from and exponent is None:
        return
    b.values.append(_spec(b, point, name, address, dtype, count, absent or (), model_label,
                          options=options, scale_from=scale_from, exponent=exponent or 0))


def _signed16(word: int) -> int:
    return word - 0x10000 if word & 0x8000 else word


def _spec(  # noqa: PLR0917
    b: _Builder, point: dict[str, Any], name: str, address: int, dtype: str, count: int,
    absent: tuple[int, ...], model_label: str, *, options: tuple[tuple[int, str], ...] = (),
    scale_from: str = "", exponent: int = 0,
) -> RegisterValue:
    unit, device_class, state_class = UNITS.get(point.get("units", ""),
                                                (point.get("units", ""), "", ""))
    if point["type"].startswith("acc"):
        state_class = "total_increasing"
    if options or dtype == "string" or point["type"] in ("count",) or point["type"].startswith(
            "bitfield"):
        unit, device_class, state_class = "", "", ""  # an enum's kind says it (value_spec)
    writable = point.get("access") == "RW"
    access = "rw" if writable and b.allowed(name) else "r"
    label = point.get("label") or point["name"]
    b.labels[label] = b.labels.get(label, 0) + 1
    display = label if b.labels[label] == 1 else f"{model_label} {label}"
    category = "config" if writable else (
        "diagnostic" if name.startswith(("common_", "nameplate_", "settings_")) else "")
    return RegisterValue(
        name=name, table="holding", address=address, dtype=dtype, count=count,
        scale=10.0 ** exponent, unit=unit, access=access, options=options,
        device_class=device_class, state_class=state_class,
        description=point.get("desc", ""), decimals=max(0, -exponent),
        display_name=display, entity_category=category,
        write_policy="opt-in" if access == "rw" else "", scale_from=scale_from, absent=absent,
    )


def _add_bits(b: _Builder, point: dict[str, Any], name: str, address: int, *, count: int,
              model_label: str) -> None:
    """A bitfield with named bits: one on/off value per bit (a binary sensor each)."""
    for symbol in point["symbols"]:
        bit = int(symbol["value"])
        if bit >= 16 * count:
            continue
        word = address + count - 1 - bit // 16  # big-endian: the last word holds bits 0-15
        b.values.append(RegisterValue(
            name=f"{name}_{symbol['name']}", table="holding", address=word, dtype="bits",
            count=1, bit_start=bit % 16, bit_width=1, options=((0, "Off"), (1, "On")),
            description=symbol.get("desc", "") or symbol.get("label", ""),
            display_name=f"{symbol.get('label') or symbol['name']}",
            entity_category="diagnostic", absent=(0xFFFF,),
        ))
