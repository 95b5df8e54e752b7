"""The ``qlink`` section's settings, and the directory of names that commands are checked against.

Every key is validated at load into typed values: ``loads``/``keypads`` strings become
LoadSpec/KeypadSpec tuples, ``project_file`` is read and parsed, the allowlists must name
things that exist. :class:`Directory` then turns a command envelope into V-commands (or a
clear refusal) and readings/describe specs back into names; it does no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from gateway.message import ValueSpec
from gateway.settings import StrList, TransportSettings
from protocols.qlink import (
    LED_CODES,
    AllLoadsEvent,
    Command,
    Event,
    LedEvent,
    LoadEvent,
    SwitchEvent,
    command,
    decode_leds,
)
from protocols.qlink_project import (
    KeypadSpec,
    LoadAddress,
    LoadSpec,
    ProjectExport,
    parse_keypads,
    parse_loads,
    read_project,
)


def _loads(value: Any) -> Any:
    return parse_loads(value) if isinstance(value, str) else value


def _keypads(value: Any) -> Any:
    return parse_keypads(value) if isinstance(value, str) else value


def _project(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return read_project(value.strip())
        except OSError as exc:
            raise ValueError(f"cannot read project export {value!r}: {exc}") from None
    return value


LoadList = Annotated[tuple[LoadSpec, ...], BeforeValidator(_loads)]
KeypadList = Annotated[tuple[KeypadSpec, ...], BeforeValidator(_keypads)]
Project = Annotated[ProjectExport | None, BeforeValidator(_project)]


class QLinkSettings(TransportSettings):
    """Keys of a ``transport = qlink`` section (docs/transports/qlink.md)."""

    host: str = Field(default="127.0.0.1", description="the IP-Enabler's address")
    port: int = Field(default=3040, ge=1, le=65535, description="its TCP port")
    strategy: Literal["single", "split"] = Field(
        default="single",
        description="single: one connection for everything (a real IP-Enabler takes one); "
        "split: an event connection plus command connections (falls back to single if refused)",
    )
    command_port: int = Field(default=0, ge=0, le=65535,
                              description="split: port for commands (0 = port)")
    poll_port: int = Field(default=0, ge=0, le=65535,
                           description="split: separate port for polls (0 = the command link)")
    command_connections: int = Field(
        default=0, ge=0, le=8, description="split: 0 = a short-lived connection per command, "
        "N = a pool of N persistent ones")
    command_gap: float = Field(default=0.12, ge=0, le=10,
                               description="seconds between two commands (the link is 19200 baud)")
    reply_timeout: float = Field(default=2.0, gt=0, description="seconds to wait for a reply")
    ping_interval: float = Field(
        default=30.0, gt=0, description="an idle link is checked with VEC this often (seconds)")
    connect_timeout: float = Field(default=5.0, gt=0, description="seconds for a TCP connect")
    keepalive: float = Field(default=30.0, ge=0, description="TCP keepalive idle seconds; 0 off")
    reconnect_initial: float = Field(default=1.0, gt=0, description="first reconnect wait (s)")
    reconnect_max: float = Field(default=60.0, gt=0, description="longest reconnect wait (s)")
    line_end: Literal["cr", "crlf"] = Field(default="cr", description="what ends our commands")
    reply_format: Literal["detailed", "regular"] = Field(
        default="detailed",
        description="detailed: commands carry '#' so replies name their command (R..)",
    )
    monitor_switches: bool = Field(default=True, description="enable SW events (VOS)")
    monitor_loads: bool = Field(default=True, description="enable LO events (VOL)")
    monitor_leds: Literal["off", "keypad", "lcd", "both"] = Field(
        default="keypad", description="LE/LC events (VOD)")
    read_interval: float = Field(
        default=300.0, description="seconds between full re-polls of every load and keypad")
    loads: LoadList = Field(default=(), description="name=[contractor#]@m.e.mod.load, ...")
    keypads: KeypadList = Field(default=(), description="name=master.station, ...")
    project_file: Project = Field(default=None, description="a QLink project export to import")
    buttons_per_keypad: int = Field(default=8, ge=1, le=10,
                                    description="buttons (and LEDs, up to 8) described per keypad")
    writable_loads: StrList = Field(default=(), description="loads commands may set; * = all")
    writable_buttons: StrList = Field(
        default=(), description="keypad or keypad.N that commands may press; * = all")
    writable_leds: StrList = Field(
        default=(), description="keypad or keypad.N whose LEDs commands may set (VLD); * = all")
    queue_limit: int = Field(default=64, ge=1, description="commands waiting at most")
    command_max_age: float = Field(default=30.0, gt=0,
                                   description="a queued command older than this times out")
    release_max: float = Field(default=3600.0, gt=0,
                               description="longest release for the programming tool (s)")
    release_seconds: float = Field(
        default=600.0, gt=0, description="a release_link without seconds (an MQTT button) lasts")

    @model_validator(mode="after")
    def _check_names(self) -> QLinkSettings:
        loads = self.all_loads
        keypads = self.all_keypads
        for kind, specs in (("loads", loads), ("keypads", keypads)):
            names = [s.name for s in specs]
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ValueError(f"{kind}: {sorted(dupes)} given twice (loads/keypads and "
                                 "project_file together)")
        load_names = {s.name for s in loads}
        pad_names = {k.name for k in keypads}
        for name in self.writable_loads:
            if name != "*" and name not in load_names:
                raise ValueError(f"writable_loads: {name!r} is not a configured load")
        for key in ("writable_buttons", "writable_leds"):
            for item in getattr(self, key):
                pad, _, number = item.partition(".")
                if item != "*" and (pad not in pad_names or (number and not number.isdigit())):
                    raise ValueError(f"{key}: {item!r} is not keypad or keypad.N")
        return self

    def claims(self) -> list[tuple[str, str]]:
        """An IP-Enabler takes one connection: two sections on one box would lock each other out."""
        if self.strategy == "single":
            return [("QLink IP-Enabler connection", f"{self.host}:{self.port}")]
        return []

    @property
    def all_loads(self) -> tuple[LoadSpec, ...]:
        return self.loads + (self.project_file.loads if self.project_file else ())

    @property
    def all_keypads(self) -> tuple[KeypadSpec, ...]:
        return self.keypads + (self.project_file.keypads if self.project_file else ())


LINK_BUTTONS = ("release_link", "reacquire")


class CommandRejected(ValueError):
    """A command envelope we refuse before anything goes on the wire."""


@dataclass(frozen=True, slots=True)
class Step:
    """One V-command a command envelope needs, and what it means for readings."""

    name: str  # the value name (a load, a button, an LED)
    command: Command
    value: Any = None


@dataclass(frozen=True, slots=True)
class Translation:
    """What one event line means for the bridge: an envelope (kind, data) or an unknown address."""

    kind: str = ""  # reading | event | "" (nothing to emit)
    data: dict[str, Any] | None = None
    unmapped: str = ""  # "load 1.2.1.1" when the address is not in the map
    repoll: bool = False  # ALL_ON/ALL_OFF: which loads changed is not said


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool):
        value = 100 if value else 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CommandRejected(f"{what}: {value!r} is not a number") from None
    if not low <= number <= high:
        raise CommandRejected(f"{what}: {number:g} is outside {low:g}-{high:g}")
    return number


class Directory:
    """Names <-> addresses for one configuration; plans commands against the allowlists."""

    def __init__(self, settings: QLinkSettings) -> None:
        self.settings = settings
        self.loads = {s.name: s for s in settings.all_loads}
        self.by_address: dict[LoadAddress, LoadSpec] = {s.address: s for s in self.loads.values()}
        self.keypads = {k.name: k for k in settings.all_keypads}
        self.by_station = {(k.master, k.station): k for k in self.keypads.values()}
        self.modifier: Literal["", "#"] = "#" if settings.reply_format == "detailed" else ""
        self.buttons = settings.buttons_per_keypad

    # ------------------------------------------------------------------ names

    @staticmethod
    def button_name(pad: str, button: int) -> str:
        return f"{pad}_button_{button}"

    @staticmethod
    def led_name(pad: str, led: int) -> str:
        return f"{pad}_led_{led}"

    def _allowed(self, key: str, pad: str, number: int) -> bool:
        allow = getattr(self.settings, key)
        return "*" in allow or pad in allow or f"{pad}.{number}" in allow

    def load_writable(self, name: str) -> bool:
        return "*" in self.settings.writable_loads or name in self.settings.writable_loads

    def specs(self) -> list[ValueSpec]:
        """Describe: levels 0-100 %, buttons as buttons, LEDs as off/on/blink, and the two
        link buttons (give the controller to the programming tool, take it back)."""
        out = [ValueSpec(name, kind="button", writable=True) for name in LINK_BUTTONS]
        out += [ValueSpec(name, unit="%", state_class="measurement",
                         writable=self.load_writable(name), minimum=0, maximum=100, step=1)
               for name in self.loads]
        for pad in self.keypads:
            for n in range(1, self.buttons + 1):
                out.append(ValueSpec(self.button_name(pad, n), kind="button",
                                     writable=self._allowed("writable_buttons", pad, n)))
            for n in range(1, min(self.buttons, 8) + 1):
                out.append(ValueSpec(self.led_name(pad, n), kind="select",
                                     options=("off", "on", "blink"),
                                     writable=self._allowed("writable_leds", pad, n)))
        return out

    def led_values(self, pad: str, on_mask: int, blink_mask: int) -> dict[str, str]:
        states = decode_leds(on_mask, blink_mask, min(self.buttons, 8))
        return {self.led_name(pad, i + 1): state for i, state in enumerate(states)}

    def translate(self, event: Event) -> Translation:
        """An event line -> readings named by the map, a ``button`` event, or a raw event."""
        if isinstance(event, LoadEvent):
            spec = self.by_address.get(LoadAddress(*event.address))
            if spec is None:
                return Translation(unmapped=f"load {'.'.join(map(str, event.address))}")
            return Translation("reading", {spec.name: event.level})
        if isinstance(event, SwitchEvent | LedEvent):
            pad = self.by_station.get((event.master, event.station))
            station = f"station {event.master}.{event.station}"
            if isinstance(event, LedEvent):
                if pad is None:
                    return Translation(unmapped=station)
                return Translation("reading",
                                   self.led_values(pad.name, event.on_mask, event.blink_mask))
            data: dict[str, Any] = {
                "event": "button", "action": "press" if event.pressed else "release",
                "button": event.switch, "master": event.master, "station": event.station}
            if pad is not None:
                data.update(keypad=pad.name, name=self.button_name(pad.name, event.switch))
            if event.serial is not None:
                data["serial"] = event.serial
            return Translation("event", data, "" if pad else station)
        name = type(event).__name__.removesuffix("Event").lower()
        return Translation("event", {"event": f"qlink_{name}", **asdict(event)},
                           repoll=isinstance(event, AllLoadsEvent))

    # ------------------------------------------------------------------ commands

    def poll(self) -> list[Step]:
        """Read everything: each load's level, each keypad's LEDs."""
        steps = [Step(name, self._get_level(spec)) for name, spec in self.loads.items()]
        steps += [Step(pad, command("VLT", k.master, k.station, modifier=self.modifier))
                  for pad, k in self.keypads.items()]
        return steps

    def _get_level(self, spec: LoadSpec) -> Command:
        if spec.contractor is not None:
            return command("VGL", spec.contractor, modifier=self.modifier)
        a = spec.address
        return command("VGB", a.master, a.enclosure, a.module, a.load, modifier=self.modifier)

    def set_level(self, name: str, level: Any, fade: Any = 0.0) -> Step:
        spec = self.loads.get(name)
        if spec is None:
            raise CommandRejected(f"no load named {name!r}")
        if not self.load_writable(name):
            raise CommandRejected(f"load {name!r} is not in writable_loads")
        lvl = round(_number(level, name, 0, 100))
        seconds = _number(fade or 0.0, "fade", 0, 6553.5)
        if spec.contractor is not None:
            cmd = command("VLO", spec.contractor, lvl, float(seconds), modifier=self.modifier)
        else:
            a = spec.address
            cmd = command("VLB", a.master, a.enclosure, a.module, a.load, lvl, float(seconds),
                          modifier=self.modifier)
        return Step(name, cmd, lvl)

    def switch(self, pad: str, button: Any, state: int) -> Step:
        spec = self.keypads.get(pad)
        if spec is None:
            raise CommandRejected(f"no keypad named {pad!r}")
        number = int(_number(button, "button", 1, 10))
        if not self._allowed("writable_buttons", pad, number):
            raise CommandRejected(f"button {pad}.{number} is not in writable_buttons")
        return Step(self.button_name(pad, number),
                    command("VSW", spec.master, spec.station, number, state,
                            modifier=self.modifier), state)

    def set_led(self, pad: str, led: Any, state: Any) -> Step:
        spec = self.keypads.get(pad)
        if spec is None:
            raise CommandRejected(f"no keypad named {pad!r}")
        number = int(_number(led, "led", 1, 10))
        if not self._allowed("writable_leds", pad, number):
            raise CommandRejected(f"LED {pad}.{number} is not in writable_leds")
        code = LED_CODES.get(state) if isinstance(state, str) else None
        if code is None:
            code = int(_number(state, "LED state (off/on/blink or 0-2)", 0, 2))
        return Step(self.led_name(pad, number),
                    command("VLD", spec.master, spec.station, number, code,
                            modifier=self.modifier), code)

    def _write_value(self, name: str, value: Any, fade: Any) -> Step:
        if name in self.loads:
            return self.set_level(name, value, fade)
        for pad in self.keypads:
            prefix_b, prefix_l = f"{pad}_button_", f"{pad}_led_"
            if name.startswith(prefix_b) and name[len(prefix_b):].isdigit():
                return self.switch(pad, int(name[len(prefix_b):]), 6)  # press and release
            if name.startswith(prefix_l) and name[len(prefix_l):].isdigit():
                return self.set_led(pad, int(name[len(prefix_l):]), value)
        raise CommandRejected(f"no writable value named {name!r}")

    def plan(self, data: dict[str, Any]) -> list[Step]:
        """A command envelope's data -> steps; CommandRejected says what is wrong."""
        verb = data.get("command")
        if verb == "write":
            values = data.get("values")
            if not isinstance(values, dict) or not values:
                raise CommandRejected("write needs a non-empty 'values' object")
            return [self._write_value(str(k), v, data.get("fade")) for k, v in values.items()]
        if verb == "set_level":
            return [self.set_level(str(data.get("load")), data.get("level"), data.get("fade"))]
        if verb in ("press", "release", "tap"):
            state = {"press": 4, "release": 5, "tap": 6}[verb]
            return [self.switch(str(data.get("keypad")), data.get("button"), state)]
        if verb == "set_led":
            return [self.set_led(str(data.get("keypad")), data.get("led"), data.get("state"))]
        raise CommandRejected(f"unknown command {verb!r}")
