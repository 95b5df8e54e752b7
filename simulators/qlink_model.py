"""The state of a simulated QLink master: loads, keypads, monitoring; no I/O.

``ControllerModel.handle_line(bytes)`` answers one command line the way QLINK.md says a master
does, or makes the documented choice where the facts run out (the note's last table): the
events a command causes come first, then its reply; errors are bare ``256``/``257``; a fade
reports its target at once with one ``LO``. Monitoring enables and the reply format belong to
the controller (the serial port), so they outlive any TCP connection.

The server around it (``simulators/qlink_controller.py``) adds sockets, the connection limit,
latency and fault injection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocols.qlink import (
    AllLoadsEvent,
    Command,
    CommandError,
    Event,
    LedEvent,
    LoadEvent,
    SwitchEvent,
    decode_leds,
    parse_command,
)
from protocols.qlink_project import ButtonAction, KeypadSpec, LoadAddress, LoadSpec

VERSION = "VER 7.89 02/14/2007"


@dataclass
class Monitoring:
    """Serial-port settings of the master (VCL, VOS, VOL, VOD): one set per controller."""

    switches: bool = False
    switch_format: int = 0  # 1 appends the station serial to SW lines
    loads: bool = False
    leds: int = 0  # 0 off, 1 keypad, 2 LCD, 3 both
    crlf: bool = False
    detailed: bool = False


@dataclass
class Outcome:
    """What one command line produced: events (written first), then the reply line, if any."""

    events: list[Event] = field(default_factory=list)
    reply: str | None = None
    error: str = ""  # why a 256/257 was answered, for the simulator's log


@dataclass
class _Keypad:
    spec: KeypadSpec
    manual: dict[int, int] = field(default_factory=dict)  # LED -> 0/1/2 set by VLD
    masks: tuple[int, int] = (0, 0)


class _Refuse(Exception):
    """The command is understood but its parameters are not: answer 257."""


class ControllerModel:
    """Loads with levels, keypads whose buttons act on loads and light LEDs, and monitoring.

    Without project ``actions``, button k of every keypad toggles the k-th configured load
    (cycling through them) and its LED shows whether that load is on.
    """

    def __init__(
        self,
        loads: Iterable[LoadSpec],
        keypads: Iterable[KeypadSpec],
        actions: Iterable[tuple[tuple[int, int, int], ButtonAction]] = (),
        monitoring: Monitoring | None = None,
    ) -> None:
        self.loads = {spec.address: spec for spec in loads}
        self.levels: dict[LoadAddress, int] = dict.fromkeys(self.loads, 0)
        self.by_contractor = {s.contractor: s.address for s in self.loads.values() if s.contractor}
        self.keypads = {(k.master, k.station): _Keypad(k) for k in keypads}
        self.actions = dict(actions)
        if not self.actions and self.loads:
            addresses = list(self.loads)
            for (m, st) in self.keypads:
                for button in range(1, 9):
                    address = addresses[(button - 1) % len(addresses)]
                    self.actions[(m, st, button)] = ButtonAction("toggle", ((address, 100),))
        self.mon = monitoring or Monitoring()
        self.commands = 0
        self.unsupported: set[str] = set()  # verbs answered 256, as an older firmware might
        for pad in self.keypads.values():
            pad.masks = self._masks(pad)

    @property
    def line_end(self) -> bytes:
        return b"\r\n" if self.mon.crlf else b"\r"

    # ------------------------------------------------------------------ physical world

    def press(self, master: int, station: int, switch: int, serial: int = 0) -> list[Event]:
        """A finger on a button: ``SW ... 1`` then whatever the button is programmed to do."""
        out: list[Event] = []
        if self.mon.switches:
            out.append(SwitchEvent(master, station, switch, True,
                                   serial if self.mon.switch_format else None))
        action = self.actions.get((master, station, switch))
        if action is not None:
            out += self._run(action)
        return out

    def release(self, master: int, station: int, switch: int, serial: int = 0) -> list[Event]:
        if not self.mon.switches:
            return []
        return [SwitchEvent(master, station, switch, False,
                            serial if self.mon.switch_format else None)]

    def set_level(self, address: LoadAddress, level: int) -> list[Event]:
        """A load changed (a command, a button, a wall dimmer): ``LO``, then any ``LE``."""
        if self.levels.get(address) == level:
            return []
        self.levels[address] = level
        out: list[Event] = []
        if self.mon.loads:
            out.append(LoadEvent(address.master, address.enclosure, address.module,
                                 address.load, level))
        return out + self._refresh_leds()

    def _run(self, action: ButtonAction) -> list[Event]:
        out: list[Event] = []
        if action.kind in ("all_on", "all_off"):
            on = action.kind == "all_on"
            for address in list(self.levels):
                self.levels[address] = 100 if on else 0
            events: list[Event] = [AllLoadsEvent(on, 0)] if self.mon.loads else []
            return events + self._refresh_leds()
        lit = any(self.levels.get(a, 0) > 0 for a, _ in action.loads)
        turn_on = action.kind == "on" or (action.kind == "toggle" and not lit)
        for address, level in action.loads:
            out += self.set_level(address, level if turn_on else 0)
        return out

    # ------------------------------------------------------------------ LEDs

    def _led(self, pad: _Keypad, led: int) -> int:
        if led in pad.manual:
            return pad.manual[led]
        action = self.actions.get((pad.spec.master, pad.spec.station, led))
        if action is None or action.kind not in ("toggle", "on"):
            return 0
        return int(any(self.levels.get(a, 0) > 0 for a, _ in action.loads))

    def _masks(self, pad: _Keypad) -> tuple[int, int]:
        on = blink = 0
        for led in range(1, 9):
            state = self._led(pad, led)
            on |= (state == 1) << (led - 1)
            blink |= (state == 2) << (led - 1)
        return on, blink

    def _refresh_leds(self) -> list[Event]:
        out: list[Event] = []
        for pad in self.keypads.values():
            masks = self._masks(pad)
            if masks != pad.masks:
                pad.masks = masks
                if self.mon.leds & 1:
                    out.append(LedEvent(pad.spec.master, pad.spec.station, *masks))
        return out

    # ------------------------------------------------------------------ commands

    def handle_line(self, raw: bytes) -> Outcome:
        """One client line (without its line end) -> events and reply."""
        try:
            cmd = parse_command(raw)
        except CommandError as exc:
            return Outcome([], str(exc.code), str(exc))
        if cmd.verb in self.unsupported:
            return Outcome([], None if cmd.modifier == "!" else "256", f"{cmd.verb} unsupported")
        self.commands += 1
        outcome = Outcome()
        want_detailed = cmd.modifier == "#" or (cmd.modifier == "" and self.mon.detailed)
        try:  # (a VCL's own reply keeps the format it found: it sets "all later replies")
            regular, detailed = self._execute(cmd, outcome.events)
        except _Refuse as exc:
            outcome.reply = None if cmd.modifier == "!" else "257"
            outcome.error = str(exc)
            return outcome
        if cmd.modifier == "!":
            return outcome
        if want_detailed:
            tag = cmd.reply_tag + ("#" if cmd.modifier == "#" else "")
            outcome.reply = f"{tag} {detailed}".rstrip()
        else:
            outcome.reply = regular
        return outcome

    def _load(self, a: tuple[int, ...]) -> LoadAddress:
        address = LoadAddress(*a)
        try:
            address.check()
        except ValueError as exc:
            raise _Refuse(str(exc)) from None
        return address

    def _contractor(self, number: int) -> LoadAddress:
        if number not in self.by_contractor:
            raise _Refuse(f"no load with contractor number {number}")
        return self.by_contractor[number]

    def _keypad(self, master: int, station: int) -> _Keypad:
        if (master, station) not in self.keypads:
            raise _Refuse(f"no station {master}.{station}")
        return self.keypads[(master, station)]

    @staticmethod
    def _level(level: float, fade: float = 0.0) -> int:
        if not 0 <= level <= 100 or level != int(level) or not 0 <= fade <= 6553.5:
            raise _Refuse("level 0-100 and fade 0-6553.5 s expected")
        return int(level)

    def _execute(self, cmd: Command, events: list[Event]) -> tuple[str, str]:
        """(regular reply, detailed reply parameters); events appended to ``events``."""
        a = tuple(float(x) for x in cmd.args)
        n = tuple(int(x) for x in a)
        params = " ".join(cmd.args)
        verb = cmd.verb
        if verb == "VGL":
            level = self.levels[self._contractor(n[0])]
            return str(level), f"{params} {level}"
        if verb in ("VLO", "VLB", "VLA"):
            split = {"VLO": 1, "VLB": 4, "VLA": 3}[verb]
            level = self._level(a[split], a[split + 1] if len(a) > split + 1 else 0.0)
            events += self.set_level(self._address(verb, n[:split]), level)
            return str(level), params
        if verb in ("VGB", "VGA"):
            level = self.levels.get(self._address(verb, n), 0)
            return str(level), f"{params} {level}"
        if verb == "VGD":
            levels = " ".join(str(self.levels.get(self._load((*n, i)), 0)) for i in range(1, 9))
            return levels, f"{params} {levels}"
        if verb in ("VSW", "VGS", "VLS", "VLD", "VGT", "VLT"):
            return self._station(cmd, n, params, events)
        if verb == "VEC":
            if n[0] > 65535:
                raise _Refuse("VEC takes 0-65535")
            return cmd.args[0], cmd.args[0]
        if verb == "VGV":
            return VERSION, VERSION[4:]
        if verb in ("VQM", "VQA"):
            masters = sorted({a.master for a in self.loads} | {k[0] for k in self.keypads} or {1})
            text = " ".join(map(str, [len(masters), *masters])) if verb == "VQM" else "1 1"
            return text, text
        if verb == "VCL":
            if any(x > 1 for x in n):
                raise _Refuse("VCL takes 0/1 flags")
            self.mon.crlf = n[0] == 1
            if len(n) > 1:
                self.mon.detailed = n[1] == 1
            return params, params
        return self._monitor(verb, n)

    def _address(self, verb: str, n: tuple[int, ...]) -> LoadAddress:
        if verb in ("VLO", "VGL"):
            return self._contractor(n[0])
        if verb in ("VLA", "VGA"):
            if not 1 <= n[1] <= 16:
                raise _Refuse("module 1-16 expected")
            return self._load((n[0], (n[1] - 1) // 4 + 1, (n[1] - 1) % 4 + 1, n[2]))
        return self._load(n[:4])

    def _station(
        self, cmd: Command, n: tuple[int, ...], params: str, events: list[Event]
    ) -> tuple[str, str]:
        pad = self._keypad(n[0], n[1])
        verb = cmd.verb
        if verb == "VGT":
            states = " ".join(str(self._switch_state(pad, s)) for s in range(1, 11))
            return states, f"{params} {states}"
        if verb == "VLT":
            text = f"{pad.masks[0]:02X} {pad.masks[1]:02X}"
            return text, f"{n[0]} {n[1]} {text}"
        if not 1 <= n[2] <= 10:
            raise _Refuse("switch/LED 1-10 expected")
        if verb == "VGS":
            state = self._switch_state(pad, n[2])
            return str(state), f"{params} {state}"
        if verb == "VLS":
            state = self._led(pad, n[2]) if n[2] <= 8 else 0
            return str(state), f"{params} {state}"
        if not 0 <= n[3] <= (6 if verb == "VSW" else 2):
            raise _Refuse("state out of range")
        if verb == "VLD":
            pad.manual[n[2]] = n[3]
            events += self._refresh_leds()
            return str(n[3]), params
        m, st, sw, state = n
        if state in (4, 6):
            events += self.press(m, st, sw, 0)
        if state in (5, 6):
            events += self.release(m, st, sw, 0)
        action = self.actions.get((m, st, sw))
        if state in (0, 1) and action is not None:
            for address, level in action.loads:
                events += self.set_level(address, level if state == 1 else 0)
        return str(state), params

    def _switch_state(self, pad: _Keypad, switch: int) -> int:
        if (pad.spec.master, pad.spec.station, switch) not in self.actions:
            return 2
        return 1 if self._led(pad, switch) else 0

    def _monitor(self, verb: str, n: tuple[int, ...]) -> tuple[str, str]:
        if verb not in ("VOS", "VOL", "VOD"):
            raise _Refuse(f"{verb} is not simulated")
        enable = n[-1]
        fmt = n[-2] if len(n) >= 2 else None
        if enable > (3 if verb == "VOD" else 1) or (fmt is not None and fmt > 1):
            raise _Refuse("enable/format out of range")
        if verb == "VOS":
            self.mon.switches = enable == 1
            if fmt is not None:
                self.mon.switch_format = fmt
            return str(enable), f"{self.mon.switch_format} {enable}"
        if verb == "VOL":
            self.mon.loads = enable == 1
        else:
            self.mon.leds = enable
        return str(enable), str(enable)

    def led_states(self, master: int, station: int) -> tuple[str, ...]:
        pad = self.keypads[(master, station)]
        return decode_leds(*pad.masks)
