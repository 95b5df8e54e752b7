"""Zeroconf: advertise this node as ``_openevse._tcp`` and find the others.

Like the OpenEVSE firmware: TXT ``id`` (the device id, lower-case hex), ``type`` and ``version``;
results cached for ``ttl`` seconds, deduplicated by hostname (a device answers on several
interfaces), refreshed in the background every ``interval`` with a ``timeout`` per query, our own
entry dropped by id or hostname. :meth:`Discovery.refresh_soon` never blocks its caller (``POST
/loadsharing/discover`` answers at once). A discovered node is not a member until added.

``interfaces`` restricts zeroconf to those addresses (``["127.0.0.1"]`` in the tests, where
loopback multicast needs a network namespace with multicast on ``lo``; see the tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE = "_openevse._tcp.local."
HTTP_SERVICE = "_http._tcp.local."


@dataclass
class Found:
    hostname: str  # mDNS host name, without the trailing dot
    ip: str
    port: int
    id: str
    type: str
    version: str
    seen_at: float  # monotonic

    @property
    def host(self) -> str:
        """What to add as a member: ``ip:port`` (port 80 omitted, as OpenEVSE)."""
        return self.ip if self.port == 80 else f"{self.ip}:{self.port}"


class Discovery:
    def __init__(self, name: str, port: int, device_id: str, version: str, log: logging.Logger,
                 *, interfaces: list[str] | None = None, ttl: float = 60.0,
                 interval: float = 10.0, timeout: float = 5.0, build: str = "protocol_gateway",
                 addresses: list[str] | None = None) -> None:
        self.name = name
        self.port = port
        self.device_id = device_id.lower()
        self.version = version
        self.log = log
        self.interfaces = interfaces
        self.ttl, self.interval, self.timeout = ttl, interval, timeout
        self.build = build
        self.addresses = addresses or interfaces or ["127.0.0.1"]
        self.cache: dict[str, Found] = {}
        self._names: set[str] = set()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.refreshes = 0

    async def start(self) -> None:
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if self.interfaces:
            kwargs["interfaces"] = self.interfaces
        self._zc = AsyncZeroconf(**kwargs)
        info = AsyncServiceInfo(
            SERVICE, f"{self.name}.{SERVICE}", port=self.port,
            properties={"id": self.device_id, "type": self.build, "version": self.version},
            server=f"{self.name}.local.",
            addresses=[socket.inet_aton(a) for a in self.addresses],
        )
        await self._zc.async_register_service(info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE],
                                            handlers=[self._on_change])
        self._task = asyncio.create_task(self._loop(), name="discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zc is not None:
            with contextlib.suppress(Exception):
                await self._zc.async_unregister_all_services()
            await self._zc.async_close()

    def refresh_soon(self) -> None:
        self._wake.set()

    def found(self) -> list[Found]:
        """Fresh entries (within ``ttl``), one per hostname, ourselves excluded."""
        now = time.monotonic()
        return sorted((f for f in self.cache.values() if now - f.seen_at <= self.ttl),
                      key=lambda f: f.hostname)

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self._names.discard(name)
        else:
            self._names.add(name)
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.refresh()

    async def refresh(self) -> None:
        """Query every name the browser knows; expire what has not answered within ``ttl``."""
        assert self._zc is not None
        self.refreshes += 1
        for name in list(self._names):
            info = AsyncServiceInfo(SERVICE, name)
            try:
                ok = await info.async_request(self._zc.zeroconf, int(self.timeout * 1000))
            except Exception as exc:  # noqa: BLE001 - a bad answer must not stop discovery
                self.log.debug("mDNS query for %s failed: %s", name, exc)
                continue
            if ok:
                self._store(info)
        now = time.monotonic()
        for key, f in list(self.cache.items()):
            if now - f.seen_at > self.ttl:
                del self.cache[key]

    def _store(self, info: AsyncServiceInfo) -> None:
        props = {k.decode(errors="replace"): (v or b"").decode(errors="replace")
                 for k, v in (info.properties or {}).items()}
        hostname = (info.server or "").rstrip(".")
        ids = props.get("id", "").lower()
        if ids == self.device_id or hostname == f"{self.name}.local":
            return  # ourselves
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not hostname or not addresses or not info.port:
            return
        self.cache[hostname] = Found(hostname, addresses[0], info.port, ids,
                                     props.get("type", ""), props.get("version", ""),
                                     time.monotonic())
