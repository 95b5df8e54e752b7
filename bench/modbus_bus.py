"""Many devices on one RS485 line: achieved vs requested read rates and bus utilisation.

The transport's own scheduler (``transports/modbus_bus/schedule.py``) and read plans
(``protocols/read_plan.py``, the plan each device really sends) run against a simulated
clock. Each request costs its RTU wire time at the line's baud rate (8N1 frames, CRC,
3.5-character gaps; ``RtuCost``) plus a device turnaround; a dead device costs
``timeout * (retries + 1)`` per scan (the transport ends a scan whose first request gets no
answer), exactly the wait the transport would sit through.
So the figures are the schedule's behaviour on a line of that speed, over an hour of bus
time, in a fraction of a second; they are a model of the wire, not a measurement of pymodbus
(a PTY has no baud rate: the live tests in pytests/test_modbus_bus.py cover the real thing).

Devices: one EG4 inverter (eg4_v58, every ``--inverter-interval`` s) and N-1 SDM630 meters
(every ``--meter-interval`` s). "dead" silences the last meter from the start.

``--live SECONDS`` also runs the real transport (pymodbus client, scheduler, decoding) for
that long per case against the bus simulator behind a :class:`PacedLine`, a PTY relay that
holds each frame for its wire time at the baud rate; the turnaround is then the simulator's
own. It prints the same columns, measured: readings per second per device and the share of
time the line carried bytes (``wire%``) or was held by the transport (``bus%``: requests
including turnaround and waits for the dead device).

Run: ``python bench/modbus_bus.py`` (``--help`` for the knobs);
``python bench/modbus_bus.py --live 40 --devices 4 8 --baud 9600`` for the live figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.message import READING, Envelope
from gateway.settings import GeneralSettings
from protocols.read_plan import RtuCost, plan_reads
from protocols.registers import load_map
from simulators.modbus_bus import BusSimulator, PacedLine
from transports.base import TransportContext
from transports.modbus_bus.schedule import BusSchedule, Timing
from transports.modbus_bus.settings import ModbusBusRtuSettings
from transports.modbus_bus.transport import ModbusBusRtuTransport


def run(n: int, baud: int, dead: bool, args: argparse.Namespace) -> dict[str, float | str]:
    link = RtuCost(baudrate=baud, turnaround=args.turnaround)
    devices: dict[str, tuple[str, float]] = {"inverter": ("eg4_v58", args.inverter_interval)}
    for i in range(1, n):
        devices[f"meter{i}"] = ("sdm630", args.meter_interval)
    costs: dict[str, list[float]] = {}
    for name, (map_name, _) in devices.items():
        regmap = load_map(map_name)
        plan = plan_reads(regmap.values, batch_size=regmap.batch_size,
                          unreadable=regmap.unreadable, link=link)
        costs[name] = [link.seconds(r.table, r.count) for r in plan.requests]
    silent = {f"meter{n - 1}"} if dead and n > 1 else set()
    no_answer = args.timeout * (args.retries + 1)
    timings = {name: Timing(interval, args.offline_after, args.quarantine_max)
               for name, (_, interval) in devices.items()}
    schedule = BusSchedule(timings, 0.0)
    now = busy_total = dead_time = 0.0
    notices: list[str] = []
    while now < args.duration:
        slot = schedule.upcoming()
        now = max(now, slot.due)
        probe = schedule.begin(slot.name, now)
        busy = 0.0
        if slot.name in silent:  # the transport ends a scan whose first request is unanswered
            busy = no_answer
            schedule.failed(slot.name)
        else:
            for cost in costs[slot.name][: 1 if probe else None]:
                busy += cost
                schedule.answered(slot.name)
        now += busy
        busy_total += busy
        if slot.name in silent:
            dead_time += busy
        schedule.end(slot.name, now, busy, probe=probe)
        notice = schedule.load_notice()
        if notice:
            notices.append(notice)
    alive = [s for s in schedule.slots.values() if s.name not in silent]
    requested = sum(1 / s.timing.interval for s in alive)
    achieved = sum(1 / (s.achieved_interval or float("inf")) for s in alive)
    worst = min(s.timing.interval / (s.achieved_interval or float("inf")) for s in alive)
    return {
        "requested": requested, "achieved": achieved, "worst": worst,
        "utilisation": busy_total / now, "dead_share": dead_time / now,
        "probes": sum(s.probes for s in schedule.slots.values()),
        "notice": notices[0] if notices else "",
    }


async def live(n: int, baud: int, dead: bool, args: argparse.Namespace) -> dict[str, Any]:
    """The real transport on a paced PTY line for ``args.live`` seconds."""
    maps = {1: "eg4_v58", **{u: "sdm630" for u in range(2, n + 1)}}
    names = {1: "inverter", **{u: f"meter{u - 1}" for u in range(2, n + 1)}}
    keys: dict[str, Any] = {"devices": ", ".join(names.values()), "timeout": args.timeout,
                            "retries": args.retries, "offline_after": args.offline_after,
                            "quarantine_max": args.quarantine_max}
    for unit, name in names.items():
        keys[f"{name}.unit"] = unit
        keys[f"{name}.protocol_version"] = maps[unit]
        keys[f"{name}.read_interval"] = (args.inverter_interval if unit == 1
                                         else args.meter_interval)
    seen: dict[str, list[float]] = {name: [] for name in names.values()}

    async def emit(envelope: Envelope) -> None:
        if envelope.kind == READING:
            seen[envelope.source_transport_info["device"]].append(time.monotonic())

    with tempfile.TemporaryDirectory() as tmp:
        sim = BusSimulator(maps, pty_link=f"{tmp}/sim", baudrate=baud, dynamic=False)
        await sim.start()
        line = PacedLine(f"{tmp}/sim", f"{tmp}/line", baud)
        line.start()
        if dead:
            sim.silence(n)
        settings = ModbusBusRtuSettings(transport="modbus_bus", port=f"{tmp}/line",
                                        baudrate=baud, **keys)
        ctx = TransportContext("bus", GeneralSettings(state_dir=tmp), emit,
                               logging.getLogger("bench"))
        transport = ModbusBusRtuTransport(settings, ctx)
        await transport.connect()
        started, busy_before = time.monotonic(), line.busy
        task = asyncio.create_task(transport.run())
        await asyncio.sleep(args.live)
        elapsed = time.monotonic() - started
        ctx.stopping.set()
        await asyncio.wait_for(task, timeout=30)
        await transport.close()
        line.stop()
        await sim.stop()
    silent = {names[n]} if dead else set()
    intervals = {name: (ts[-1] - ts[0]) / (len(ts) - 1) for name, ts in seen.items()
                 if len(ts) >= 2 and name not in silent}
    asked = {name: 1 / (args.inverter_interval if name == "inverter" else args.meter_interval)
             for name in names.values() if name not in silent}
    got = {name: 1 / intervals[name] if name in intervals else 0.0 for name in asked}
    return {
        "requested": sum(asked.values()), "achieved": sum(got.values()),
        "worst": min(got[name] / asked[name] for name in asked),
        "utilisation": float(ctx.counters.extra.get("busy_seconds", 0.0)) / elapsed,
        "wire": (line.busy - busy_before) / elapsed,
        "probes": int(ctx.counters.extra.get("probes", 0)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[2, 4, 8, 12])
    parser.add_argument("--baud", type=int, nargs="+", default=[9600, 19200])
    parser.add_argument("--inverter-interval", type=float, default=10.0)
    parser.add_argument("--meter-interval", type=float, default=5.0)
    parser.add_argument("--turnaround", type=float, default=0.02,
                        help="device think time per request, seconds")
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--offline-after", type=int, default=3)
    parser.add_argument("--quarantine-max", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=3600.0, help="simulated seconds")
    parser.add_argument("--live", type=float, default=0.0,
                        help="also run the real transport on a paced PTY, seconds per case")
    args = parser.parse_args(argv)
    print(f"inverter every {args.inverter_interval:g} s, meters every {args.meter_interval:g} s, "
          f"turnaround {args.turnaround * 1000:g} ms, dead device: timeout {args.timeout:g} s x "
          f"{args.retries + 1}, quarantine after {args.offline_after}, backoff to "
          f"{args.quarantine_max:g} s; {args.duration:g} s simulated\n")
    print(f"{'N':>3} {'baud':>6} {'dead':>5} {'asked/s':>8} {'got/s':>7} {'got%':>6} "
          f"{'worst%':>7} {'bus%':>6} {'dead%':>6} {'probes':>6}")
    notices = []
    for baud in args.baud:
        for n in args.devices:
            for dead in (False, True):
                r = run(n, baud, dead, args)
                print(f"{n:>3} {baud:>6} {'yes' if dead else 'no':>5} {r['requested']:>8.3f} "
                      f"{r['achieved']:>7.3f} {100 * r['achieved'] / r['requested']:>5.1f}% "
                      f"{100 * r['worst']:>6.1f}% {100 * r['utilisation']:>5.1f}% "
                      f"{100 * r['dead_share']:>5.1f}% {r['probes']:>6}")
                if r["notice"]:
                    notices.append(f"N={n} {baud} baud{' (dead)' if dead else ''}: "
                                   f"{r['notice']}")
    print("\nasked/got: scans per second of the answering devices (requested vs achieved);")
    print("worst: the worst answering device's achieved rate as % of its requested rate;")
    print("bus: share of time the line is busy; dead: share spent waiting on the dead device.")
    if notices:
        print("\nwhat the transport logs (once) when the bus is oversubscribed:")
        for text in notices:
            print("  " + text)
    if args.live > 0:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL + 1)
        logging.getLogger("bench").setLevel(logging.ERROR)  # the quarantine is in the table
        print(f"\nlive: the real transport on a paced PTY line, {args.live:g} s per case")
        print(f"{'N':>3} {'baud':>6} {'dead':>5} {'asked/s':>8} {'got/s':>7} {'got%':>6} "
              f"{'worst%':>7} {'bus%':>6} {'wire%':>6} {'probes':>6}")
        for baud in args.baud:
            for n in args.devices:
                for dead in (False, True):
                    r = asyncio.run(live(n, baud, dead, args))
                    print(f"{n:>3} {baud:>6} {'yes' if dead else 'no':>5} "
                          f"{r['requested']:>8.3f} {r['achieved']:>7.3f} "
                          f"{100 * r['achieved'] / r['requested']:>5.1f}% "
                          f"{100 * r['worst']:>6.1f}% {100 * r['utilisation']:>5.1f}% "
                          f"{100 * r['wire']:>5.1f}% {r['probes']:>6}", flush=True)
        print("got/s counts readings of the answering devices over the run (first to last);")
        print("a short run includes the start, where every device is due at once.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
