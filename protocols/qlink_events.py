"""QLink event lines (``SW``, ``LO``, ``LE``...) as frozen values, and the LED hex masks.

Each event can write itself back as its line (``encode``): the controller simulator uses that,
the parser in ``protocols/qlink.py`` the other way round, so both ends share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LedState = Literal["off", "on", "blink"]
EVENT_TAGS = frozenset({"SW", "IR", "LO", "LS", "LV", "LE", "LC", "AON", "AOFF"})


@dataclass(frozen=True, slots=True)
class SwitchEvent:
    """``SW m station switch 1|0 [serial]``: a keypad button pressed (1) or released (0)."""

    master: int
    station: int
    switch: int
    pressed: bool
    serial: int | None = None

    def encode(self) -> str:
        tail = "" if self.serial is None else f" {self.serial}"
        return f"SW {self.master} {self.station} {self.switch} {int(self.pressed)}{tail}"


@dataclass(frozen=True, slots=True)
class IrEvent:
    """``IR m zone code 1|0 [serial]``: an infrared button."""

    master: int
    zone: int
    code: int
    pressed: bool
    serial: int | None = None

    def encode(self) -> str:
        tail = "" if self.serial is None else f" {self.serial}"
        return f"IR {self.master} {self.zone} {self.code} {int(self.pressed)}{tail}"


@dataclass(frozen=True, slots=True)
class LoadEvent:
    """``LO m encl mod load level``: a module load changed; the address, not a contractor #."""

    master: int
    enclosure: int
    module: int
    load: int
    level: int

    @property
    def address(self) -> tuple[int, int, int, int]:
        return (self.master, self.enclosure, self.module, self.load)

    def encode(self) -> str:
        return f"LO {self.master} {self.enclosure} {self.module} {self.load} {self.level}"


@dataclass(frozen=True, slots=True)
class StationLoadEvent:
    """``LS m station load level``: a load on a station (a dimmer) changed."""

    master: int
    station: int
    load: int
    level: int

    def encode(self) -> str:
        return f"LS {self.master} {self.station} {self.load} {self.level}"


@dataclass(frozen=True, slots=True)
class VariableEvent:
    """``LV m var level``: a variable (virtual module 17) changed."""

    master: int
    variable: int
    level: int

    def encode(self) -> str:
        return f"LV {self.master} {self.variable} {self.level}"


@dataclass(frozen=True, slots=True)
class AllLoadsEvent:
    """``AON n`` / ``AOFF n``: ALL_ON / ALL_OFF ran; n loads were not affected."""

    on: bool
    unaffected: int

    def encode(self) -> str:
        return f"{'AON' if self.on else 'AOFF'} {self.unaffected}"


@dataclass(frozen=True, slots=True)
class LedEvent:
    """``LE m station onhex blinkhex``: the whole station's LEDs after any change."""

    master: int
    station: int
    on_mask: int
    blink_mask: int

    @property
    def leds(self) -> tuple[LedState, ...]:
        return decode_leds(self.on_mask, self.blink_mask)

    def encode(self) -> str:
        return f"LE {self.master} {self.station} {self.on_mask:02X} {self.blink_mask:02X}"


@dataclass(frozen=True, slots=True)
class LcdEvent:
    """``LC m station switch 0|1``: an LCD station's button LED."""

    master: int
    station: int
    switch: int
    state: int

    def encode(self) -> str:
        return f"LC {self.master} {self.station} {self.switch} {self.state}"


Event = (
    SwitchEvent | IrEvent | LoadEvent | StationLoadEvent | VariableEvent | AllLoadsEvent
    | LedEvent | LcdEvent
)


# ---------------------------------------------------------------------------- LED masks


def decode_leds(on_mask: int, blink_mask: int, count: int = 8) -> tuple[LedState, ...]:
    """Hex masks -> per-LED state; bit 0 is LED 1. Blink wins over on (a blinking LED is lit)."""
    return tuple(
        "blink" if blink_mask >> i & 1 else ("on" if on_mask >> i & 1 else "off")
        for i in range(count)
    )


def encode_leds(states: tuple[LedState, ...] | list[LedState]) -> tuple[int, int]:
    """Per-LED states -> (on_mask, blink_mask), the inverse of :func:`decode_leds`."""
    on = blink = 0
    for i, state in enumerate(states):
        if state == "on":
            on |= 1 << i
        elif state == "blink":
            blink |= 1 << i
    return on, blink


LED_CODES: dict[LedState, int] = {"off": 0, "on": 1, "blink": 2}
