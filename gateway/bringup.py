"""Bring-up commands: ``protocol-gateway read CONFIG [SECTION]`` and ``protocol-gateway ports``.

``read`` is telegraf's ``--test``: each input section is connected once, in this process,
through the same transport contract the runner uses (:mod:`transports.base`), until its first
reading (or a deadline); its decoded values are printed as a table and nothing is sent anywhere.
A section whose device another running instance holds is skipped with the holder's name:
opening a serial port twice would garble both.

``ports`` lists the serial ports pyserial sees, with their stable ``/dev/serial/by-id`` names
and USB ids: what to write in ``port =``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import transports
from gateway.config import GatewayConfig, TransportConfig
from gateway.message import READING, Envelope
from gateway.settings import GeneralSettings
from transports.base import TransportContext

BY_ID = Path("/dev/serial/by-id")


def input_sections(config: GatewayConfig, section: str = "") -> list[TransportConfig]:
    """The named section, or every section whose kind takes no readings in (an input)."""
    if section:
        return [config.transports[section]]
    registry = transports.load_all()
    return [tc for tc in config.transports.values()
            if READING not in registry[tc.kind].accepts]


def _value_units(envelopes: list[Envelope]) -> dict[str, str]:
    units: dict[str, str] = {}
    for env in envelopes:
        if env.kind == "event" and env.data.get("event") == "describe":
            for name, spec in (env.data.get("values") or {}).items():
                if isinstance(spec, dict) and spec.get("unit"):
                    units[name] = str(spec["unit"])
    return units


async def read_once(tc: TransportConfig, general: GeneralSettings,
                    timeout: float) -> tuple[list[Envelope], str]:
    """Run one transport until its first reading; -> (what it emitted, problem or "")."""
    received: list[Envelope] = []
    got_reading = asyncio.Event()

    async def emitter(envelope: Envelope) -> None:
        received.append(envelope)
        if envelope.kind == READING:
            got_reading.set()

    log = logging.getLogger(tc.name)
    ctx = TransportContext(tc.name, general, emitter, log)
    transport = transports.get(tc.kind)(tc.settings, ctx)
    run: asyncio.Task[None] | None = None
    problem = ""
    try:
        await asyncio.wait_for(transport.connect(), timeout)
        run = asyncio.create_task(transport.run())
        waiter = asyncio.create_task(got_reading.wait())
        done, _ = await asyncio.wait({run, waiter}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if run in done and run.exception() is not None:
            problem = f"stopped: {run.exception()}"
        elif not got_reading.is_set():
            problem = (ctx.counters.last_error or "no reading") + f" within {timeout:.0f} s"
    except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
        problem = f"cannot connect: {exc or type(exc).__name__}"
    finally:
        ctx.stopping.set()
        if run is not None and not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(run, 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(transport.close(), 5)
    return received, problem


def format_reading(name: str, kind: str, envelopes: list[Envelope], problem: str,
                   seconds: float) -> list[str]:
    readings = [e for e in envelopes if e.kind == READING]
    units = _value_units(envelopes)
    if not readings:
        return [f"[{name}] {kind}: {problem or 'no reading'}"]
    lines = [f"[{name}] {kind}: first reading after {seconds:.1f} s"]
    devices: dict[str, dict[str, Any]] = {}
    for env in readings:
        device = (env.source_transport_info or {}).get("device") or name
        devices.setdefault(device, {}).update(env.data)
    for device, values in devices.items():
        if len(devices) > 1:
            lines.append(f"  {device}")
        width = max((len(k) for k in values), default=0)
        for key, value in values.items():
            unit = units.get(key, "")
            lines.append(f"    {key:<{width}}  {value}{' ' + unit if unit else ''}")
    return lines


def run_read(config: GatewayConfig, section: str, timeout: float) -> int:
    """Exit 0 when every section read gave a reading, 1 otherwise."""
    from gateway.claims import Claim, ClaimRegistry, effective_claims

    if section and section not in config.transports:
        print(f"{config.source}: no section [{section}] (sections: "
              f"{', '.join(config.transports)})")
        return 2
    chosen = input_sections(config, section)
    if not chosen:
        print(f"{config.source}: no input section to read")
        return 1
    held = {(c.what, c.identity): c for c in effective_claims(config)}
    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s [%(name)s pid={os.getpid()}]"
                        " %(message)s")
    ok = True
    with tempfile.TemporaryDirectory(prefix="pgw-read-") as state:
        general = config.general.model_copy(update={"state_dir": state})
        for tc in chosen:
            mine = [Claim(w, i, tc.name) for (w, i), c in held.items() if c.section == tc.name
                    and w not in ("tcp listen", "udp listen")]
            try:
                busy = ClaimRegistry().check(-1, mine)
            except OSError:
                busy = []
            if busy:
                print(f"[{tc.name}] {tc.kind}: skipped, " + "; ".join(busy))
                ok = False
                continue
            started = time.monotonic()
            envelopes, problem = asyncio.run(read_once(tc, general, timeout))
            lines = format_reading(tc.name, tc.kind, envelopes, problem,
                                   time.monotonic() - started)
            ok &= any(e.kind == READING for e in envelopes)
            print("\n".join(lines), flush=True)
    return 0 if ok else 1


def serial_ports() -> list[dict[str, str]]:
    from serial.tools import list_ports

    by_id: dict[str, str] = {}
    if BY_ID.is_dir():
        for link in sorted(BY_ID.iterdir()):
            with contextlib.suppress(OSError):
                by_id[os.path.realpath(link)] = str(link)
    found = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        usb = (f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None and port.pid is not None
               else "")
        found.append({"device": port.device, "by_id": by_id.get(os.path.realpath(port.device), ""),
                      "usb": usb, "serial": port.serial_number or "",
                      "description": port.description if port.description != "n/a" else "",
                      "manufacturer": port.manufacturer or ""})
    return found


def print_ports() -> int:
    ports = serial_ports()
    if not ports:
        print("no serial ports found (a USB adapter shows up here once plugged in; "
              "a network device is reached by host and port instead)")
        return 0
    for p in ports:
        usb = f"  USB {p['usb']}" if p["usb"] else ""
        serial = f" serial {p['serial']}" if p["serial"] else ""
        what = " ".join(x for x in (p["manufacturer"], p["description"]) if x)
        print(f"{p['device']}{usb}{serial}  {what}".rstrip())
        if p["by_id"]:
            print(f"  port = {p['by_id']}   (stable across reboots and replugging)")
    return 0
