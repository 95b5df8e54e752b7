"""A SunSpec device simulator: an inverter (models 1, 103, 120, 123) and a meter (1, 203),
laid out from the official model definitions (``pysunspec2``, through
:func:`protocols.sunspec.sunspec_map`, the same code the gateway discovers with).

The ``SunS`` marker sits at the chosen base (40000 by default; 0 and 50000 for tests), each
model has its ID and length, the chain ends with 0xFFFF. Points the simulated device does not
implement carry SunSpec's "not implemented" value; scale factors are fixed per point and not
0 (watts in tenths, volts in tenths, amps in hundredths, energy in tens of Wh, ...), so a
reader that forgets them is visibly wrong. Values move (a power curve, energy counting up);
the inverter's power follows a written limit (model 123 ``WMaxLimPct`` with
``WMaxLim_Ena = ENABLED``).

    python -m simulators.sunspec_device --tcp-port 5502                   # inverter, unit 1
    python -m simulators.sunspec_device --tcp-port 5502 --device 1:inverter --device 2:meter
    python -m simulators.sunspec_device --pty-link /tmp/ttySUNSPEC --device 3:meter
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from protocols.registers import RegisterMap, RegisterValue, Value
from protocols.sunspec import MARKER, ModelBlock, group_length, model_definition, sunspec_map
from simulators.modbus_device import DeviceModel, ModbusSimulator
from simulators.serve import serve_until_signal, setup_logging

MODELS = {"inverter": (1, 103, 120, 123), "meter": (1, 203)}

#: scale factor register -> the power of ten the simulated device uses (never 0 where a
#: point has a scale factor, so that decoding must apply them)
INV, MTR = "inverter_three_phase_", "ac_meter_abcn_"  # the models' group names
EXPONENTS = {
    **{f"{INV}{k}_SF": v for k, v in (("A", -2), ("V", -1), ("W", -1), ("Hz", -2), ("VA", -1),
                                       ("VAr", -1), ("PF", -2), ("WH", 1), ("DCA", -2),
                                       ("DCV", -1), ("DCW", -1), ("Tmp", -1))},
    **{f"nameplate_{k}_SF": v for k, v in (("WRtg", 1), ("VARtg", 1), ("VArRtg", 1),
                                            ("ARtg", -1), ("PFRtg", -2), ("WHRtg", 1),
                                            ("AhrRtg", 1), ("MaxChaRte", 1),
                                            ("MaxDisChaRte", 1))},
    "controls_WMaxLimPct_SF": -1, "controls_OutPFSet_SF": -3, "controls_VArPct_SF": -1,
    **{f"{MTR}{k}_SF": v for k, v in (("A", -2), ("V", -1), ("Hz", -2), ("W", -1), ("VA", -1),
                                       ("VAR", -1), ("PF", -2), ("TotWh", 1), ("TotVAh", 1),
                                       ("TotVArh", 1))},
}
RATED_W = 3000.0


def layout(model_ids: tuple[int, ...], base: int = 40000) -> tuple[ModelBlock, ...]:
    """Where each model goes after the marker at ``base`` (bodies zero: filled later)."""
    blocks, address = [], base + 2
    for model_id in model_ids:
        definition = model_definition(model_id)
        if definition is None:
            raise ValueError(f"no SunSpec definition for model {model_id}")
        length = group_length(definition["group"]) - 2  # L counts what follows ID and L
        blocks.append(ModelBlock(model_id, address, length, (0,) * length))
        address += 2 + length
    return tuple(blocks)


def simulator_map(models: tuple[ModelBlock, ...], name: str) -> RegisterMap:
    """The models' map with every point writable as defined and its scale factor fixed,
    plus the chain's end marker (so that the server answers a read of it)."""
    found = sunspec_map(models, name=name, writable=("*",), keep_absent=True)
    values = tuple(
        replace(v, scale=10.0 ** EXPONENTS.get(v.scale_from, 0),
                decimals=max(0, -EXPONENTS.get(v.scale_from, 0)), scale_from="")
        if v.scale_from else v for v in found.regmap.values)
    end = models[-1].address + 2 + models[-1].length
    marker = RegisterValue(name="sunspec_end", table="holding", address=end, dtype="u32",
                           count=2)
    return replace(found.regmap, values=(*values, marker))


class SunSpecUnit(DeviceModel):
    """One simulated SunSpec device on a unit id."""

    def __init__(self, unit_id: int, kind: str = "inverter", *, base: int = 40000,
                 dynamic: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        if kind not in MODELS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(MODELS)}")
        self.kind = kind
        self.blocks = layout(MODELS[kind], base)
        super().__init__(unit_id, simulator_map(self.blocks, f"sunspec_{kind}"),
                         dynamic=dynamic, clock=clock)
        holding = self.store["holding"]
        holding.clear()
        holding[base], holding[base + 1] = MARKER
        for block in self.blocks:
            holding[block.address], holding[block.address + 1] = block.model_id, block.length
        end = self.blocks[-1].address + 2 + self.blocks[-1].length
        holding[end], holding[end + 1] = 0xFFFF, 0
        for spec in self.map.values:  # everything "not implemented" until set below
            for i, word in enumerate(spec.absent):
                holding[spec.address + i] = word
        for name, exponent in EXPONENTS.items():
            if name in self.map:
                self.set_value(name, exponent)
        self._energy = {f"{INV}WH": 12_345_670.0, f"{MTR}TotWhImp": 4_321_000.0,
                        f"{MTR}TotWhExp": 987_650.0}
        self._set_all(self.identity(unit_id) | self.at(0.0))

    def identity(self, unit_id: int) -> dict[str, Value]:
        model = "SimInverter 3000" if self.kind == "inverter" else "SimMeter 3P"
        values: dict[str, Value] = {
            "common_Mn": "SunSpecSim", "common_Md": model, "common_Vr": "1.3.7",
            "common_SN": f"SIM-{self.kind[:3].upper()}-{unit_id:04d}", "common_DA": unit_id,
        }
        if self.kind == "inverter":
            values |= {
                "nameplate_DERTyp": "PV", "nameplate_WRtg": RATED_W, "nameplate_VARtg": 3000,
                "nameplate_ARtg": 13.0, "controls_Conn": "CONNECT", "controls_WMaxLimPct": 100,
                "controls_WMaxLim_Ena": "DISABLED", f"{INV}St": "MPPT",
            }
            for bit in ("GROUND_FAULT", "DC_OVER_VOLT", "AC_DISCONNECT", "DC_DISCONNECT",
                        "GRID_DISCONNECT", "CABINET_OPEN", "MANUAL_SHUTDOWN", "OVER_TEMP",
                        "OVER_FREQUENCY", "UNDER_FREQUENCY", "AC_OVER_VOLT", "AC_UNDER_VOLT",
                        "BLOWN_STRING_FUSE", "UNDER_TEMP", "MEMORY_LOSS", "HW_TEST_FAILURE"):
                values[f"{INV}Evt1_{bit}"] = "Off"
        else:
            for spec in self.map.values:
                if spec.name.startswith(f"{MTR}Evt_"):
                    values[spec.name] = "Off"
        return values

    def _set_all(self, values: dict[str, Value]) -> None:
        for name, value in values.items():
            if name in self.map:
                self._put(name, value)

    def at(self, t: float) -> dict[str, Value]:
        """The moving values at ``t`` seconds (a slow swell with a faster ripple)."""
        swell = 0.55 + 0.35 * math.sin(t / 90.0) + 0.05 * math.sin(t / 7.0)
        if self.kind == "inverter":
            limit = 1.0
            if self.value("controls_WMaxLim_Ena") == "ENABLED":
                limit = float(self.value("controls_WMaxLimPct")) / 100.0
            watts = round(RATED_W * min(swell, limit), 1)
            volts = round(230.0 + 2.0 * math.sin(t / 11.0), 1)
            amps = round(watts / volts, 2)
            moving: dict[str, Value] = {
                "W": watts, "VA": round(watts * 1.01, 1), "VAr": 42.0, "PF": 99.0, "A": amps,
                "AphA": amps, "PhVphA": volts, "Hz": round(50.0 + 0.03 * math.sin(t / 5), 2),
                "DCV": 380.0, "DCA": round(watts / 0.97 / 380.0, 2),
                "DCW": round(watts / 0.97, 1), "TmpCab": 31.5, "WH": self._energy[f"{INV}WH"],
            }
            return {INV + k: v for k, v in moving.items()}
        watts = round(1500.0 * swell - 400.0, 1)
        volts = round(231.0 + 1.5 * math.sin(t / 13.0), 1)
        phase = round(watts / 3, 1)
        return {
            f"{MTR}W": watts, f"{MTR}WphA": phase, f"{MTR}WphB": phase,
            f"{MTR}WphC": phase, f"{MTR}A": round(abs(watts) / volts, 2),
            f"{MTR}AphA": round(abs(phase) / volts, 2),
            f"{MTR}AphB": round(abs(phase) / volts, 2),
            f"{MTR}AphC": round(abs(phase) / volts, 2),
            f"{MTR}PhV": volts, f"{MTR}PhVphA": volts,
            f"{MTR}PhVphB": volts, f"{MTR}PhVphC": volts,
            f"{MTR}Hz": 50.0, f"{MTR}PF": 97.0,
            f"{MTR}TotWhImp": self._energy[f"{MTR}TotWhImp"],
            f"{MTR}TotWhExp": self._energy[f"{MTR}TotWhExp"],
        }

    def refresh(self) -> None:
        """Advance to now: new powers, energy counted up (values change when read)."""
        now = self.clock()
        dt, self._last = max(0.0, now - self._last), now
        if not self.dynamic or dt == 0:
            return
        values = self.at(now)
        watts = float(values.get(f"{INV}W", values.get(f"{MTR}W", 0.0)))
        key = f"{INV}WH" if self.kind == "inverter" else (
            f"{MTR}TotWhImp" if watts >= 0 else f"{MTR}TotWhExp")
        self._energy[key] += abs(watts) * dt / 3600.0
        values[key] = round(self._energy[key], -1)
        self._set_all(values)


class SunSpecSimulator(ModbusSimulator):
    """``devices``: unit id -> "inverter" or "meter", served over TCP and/or RTU."""

    def __init__(self, devices: Mapping[int, str], *, base: int = 40000,
                 host: str = "127.0.0.1", tcp_port: int | None = None,
                 pty_link: str | None = None, baudrate: int = 19200,
                 dynamic: bool = True) -> None:
        units = {u: SunSpecUnit(u, kind, base=base, dynamic=dynamic)
                 for u, kind in devices.items()}
        first = next(iter(units.values()))
        super().__init__(first.map, (), host=host, tcp_port=tcp_port, pty_link=pty_link,
                         baudrate=baudrate, dynamic=dynamic)
        self.units = dict(units)
        for unit in self.units.values():
            unit.drop_reply = self._drop_next


def _device(text: str) -> tuple[int, str]:
    unit, sep, kind = text.partition(":")
    if not sep or not unit.isdigit() or kind not in MODELS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected UNIT:inverter or UNIT:meter")
    return int(unit), kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.sunspec_device",
                                     description="SunSpec inverter/meter simulator")
    parser.add_argument("--device", type=_device, action="append",
                        help="UNIT:inverter or UNIT:meter (repeatable; default 1:inverter)")
    parser.add_argument("--base", type=int, default=40000, choices=(0, 40000, 50000),
                        help="where the SunS marker is")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--tcp-port", type=int, help="serve Modbus TCP on this port")
    parser.add_argument("--pty-link", help="serve Modbus RTU on a PTY linked here")
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--static", action="store_true", help="values do not move")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.tcp_port is None and not args.pty_link:
        parser.error("give --tcp-port and/or --pty-link")
    setup_logging(args.log_level)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
    sim = SunSpecSimulator(dict(args.device or [(1, "inverter")]), base=args.base,
                           host=args.host, tcp_port=args.tcp_port, pty_link=args.pty_link,
                           baudrate=args.baudrate, dynamic=not args.static)

    def ready() -> str:
        where = [f"tcp {args.host}:{args.tcp_port}"] if args.tcp_port is not None else []
        if args.pty_link:
            where.append(f"rtu {args.pty_link}")
        kinds = ", ".join(f"{u}:{m.kind}" for u, m in sim.units.items())  # type: ignore[attr-defined]
        return f"sunspec simulator ready: {kinds}, " + ", ".join(where)

    async def run() -> None:
        await serve_until_signal(sim.start, sim.stop, ready)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
