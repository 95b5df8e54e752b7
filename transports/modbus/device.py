"""One Modbus device: unit id + map + read plan + decoder + write checks. No I/O here.

Kept apart from the client loop so that several devices can share one bus (a later scheduler
interleaves their plans): everything here is a function of the map and the bytes read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from gateway.message import ValueSpec
from protocols.read_plan import LinkCost, ReadPlan, ReadRequest, plan_reads
from protocols.register_codec import decode, encode, to_raw
from protocols.registers import (
    INT_RANGE,
    RegisterMap,
    RegisterValue,
    Value,
    WriteRejected,
)


@dataclass(frozen=True)
class WriteOp:
    """A checked write: the value and its raw form (encoded once the current word is known)."""

    spec: RegisterValue
    raw: int | float | str | bool

    @property
    def needs_current(self) -> bool:
        """A bit field shares its register: read it first and change only its bits."""
        return self.spec.dtype == "bits"

    def words(self, current: int = 0) -> list[int] | list[bool]:
        return encode(self.spec, self.raw, current)


class ModbusDevice:
    def __init__(
        self,
        unit_id: int,
        regmap: RegisterMap,
        *,
        batch_size: int = 0,
        link: LinkCost | None = None,
        writable: frozenset[str] | set[str] = frozenset(),
        exponents: dict[str, int] | None = None,
    ) -> None:
        self.unit_id = unit_id
        self.map = regmap
        #: scale-factor registers (SunSpec ``sunssf``) -> the power of ten last read; they
        #: scale the values naming them (``scale_from``) and are not published themselves
        self.exponents: dict[str, int] = {v.scale_from: 0 for v in regmap.values
                                          if v.scale_from}
        self.exponents.update(exponents or {})
        self._scaled: dict[tuple[str, int], RegisterValue] = {}
        #: opt-in registers (``writable = opt-in`` in the map) this section allows writing
        self.opted_in = frozenset(writable)
        self.batch_size = batch_size or regmap.batch_size
        self.plan: ReadPlan = plan_reads(
            regmap.values, batch_size=self.batch_size, unreadable=regmap.unreadable, link=link
        )

    # ------------------------------------------------------------------ reading
    def decode(self, request: ReadRequest, words: list[int] | list[bool]) -> dict[str, Value]:
        """The values one request carried, decoded and scaled."""
        if len(words) < request.count:
            raise ValueError(f"short reply: {len(words)} of {request.count}")
        out: dict[str, Value] = {}
        names = sorted(request.names, key=lambda n: n not in self.exponents)  # factors first
        for name in names:
            spec = self.map[name]
            first = spec.address - request.address
            raw = words[first : first + spec.count]
            if spec.absent and tuple(raw) == spec.absent:
                continue  # "not implemented" (SunSpec): no value, not a huge number
            if name in self.exponents:
                self.exponents[name] = int(decode(spec, raw))
                continue
            out[name] = decode(self.scaled(spec), raw)
        return out

    def out_of_range(self, values: dict[str, Value]) -> dict[str, str]:
        """The values outside their map's declared ``min``/``max`` (where it declares them),
        each with the reason: a device reporting them is wrong, they are not readings."""
        bad: dict[str, str] = {}
        for name, value in values.items():
            spec = self.map[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):  # a float32 NaN or infinity: no reading has one
                bad[name] = f"{name} = {value} is not a finite number"
                continue
            low, high = spec.minimum, spec.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"{'' if low is None else f'{low:g}'}..{'' if high is None else f'{high:g}'}"
                bad[name] = f"{name} = {value:g} outside the map's range {span}"
        return bad

    def scaled(self, spec: RegisterValue) -> RegisterValue:
        """``spec`` with its scale-factor register's last reading applied (itself without)."""
        if not spec.scale_from:
            return spec
        exponent = self.exponents.get(spec.scale_from, 0)
        key = (spec.name, exponent)
        found = self._scaled.get(key)
        if found is None:
            found = self._scaled[key] = replace(spec, scale=10.0 ** exponent,
                                                decimals=max(0, -exponent))
        return found

    def single_read(self, spec: RegisterValue) -> ReadRequest:
        return ReadRequest(spec.table, spec.address, spec.count, (spec.name,))

    # ------------------------------------------------------------------ writing
    def check_write(self, values: Any) -> list[WriteOp]:
        """All-or-nothing check of a write command's ``values``; raises WriteRejected."""
        if not isinstance(values, dict) or not values:
            raise WriteRejected("a write needs 'values': {name: value, ...}")
        ops = []
        for name, value in values.items():
            if name not in self.map or name in self.exponents:
                raise WriteRejected(f"{name}: no such value in map {self.map.name}")
            spec = self.scaled(self.map[name])
            if not self.can_write(spec):
                if spec.opt_in:
                    raise WriteRejected(f"{name}: a device configuration register, read-only "
                                        "unless the section lists it in 'writable ='")
                raise WriteRejected(f"{name}: read-only")
            ops.append(WriteOp(spec, to_raw(spec, value)))
        return ops

    def can_write(self, spec: RegisterValue) -> bool:
        return spec.writable and (not spec.opt_in or spec.name in self.opted_in)

    # ------------------------------------------------------------------ describing
    def specs(self) -> list[ValueSpec]:
        return [value_spec(self.scaled(v), self.can_write(v)) for v in self.map.values
                if v.readable and v.name not in self.exponents]

    def info(self, transport_name: str, serial: str = "") -> dict[str, str]:
        meta = self.map.meta
        return {
            "transport_name": transport_name,
            "device_identifier": f"{self.map.name}_{serial or self.unit_id}".lower(),
            "device_manufacturer": meta.get("manufacturer", ""),
            "device_model": meta.get("model", self.map.name),
            "device_serial_number": serial,
            "device_name": f"{meta.get('manufacturer', 'Modbus')} {self.map.name} #{self.unit_id}",
        }


#: two-option enums that are really a switch: (off text, on text), lower case
_SWITCH_WORDS = {("off", "on"), ("disabled", "enabled"), ("disable", "enable"), ("no", "yes")}


def value_spec(v: RegisterValue, writable: bool | None = None) -> ValueSpec:
    """What outputs (Home Assistant discovery) need to know about one map value.

    ``writable`` is the section's answer (opt-in registers); None = as the map says.
    """
    writable = v.writable if writable is None else writable
    options = tuple(text for _, text in v.options)
    keys = tuple(key for key, _ in v.options)
    if v.dtype == "bool":
        kind = "switch" if writable else "binary"
    elif keys == (0, 1) and tuple(o.lower() for o in options) in _SWITCH_WORDS:
        kind = "switch" if writable else "binary"  # 0=Off;1=On: a switch, not a select
    elif v.options:
        kind = "select"  # read-only: an enum sensor with its options
    elif v.dtype == "string":
        kind = "text"
    else:
        kind = "number"
    minimum, maximum, step = v.minimum, v.maximum, None
    if kind == "number" and v.dtype != "float32":
        step = v.scale
        low, high = (0, (1 << v.bit_width) - 1) if v.dtype == "bits" else INT_RANGE[v.dtype]
        ends = sorted((low * v.scale + v.offset, high * v.scale + v.offset))
        minimum = ends[0] if minimum is None and writable else minimum
        maximum = ends[1] if maximum is None and writable else maximum
    device_class = v.device_class
    if kind == "select" and device_class == "enum":
        device_class = ""  # implied by the options
    return ValueSpec(
        name=v.name, unit=v.unit, device_class=device_class, state_class=v.state_class,
        writable=writable, minimum=minimum, maximum=maximum, step=step,
        options=options, kind=kind, display_name=v.display_name,
        entity_category=v.entity_category,
    )
