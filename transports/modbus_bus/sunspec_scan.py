"""A SunSpec member's discovery on the bus: :func:`protocols.sunspec.discover` driven with the
bus's own reads (the member's timeout, retries and pauses; counted like any request).

Imported by the transport only when a member says ``protocol_version = sunspec``: a process
reading ordinary maps never loads the SunSpec model definitions.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import TYPE_CHECKING

from gateway.backoff import FailureLog
from protocols.sunspec import NotSunSpec, discover, sunspec_map
from transports.modbus.link import ExceptionReply, RequestFailed
from transports.modbus_bus.member import Member

if TYPE_CHECKING:
    from transports.modbus_bus.transport import ModbusBusTransport


async def discover_member(bus: ModbusBusTransport, m: Member) -> bool:
    """Find ``m``'s models and give it their map; False when the scan cannot go on (no
    answer, the link down, not a SunSpec device: told once, retried next interval)."""
    steps = discover(chunk=min(125, m.cfg.batch_size or 125))
    request = next(steps)
    try:
        while True:
            try:
                words: list[int] | None = [int(w) for w in await bus.read_words(m, request)]
            except ExceptionReply:
                words = None  # "not here": the next base address, or the chain's end
                await bus.heard(m)  # an answer all the same: the device is there
            except RequestFailed as exc:
                await bus.failed(m, exc, f"SunSpec discovery at {request.address}")
                return False
            try:
                request = steps.send(words)
            except StopIteration as stop:
                models = stop.value
                break
    except NotSunSpec as exc:
        _failure_log(bus, m).failed(f"not a SunSpec device: {exc}")
        return False
    found = sunspec_map(models, name="sunspec", writable=m.cfg.writable)
    m.adopt(found)
    _failure_log(bus, m).recovered()
    unknown = [str(x.model_id) for x in models if not x.body]
    who = " ".join(v for k, v in found.identity.items() if k in ("manufacturer", "model"))
    bus.log.log(logging.INFO, "%s: %s is SunSpec %s%s: models %s%s; %d values, %d writable",
                bus.where, m.name, who or "(no common model)",
                f" serial {m.serial}" if m.serial else "", found.describe(),
                f" (no definition for {', '.join(unknown)}: skipped)" if unknown else "",
                len(m.device.specs()), sum(1 for v in found.regmap.values if v.writable))
    for pattern in m.cfg.writable:
        if not any(v.writable for v in found.regmap.values if _matches(v.name, pattern)):
            bus.log.warning("%s: %s: writable = %s names no control point of this device",
                            bus.where, m.name, pattern)
    return True


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _failure_log(bus: ModbusBusTransport, m: Member) -> FailureLog:
    """One line when discovery starts failing, one when it succeeds again."""
    if m.discovery_log is None:
        m.discovery_log = FailureLog(bus.log, f"{bus.where}: {m.name}: SunSpec discovery")
    return m.discovery_log
