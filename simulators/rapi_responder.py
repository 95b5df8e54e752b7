"""The simulated controller's RAPI side: command frames in, reply and async lines out. Pure.

Answers like the firmware (``protocols/rapi.py`` builds every line) and can be told to behave
like the emulators and old firmware a client meets in the field (quirks): not echoing sequence
ids, pre-5.0 ``$GS``, holding async lines back until the next command arrives (so they land
between a command and its reply), or not answering at all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.rapi import MAX_COMMAND_CHARS, MAX_TOKENS, RapiFrame, RapiGarbage, encode_line
from simulators.evse_model import EvseModel


@dataclass
class Quirks:
    echo_seq: bool = True
    legacy: bool = False  # RAPI 4: $GV says 4.0.1, $GS is two decimal tokens
    mute: bool = False  # read commands, answer nothing
    hold_async: bool = False  # one-shot: queue async lines until the next command
    reject_seq: bool = False  # pre-RAPI-3.0: ':ss' is an extra parameter -> $NK
    no_g0: bool = False  # older firmware and the OpenEVSE emulator: $G0 -> $NK


@dataclass
class RapiResponder:
    model: EvseModel
    mcu_id: str = "0a1b2c3d4e5f"
    quirks: Quirks = field(default_factory=Quirks)
    commands: int = 0
    #: the last commands answered, by name and params (what a test or bench checks was sent)
    heard: deque[tuple[str, tuple[str, ...]]] = field(default_factory=lambda: deque(maxlen=2000))
    bad_lines: int = 0
    _last_key: tuple[int, int, int, int] | None = None
    _held: list[bytes] = field(default_factory=list)

    def handle(self, event: RapiFrame | RapiGarbage) -> list[bytes]:
        """Lines to write for one parsed input (replies first, then a ``$AT`` it caused)."""
        if isinstance(event, RapiGarbage):
            self.bad_lines += 1
            if event.reason == "bad_checksum" and not self.quirks.mute:
                return [encode_line("NK")]
            return []
        if len(event.raw) > MAX_COMMAND_CHARS:
            self.bad_lines += 1  # the firmware's buffer overflows: dropped without a reply
            return []
        self.commands += 1
        self.heard.append((event.name, event.params))
        out = self._take_held()
        seq = event.seq if self.quirks.echo_seq else None
        if event.seq is not None and self.quirks.reject_seq:
            reply = encode_line("NK")
        elif 1 + len(event.params) + (event.seq is not None) > MAX_TOKENS:
            reply = encode_line("NK")
        else:
            ok, params, after = self._answer(event.name, event.params)
            reply = encode_line("OK" if ok else "NK", params, seq)
            if after:
                after()
        if not self.quirks.mute:
            out.append(reply)
        if event.name == "FR":
            out.append(encode_line("AB", ("00", self.model.firmware)))
        out.extend(self.notifications())
        return out

    def notifications(self) -> list[bytes]:
        """A ``$AT`` if what it reports changed since the last one (held back if asked)."""
        key = self.model.notify_key()
        if key == self._last_key:
            return []
        self._last_key = key
        state, pilot, amps, _ = key
        line = encode_line("AT", (f"{state:02x}", f"{pilot:02x}", amps, f"{self.model.vflags:04x}"))
        if self.quirks.hold_async:
            self._held.append(line)
            return []
        return [line]

    def _take_held(self) -> list[bytes]:
        held, self._held = self._held, []
        if held:
            self.quirks.hold_async = False
        return held

    def _answer(
        self, name: str, params: tuple[str, ...]
    ) -> tuple[bool, list[str | int], Callable[[], None] | None]:
        m = self.model
        nums: list[int] = []
        for token in params:
            try:
                nums.append(int(token))
            except ValueError:
                nums.append(-1)
        if name == "GV":
            return True, ["4.8.0", "4.0.1"] if self.quirks.legacy else [m.firmware, m.rapi], None
        if name == "GS":
            if self.quirks.legacy:
                return True, [m.state, int(m.elapsed_s)], None
            fields = [f"{m.state:02x}", int(m.elapsed_s), f"{m.pilot_state:02x}", f"{m.vflags:04x}"]
            return True, fields, None
        if name == "GG":
            return True, [m.charging_ma, m.voltage_mv], None
        if name == "GE":
            return True, [m.capacity_a, "0001"], None
        if name == "GC":
            ceiling = min(m.configured_max_a, m.hw_max_a)
            return True, [m.min_a, m.hw_max_a, m.capacity_a, ceiling], None
        if name == "GP":
            tenth = round(m.temperature_c * 10)
            return True, [tenth, tenth, -2560], None
        if name == "GU":
            return True, [round(m.session_ws), round(m.total_wh)], None
        if name == "G0":
            if self.quirks.no_g0:
                return False, [], None
            return True, [m.ev_connected], None
        if name == "GF":
            t = m.trips
            return True, [f"{t['gfci']:x}", f"{t['no_ground']:x}", f"{t['stuck_relay']:x}"], None
        if name == "GI":
            return True, [self.mcu_id], None
        if name in ("GY", "SY"):
            ok = True
            if name == "SY":
                if len(nums) > 2 or -1 in nums:
                    return False, [], None
                ok = m.heartbeat(tuple(nums))
            return ok, [m.hb_interval, m.hb_amps, m.hb_trigger], None
        if name == "SC":
            if not nums or nums[0] < 0 or len(nums) > 2:
                return False, [], None
            how = "saved" if len(params) == 1 else ("max" if params[1] == "M" else "volatile")
            ok, amps = m.set_current(nums[0], how)
            return ok, [amps], None
        if name in ("FE", "FD", "FS") and not params:
            action = {"FE": m.enable, "FD": m.disable, "FS": m.sleep}[name]
            action()
            return True, [], None
        if name == "FR" and not params:
            return True, [], m.reboot
        if name in ("SH", "S3") and len(nums) == 1 and nums[0] >= 0:
            setter = m.set_charge_limit if name == "SH" else m.set_time_limit
            return setter(nums[0]), [], None
        if name == "SV" and len(nums) == 1 and nums[0] > 0:
            m.voltage_mv = nums[0]
            return True, [], None
        if name == "FF" and len(params) == 2:
            return True, [], None
        return False, [], None
