"""The simulated node's mDNS advertisement, as the firmware does it: loopback only, optional.

``_openevse._tcp`` and ``_http._tcp`` on the HTTP port, TXT ``id`` (device id, lower-case hex),
``type`` (build name), ``version`` (firmware version) and ``ssl`` (``0``). Bound to 127.0.0.1 so
a test or the demo never announces anything on a real network.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger("openevse_node.mdns")

SERVICE_TYPES = ("_openevse._tcp.local.", "_http._tcp.local.")


async def advertise(hostname: str, serial: str, port: int) -> Any:
    """Register both services; returns the AsyncZeroconf to close, or None if it failed."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    from simulators.openevse_node import BUILD, FIRMWARE_VERSION

    zc = None
    try:
        zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        props = {"id": serial.lower(), "type": BUILD, "version": FIRMWARE_VERSION, "ssl": "0"}
        for kind in SERVICE_TYPES:
            info = AsyncServiceInfo(
                kind,
                f"{hostname}.{kind}",
                addresses=[socket.inet_aton("127.0.0.1")],
                port=port,
                properties=props,
                server=f"{hostname}.local.",
            )
            await zc.async_register_service(info)
    except Exception as exc:  # noqa: BLE001 - mDNS is optional; the node works without it
        log.warning("mDNS advertisement failed: %s", exc)
        if zc is not None:
            await zc.async_close()
        return None
    return zc
