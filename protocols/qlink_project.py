"""Which name is which load or keypad: the INI syntax and the QLink project export.

A ``LO`` event names a load by its address (master, enclosure, module, load); ``VLO``/``VGL``
take the contractor number the installer typed into the QLink program. Nothing links the two
but the project, so the gateway needs a map, written in the INI or read from the export that
the QLink tool writes (``Load: name,master,encl,module,load,contractor#,type,...``).

INI syntax (validated once, at configuration load):

- ``loads = kitchen_pendant=127@1.1.2.1, porch=@1.1.1.3``: name = [contractor#]@m.e.mod.load
  (without a contractor number the load is driven by address, ``VLB``/``VGB``).
- ``keypads = entry=1.23``: name = master.station.
- ``writable_loads = kitchen_pendant``, ``writable_buttons = entry.1, hall`` (a whole
  keypad), ``*`` for all: the allowlists that command envelopes are checked against.

Pure: parsing takes text; only :func:`read_project` touches a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True, slots=True, order=True)
class LoadAddress:
    """Where a load is wired: master 1-15, enclosure 1-4, module 1-4, load 1-8."""

    master: int
    enclosure: int
    module: int
    load: int

    @classmethod
    def parse(cls, text: str) -> LoadAddress:
        parts = text.strip().split(".")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            raise ValueError(f"address {text!r} is not master.enclosure.module.load")
        address = cls(*(int(p) for p in parts))
        address.check()
        return address

    def check(self) -> None:
        for what, value, high in (("master", self.master, 15), ("enclosure", self.enclosure, 4),
                                  ("module", self.module, 4), ("load", self.load, 8)):
            if not 1 <= value <= high:
                raise ValueError(f"{what} {value} in {self} is out of range 1-{high}")

    def __str__(self) -> str:
        return f"{self.master}.{self.enclosure}.{self.module}.{self.load}"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """A named load; ``contractor`` None means "address it with VLB/VGB"."""

    name: str
    address: LoadAddress
    contractor: int | None = None
    room: str = ""


@dataclass(frozen=True, slots=True)
class KeypadSpec:
    """A named keypad (wired station): master 1-15, station 1-255."""

    name: str
    master: int
    station: int


_Spec = TypeVar("_Spec", LoadSpec, KeypadSpec)
ActionKind = Literal["toggle", "on", "off", "all_on", "all_off"]


@dataclass(frozen=True, slots=True)
class ButtonAction:
    """What a programmed button does, as far as the simulator plays it back."""

    kind: ActionKind
    loads: tuple[tuple[LoadAddress, int], ...] = ()  # (address, level when on)
    fade: float = 0.0


@dataclass(frozen=True, slots=True)
class ProjectExport:
    """What a QLink project export says about loads, keypads and their buttons."""

    path: str
    loads: tuple[LoadSpec, ...]
    keypads: tuple[KeypadSpec, ...]
    actions: tuple[tuple[tuple[int, int, int], ButtonAction], ...] = ()  # (m, station, button)


def slug(text: str) -> str:
    """``Game Room`` + ``4 6" downlites`` -> ``game_room_4_6_downlites``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "unnamed"


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"name {name!r} must be lower-case letters, digits and _")
    return name


def _pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"{item!r} is not name=value")
        out.append((_check_name(name.strip()), value.strip()))
    return out


def parse_loads(text: str) -> tuple[LoadSpec, ...]:
    """``kitchen_pendant=127@1.1.2.1, porch=@1.1.1.3`` -> LoadSpecs (ValueError names the item)."""
    specs: list[LoadSpec] = []
    for name, value in _pairs(text):
        contractor_text, at, address_text = value.partition("@")
        if not at:
            raise ValueError(f"load {name!r}: {value!r} is not [contractor#]@m.e.mod.load "
                             "(the address is needed to map LO events)")
        try:
            address = LoadAddress.parse(address_text)
        except ValueError as exc:
            raise ValueError(f"load {name!r}: {exc}") from None
        contractor = None
        if contractor_text.strip():
            if not contractor_text.strip().isdigit() or not 1 <= int(contractor_text) <= 9999:
                raise ValueError(f"load {name!r}: contractor number {contractor_text!r} "
                                 "is not 1-9999")
            contractor = int(contractor_text)
        specs.append(LoadSpec(name, address, contractor))
    return specs_unique(tuple(specs))


def parse_keypads(text: str) -> tuple[KeypadSpec, ...]:
    """``entry=1.23`` -> KeypadSpecs."""
    specs: list[KeypadSpec] = []
    for name, value in _pairs(text):
        parts = value.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"keypad {name!r}: {value!r} is not master.station")
        master, station = int(parts[0]), int(parts[1])
        if not 1 <= master <= 15 or not 1 <= station <= 255:
            raise ValueError(f"keypad {name!r}: master 1-15 and station 1-255 expected")
        specs.append(KeypadSpec(name, master, station))
    return specs_unique(tuple(specs))


def specs_unique(specs: tuple[_Spec, ...]) -> tuple[_Spec, ...]:
    """Refuse two entries with one name or one address: events could not be told apart."""
    names: set[str] = set()
    places: set[object] = set()
    for spec in specs:
        place = spec.address if isinstance(spec, LoadSpec) else (spec.master, spec.station)
        if spec.name in names:
            raise ValueError(f"name {spec.name!r} is given twice")
        if place in places:
            raise ValueError(f"{spec.name!r}: address {place} is given twice")
        names.add(spec.name)
        places.add(place)
    return specs


# ---------------------------------------------------------------------------- export


def _first_int_run(fields: list[str], count: int, start: int = 1) -> int | None:
    """Index of the first run of ``count`` integer fields at or after ``start``."""
    for i in range(start, len(fields) - count + 1):
        if all(f.strip().isdigit() for f in fields[i : i + count]):
            return i
    return None


def _lda(text: str) -> list[tuple[LoadAddress, int]]:
    """``1111:60%,1114`` -> [(1.1.1.1, 60), (1.1.1.4, 100)]: digits m(1-2) e mod load."""
    out = []
    for item in text.split(","):
        code, _, level = item.strip().partition(":")
        if not code.isdigit() or len(code) < 4:
            continue
        address = LoadAddress(int(code[:-3]), int(code[-3]), int(code[-2]), int(code[-1]))
        try:
            address.check()
        except ValueError:
            continue
        out.append((address, int(level.rstrip("%")) if level.rstrip("%").isdigit() else 100))
    return out


_ACTIONS: dict[str, ActionKind] = {
    "TOGGLE": "toggle", "PRESET_TOGGLE": "toggle", "DIM": "toggle", "PRESET_ON": "on",
    "PRESET_OFF": "off", "ALL_ON": "all_on", "ALL_OFF": "all_off",
}


def parse_project(text: str, path: str = "") -> ProjectExport:
    """A QLink project export -> loads (named ``<room>_<load>``), keypads and button actions.

    Unknown lines are skipped: the export holds much more (time events, palettes) than the
    gateway needs. A duplicate name gets the contractor number (or station) appended.
    """
    room = ""
    loads: list[LoadSpec] = []
    keypads: list[KeypadSpec] = []
    actions: dict[tuple[int, int, int], ButtonAction] = {}
    station: tuple[int, int] | None = None
    button: tuple[int, int, int] | None = None
    pending: tuple[ActionKind, float] | None = None  # the button's first event, awaiting LdA
    names: set[str] = set()

    def unique(name: str, suffix: int) -> str:
        name = name if name not in names else f"{name}_{suffix}"
        names.add(name)
        return name

    for line in text.splitlines():
        key, sep, rest = line.strip().partition(": ")
        if not sep:
            key, rest = key.rstrip(":"), ""
        fields = rest.split(",")
        if key == "Room":
            room, station, button = rest.strip(), None, None
        elif key == "Load":
            i = _first_int_run(fields, 5)
            if i is None:
                continue
            m, e, mod, ld, con = (int(f) for f in fields[i : i + 5])
            address = LoadAddress(m, e, mod, ld)
            try:
                address.check()
            except ValueError:
                continue
            base = slug(f"{room} {','.join(fields[:i])}")
            loads.append(LoadSpec(unique(base, con), address, con if 1 <= con <= 9999 else None,
                                  room))
        elif key == "Station":
            i = _first_int_run(fields, 3)
            if i is None:
                station = None
                continue
            station = (int(fields[i + 1]), int(fields[i + 2]))
            if 1 <= station[0] <= 15 and 1 <= station[1] <= 255:
                base = slug(f"{room} {','.join(fields[:i])}")
                keypads.append(KeypadSpec(unique(base, station[1]), *station))
            button = None
        elif key in ("Btn", "BCnt") and station is not None:
            i = _first_int_run(fields, 1)
            button = None if i is None else (*station, int(fields[i]))
            pending = None
        elif key == "Event" and button is not None and rest.startswith("1,"):
            words = rest.split()
            verb = next((w for w in words if w in _ACTIONS), "")
            if verb:
                numbers = words[words.index(verb) + 1 :]
                fade = float(numbers[1]) if len(numbers) > 1 and _is_float(numbers[1]) else 0.0
                pending = (_ACTIONS[verb], fade)
                if pending[0] in ("all_on", "all_off"):
                    actions[button] = ButtonAction(pending[0], (), fade)
        elif key == "LdA" and button is not None and pending is not None:
            old = actions.get(button)
            more = tuple(_lda(rest))
            actions[button] = ButtonAction(pending[0], (old.loads if old else ()) + more,
                                           pending[1])
        elif key == "Cond" and button is not None:
            pending = None  # conditional (delayed, timed) events are not simulated
    return ProjectExport(path, tuple(loads), tuple(keypads), tuple(actions.items()))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_project(path: str) -> ProjectExport:
    """Read and parse an export file (the QLink tool writes Windows-1252 text)."""
    text = Path(path).read_bytes().decode("cp1252", "replace")
    export = parse_project(text, path)
    if not export.loads and not export.keypads:
        raise ValueError(f"{path}: no 'Load:' or 'Station:' lines found")
    return export
