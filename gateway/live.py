"""What the status page, ``/metrics`` and the demo's terminal view show: one live picture.

Three sources, gathered in the supervisor's process without touching the transports:

- the transports' slots (state, restarts, counters): the supervisor's snapshot;
- each device's latest reading: :class:`LatestReadings` decodes envelope frames the supervisor
  routes anyway (a tap on its reading threads), at most ``max_rate`` frames a second per source
  on average (bursts of ``burst``), so a flood of envelopes costs the bridge little;
- each load-sharing node's own ``/loadsharing/status`` on loopback (:class:`GroupPoller`), the
  same answer its REST API gives, polled once a second with a short deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.config import GatewayConfig
from gateway.http11 import HttpClientError, get_json
from gateway.instance import offset_address, split_host_port

log = logging.getLogger("supervisor.live")

#: Value names the compact views show first (substrings, in order of preference).
KEY_VALUES = ("state", "power", "current", "voltage", "soc", "energy", "level", "load",
              "temperature")
#: Names shown first when a reading has them.
PREFERRED = ("state", "power", "power_total", "pv_total_power", "battery_soc", "soc",
             "charging_current", "load_power")
MAX_DEVICES = 200


def key_values(values: dict[str, Any], count: int = 4) -> list[tuple[str, Any]]:
    """A few telling values of a reading: per word of :data:`KEY_VALUES`, a name that is the
    word, else one ending in ``_word``, else one containing it (``power`` before
    ``pv_total_power`` before ``charge_power_percent``)."""
    chosen = [n for n in PREFERRED if n in values][:count]
    for word in KEY_VALUES:
        if len(chosen) == count:
            break
        tiers = ([n for n in values if n in (word, word + "_total")],
                 [n for n in values if n.endswith("_" + word)],
                 [n for n in values if word in n and not n.endswith(("_code", "_percent"))])
        match = next((n for tier in tiers for n in tier if n not in chosen), None)
        if match is not None:
            chosen.append(match)
        if len(chosen) == count:
            break
    chosen += [n for n in values if n not in chosen][:count - len(chosen)]
    return [(n, values[n]) for n in chosen]


@dataclass
class DeviceReading:
    source: str
    device: str
    values: dict[str, Any]
    at: float  # wall-clock time of the reading
    available: bool = True
    reason: str = ""


@dataclass
class LatestReadings:
    """Latest reading per (transport, device), fed from the supervisor's routing threads."""

    max_rate: float = 5.0  # frames decoded per second and source, on average
    burst: float = 20.0  # ... and at once: a describe, a status and a reading pass together
    devices: dict[tuple[str, str], DeviceReading] = field(default_factory=dict)
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # source -> (n, at)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tap(self, source: str, frame: bytes) -> None:
        """A routed ``E`` frame (see :mod:`gateway.channel`); never raises into the bridge.
        A token bucket per source bounds the decoding under a flood of envelopes."""
        now = time.monotonic()
        tokens, at = self._tokens.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.max_rate)
        if tokens < 1.0:
            self._tokens[source] = (tokens, now)
            return
        self._tokens[source] = (tokens - 1.0, now)
        try:
            rows = pickle.loads(frame[frame.index(b"\n", 1) + 1:])
            for src, kind, data, _target, info, timestamp, _seq in rows:
                if kind in ("reading", "status") and isinstance(data, dict):
                    self.record(src, kind, data, info or {}, float(timestamp))
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, ImportError):  # a frame we cannot read is only not shown
            log.debug("undecodable frame from %s", source, exc_info=True)

    def record(self, source: str, kind: str, data: dict[str, Any], info: dict[str, str],
               timestamp: float) -> None:
        # a bus names its members ("device"); a single-device transport is its device
        device = info.get("device") or source
        key = (source, device)
        with self._lock:
            entry = self.devices.get(key)
            if entry is None:
                if len(self.devices) >= MAX_DEVICES:
                    return
                entry = self.devices[key] = DeviceReading(source, device, {}, timestamp)
            if kind == "reading":
                entry.values, entry.at, entry.available = dict(data), timestamp, True
            else:
                entry.available = bool(data.get("available", True))
                entry.reason = str(data.get("reason", ""))

    def snapshot(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        with self._lock:
            entries = sorted(self.devices.values(), key=lambda d: (d.source, d.device))
            return [{"transport": d.source, "device": d.device, "available": d.available,
                     "reason": d.reason, "at": d.at, "age": round(max(0.0, now - d.at), 1),
                     "key_values": dict(key_values(d.values)),
                     "values": {k: v for k, v in d.values.items()
                                if isinstance(v, (int, float, str, bool))}}
                    for d in entries if d.values or not d.available]


@dataclass(frozen=True)
class GroupSource:
    """A load-sharing section and where its node answers (instance offset applied)."""

    section: str
    url: str
    breaker: float
    node: str = ""  # host:port, the node's own member id by default

    @property
    def node_status_url(self) -> str:
        """The node's OpenEVSE-style ``/status`` (what it draws), beside its group status."""
        return self.url.removesuffix("/loadsharing/status") + "/status"


def group_sources(config: GatewayConfig) -> list[GroupSource]:
    found = []
    for name, tc in config.transports.items():
        if tc.kind != "loadsharing":
            continue
        listen = str(getattr(tc.settings, "node_listen", "") or "")
        if not listen:
            continue
        try:
            host, port = split_host_port(offset_address(listen, config.general.instance))
        except ValueError:
            continue
        if host in ("", "0.0.0.0", "::", "*"):
            host = "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        breaker = float(getattr(tc.settings, "loadsharing_group_max_current", 0) or 0)
        found.append(GroupSource(name, f"http://{shown}:{port}/loadsharing/status", breaker,
                                 f"{shown}:{port}"))
    return found


def drawn_current(node: dict[str, Any] | None, status: dict[str, Any]) -> float | None:
    """Amps the group draws as its node reports them: its own charger and its peers
    (``loadsharing_group_current_total`` of the node's ``/status``) plus the OpenEVSE members
    it leads (their ``amp``, in mA). None when the node does not say."""
    if not node or not isinstance(node.get("loadsharing_group_current_total"), (int, float)):
        return None
    total = float(node["loadsharing_group_current_total"])
    for member in status.get("openevse_members") or []:
        amp = member.get("amp") if isinstance(member, dict) else None
        if isinstance(amp, (int, float)) and not isinstance(amp, bool):
            total += amp / 1000.0
    return round(total, 2)


def summarize_group(source: GroupSource, status: dict[str, Any] | None,
                    error: str = "", node: dict[str, Any] | None = None) -> dict[str, Any]:
    """The page's view of one group: members, allocation and reason each, current vs breaker."""
    if status is None:
        return {"section": source.section, "reachable": False, "error": error,
                "breaker": source.breaker, "members": [], "allocated": 0.0, "drawn": None,
                "failsafe": None, "limit": None}
    members = []
    for alloc in status.get("allocations", []) or []:
        members.append({"id": str(alloc.get("id", "")),
                        "target_current": float(alloc.get("target_current") or 0),
                        "reason": str(alloc.get("pgw_reason") or alloc.get("reason") or "")})
    online = {str(p.get("id", p.get("host", ""))): p.get("state", "") for p in
              (status.get("peers") or []) + (status.get("openevse_members") or [])
              if isinstance(p, dict)}
    for member in members:
        member["state"] = online.get(member["id"]) or (
            "this node" if member["id"] == source.node else "")
    return {"section": source.section, "reachable": True, "error": "",
            "breaker": source.breaker, "members": members,
            "allocated": round(sum(m["target_current"] for m in members), 2),
            "drawn": drawn_current(node, status),
            "failsafe": bool(status.get("failsafe_active")), "limit": status.get("limit"),
            "mode": status.get("mode", ""), "online": status.get("online_count"),
            "offline": status.get("offline_count")}


class GroupPoller:
    """Polls each node's status once a second; keeps the last answer (or why there is none)."""

    def __init__(self, sources: list[GroupSource], interval: float = 1.0) -> None:
        self.sources = sources
        self.interval = interval
        self.groups: dict[str, dict[str, Any]] = {
            s.section: summarize_group(s, None, "not polled yet") for s in sources}

    async def run(self) -> None:
        if not self.sources:
            return
        while True:
            for source in self.sources:
                try:
                    body = await fetch_json(source.url)
                    node = None
                    with contextlib.suppress(HttpClientError):
                        node = await fetch_json(source.node_status_url)
                    self.groups[source.section] = summarize_group(source, body, node=node)
                except HttpClientError as exc:
                    self.groups[source.section] = summarize_group(source, None, str(exc))
            await asyncio.sleep(self.interval)


async def fetch_json(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """A node's JSON object at ``url`` (loopback, h11 rather than aiohttp: the supervisor's
    memory); every failure is an :class:`HttpClientError` saying why."""
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise HttpClientError(f"bad URL {url}: {exc}") from None
    body = await get_json(parts.hostname or "", port, parts.path or "/", timeout)
    if not isinstance(body, dict):
        raise HttpClientError(f"{url} did not answer a JSON object")
    return body


class LiveState:
    """One picture of the gateway for ``/api/state``, the page's event stream and /metrics."""

    def __init__(self, transports: Callable[[], list[dict[str, Any]]],
                 readings: LatestReadings | None = None,
                 groups: GroupPoller | None = None) -> None:
        self.transports = transports
        self.readings = readings or LatestReadings()
        self.groups = groups or GroupPoller([])
        self.started = time.time()

    def state(self) -> dict[str, Any]:
        import gateway

        now = time.time()
        return {"time": now, "version": gateway.__version__, "started": self.started,
                "transports": self.transports(), "devices": self.readings.snapshot(now),
                "groups": list(self.groups.groups.values())}
