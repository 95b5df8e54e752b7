"""Several gateways on one host: instance numbers, port offsets, names, per-instance paths.

Instance N listens on every base port + N*100 and keeps its state, pid file and log file
apart, so that instances never collide on a port or a file. Ports written in the INI file
are *base* ports: whoever opens a listening socket uses ``offset_port(base, general.instance)``,
and :func:`gateway.claims.effective_claims` applies the same offset to
``("tcp listen", "host:port")`` claims. Port 0 means "off" (or "any free port") and is never
offset.

Neighbours: :mod:`gateway.claims` (what instances hold exclusively, checked across processes)
and :mod:`gateway.pidfile` (pid files, process identity) build on the names and paths here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.claims import ClaimRegistry
    from gateway.config import GatewayConfig
    from gateway.settings import GeneralSettings

PORT_STEP = 100


# --- names and numbers -------------------------------------------------------------------

def offset_port(base: int, instance: int) -> int:
    """``base + instance*100``; 0 stays 0 (off / any free port)."""
    if base == 0:
        return 0
    port = base + instance * PORT_STEP
    if not 0 < port <= 65535:
        raise ValueError(f"port {base} for instance {instance} would be {port}, outside "
                         f"1-65535: choose a lower base port or instance number")
    return port


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[::1]:port"`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def offset_address(address: str, instance: int) -> str:
    host, port = split_host_port(address)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{offset_port(port, instance)}"


def default_base_name() -> str:
    """A name unique per host: instances then only need their number appended."""
    return "protocol-gateway-" + socket.gethostname().split(".")[0]


def mqtt_client_id(base: str, instance: int) -> str:
    """Instance 0 keeps ``base``; the broker drops one of two clients sharing an id."""
    return base if instance == 0 else f"{base}-{instance}"


def mdns_name(base: str, instance: int) -> str:
    return base if instance == 0 else f"{base}-{instance}"


def instance_log_file(configured: str, instance: int, state_dir: Path) -> Path:
    """The log file of ``instance``: ``{instance}`` in the name is replaced; otherwise instance
    0 keeps the configured name and instance N gets ``-N`` before the suffix; no configured
    name means ``gateway.log`` in the instance's state directory."""
    if not configured:
        return state_dir / "gateway.log"
    if "{instance}" in configured:
        return Path(os.path.abspath(configured.replace("{instance}", str(instance))))
    path = Path(os.path.abspath(os.path.expanduser(configured)))
    if instance == 0:
        return path
    return path.with_name(f"{path.stem}-{instance}{path.suffix}")


@dataclass(frozen=True)
class InstancePaths:
    """Where one instance keeps its files; absolute, so a daemon's later chdir can't move them."""

    instance: int
    state_dir: Path
    pid_file: Path
    log_file: Path

    @classmethod
    def for_instance(cls, general: GeneralSettings) -> InstancePaths:
        base = Path(os.path.abspath(os.path.expanduser(general.state_dir)))
        state = base / f"instance-{general.instance}"
        return cls(
            instance=general.instance,
            state_dir=state,
            pid_file=state / "gateway.pid",
            log_file=instance_log_file(general.log_file, general.instance, state),
        )


# --- `instance N info` ----------------------------------------------------------------------

def _named(settings: Any, keys: Sequence[str]) -> str:
    for key in keys:
        value = getattr(settings, key, None)
        if isinstance(value, str) and value:
            return value
    return ""


def info_table(config: GatewayConfig, registry: ClaimRegistry | None = None) -> str:
    """What instance N of ``config`` uses: ports, files, names, claims per section."""
    # imported here: gateway.claims builds on the names and paths of this module
    from gateway.claims import LISTEN_KINDS, ClaimRegistry, effective_claims

    general = config.general
    n = general.instance
    paths = InstancePaths.for_instance(general)
    registry = registry or ClaimRegistry()
    base = default_base_name()
    rows: list[tuple[str, str]] = [
        ("config", os.path.abspath(config.source)),
        ("state dir", str(paths.state_dir)),
        ("pid file", str(paths.pid_file)),
        ("log file", str(paths.log_file)),
        ("claim record", str(registry.record_path(n))),
    ]
    if general.http_port:
        rows.append(("http api", f"{general.http_host}:{offset_port(general.http_port, n)}"
                                 f" (base port {general.http_port})"))
    else:
        rows.append(("http api", "off"))
    mqtt = [(name, t) for name, t in config.transports.items() if t.kind == "mqtt"]
    for name, transport in mqtt:
        explicit = _named(transport.settings, ("client_id",))
        # The mqtt transport's own default already carries host, instance and section.
        client = (mqtt_client_id(explicit, n) if explicit
                  else f"pgw-{socket.gethostname()}-{n}-{name}")
        rows.append(("mqtt client id", f"{client} [{name}]"))
    if not mqtt:
        rows.append(("mqtt client id", f"{mqtt_client_id(base, n)} (no mqtt section)"))
    mdns = [(name, _named(t.settings, ("mdns_name", "node_name", "name")) or base)
            for name, t in config.transports.items() if t.kind == "loadsharing"]
    for name, label in mdns or [("", base)]:
        where = f" [{name}]" if name else ""
        rows.append(("mdns name", mdns_name(label, n) + where))
    width = max(len(key) for key, _ in rows)
    lines = [f"instance {n}"] + [f"  {key:<{width}}  {value}" for key, value in rows]
    lines.append("claims (what no other instance may use at the same time)")
    claims = effective_claims(config)
    section_width = max(len(c.section) for c in claims) + 2
    for claim in claims:
        note = ""
        if claim.what in LISTEN_KINDS and n:
            _, port = split_host_port(claim.identity)
            note = f"  (base port {port - n * PORT_STEP})"
        lines.append(f"  {'[' + claim.section + ']':<{section_width}}  {claim.what} "
                     f"{claim.identity}{note}")
    return "\n".join(lines)
