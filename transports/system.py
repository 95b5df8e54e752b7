"""``system``: the host's CPU load, memory, disk and CPU temperature, every read_interval.

What a Pi owner graphs next to the inverter (an SD card filling up, a CPU throttling in a hot
cupboard). Reads /proc and /sys directly: no dependency, nothing to install.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from pathlib import Path

from pydantic import Field

from gateway.message import EVENT, READING, Envelope, ValueSpec, command_result, describe_event
from gateway.settings import TransportSettings
from transports import register
from transports.base import Transport

THERMAL = Path("/sys/class/thermal")


class SystemSettings(TransportSettings):
    read_interval: float = Field(default=30.0, gt=0, description="seconds between readings")
    disk_path: str = Field(default="/", description="filesystem whose usage is reported")


def read_meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, int]:
    """kB values from /proc/meminfo by name."""
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[name] = int(parts[0])
    except OSError:
        pass
    return values


def cpu_temperature() -> float | None:
    """The CPU zone's temperature in C (the first zone on a Pi), None where there is none."""
    try:
        zones = sorted(THERMAL.glob("thermal_zone*"))
    except OSError:
        return None
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
            millideg = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        if "cpu" in kind or "soc" in kind or zone.name == "thermal_zone0":
            return millideg / 1000.0
    return None


SPECS = [
    ValueSpec("load_1m", state_class="measurement"),
    ValueSpec("load_5m", state_class="measurement"),
    ValueSpec("load_15m", state_class="measurement"),
    ValueSpec("cpu_count", display_name="CPU count", entity_category="diagnostic"),
    ValueSpec("memory_used_percent", unit="%", state_class="measurement"),
    ValueSpec("memory_available_mb", unit="MB", device_class="data_size",
              state_class="measurement"),
    ValueSpec("disk_used_percent", unit="%", state_class="measurement"),
    ValueSpec("disk_free_gb", unit="GB", device_class="data_size", state_class="measurement"),
    ValueSpec("cpu_temperature", unit="°C", device_class="temperature",
              state_class="measurement", display_name="CPU temperature"),
    ValueSpec("uptime", unit="s", device_class="duration", state_class="measurement",
              entity_category="diagnostic"),
]


@register
class SystemInput(Transport[SystemSettings]):
    kind = "system"
    Settings = SystemSettings
    accepts = frozenset({"command"})

    def info(self) -> dict[str, str]:
        host = socket.gethostname()
        return {"transport_name": self.ctx.name, "device_identifier": f"host-{host}",
                "device_manufacturer": "protocol-gateway", "device_model": os.uname().machine,
                "device_serial_number": host}

    def sample(self) -> dict[str, float | int]:
        load1, load5, load15 = os.getloadavg()
        data: dict[str, float | int] = {
            "load_1m": round(load1, 2), "load_5m": round(load5, 2),
            "load_15m": round(load15, 2), "cpu_count": os.cpu_count() or 1,
        }
        mem = read_meminfo()
        if mem.get("MemTotal"):
            available = mem.get("MemAvailable", mem.get("MemFree", 0))
            data["memory_used_percent"] = round(100 * (1 - available / mem["MemTotal"]), 1)
            data["memory_available_mb"] = round(available / 1024, 1)
        try:
            disk = shutil.disk_usage(self.settings.disk_path)
            data["disk_used_percent"] = round(100 * disk.used / disk.total, 1)
            data["disk_free_gb"] = round(disk.free / 1e9, 2)
        except OSError as exc:
            self.ctx.counters.error(f"disk usage of {self.settings.disk_path}: {exc}")
        temperature = cpu_temperature()
        if temperature is not None:
            data["cpu_temperature"] = temperature
        data["uptime"] = round(time.clock_gettime(time.CLOCK_BOOTTIME))
        return data

    async def run(self) -> None:
        await self.ctx.emit("event", describe_event(SPECS), info=self.info())
        next_at = time.monotonic()
        while True:
            await self.ctx.emit(READING, self.sample(), info=self.info())
            next_at += self.settings.read_interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def describe(self, device: str = "") -> list[tuple[dict[str, str], list[ValueSpec]]]:
        return [(self.info(), list(SPECS))]

    async def receive(self, envelope: Envelope) -> None:
        """Commands other than ``describe`` (answered by the runner): nothing to write here."""
        await self.ctx.emit(EVENT, command_result(envelope.data, False, "unsupported",
                                                  f"{self.ctx.name} has nothing to write"),
                            target=envelope.source_transport, info=self.info())
