"""Claims across instances: what a running gateway holds exclusively, and who holds it.

What one process cannot see (another instance holding a serial port or a port) is caught by
the :class:`ClaimRegistry`: each running instance writes what it holds into a small JSON file
under a run directory shared by all instances; a starting instance compares its claims with
the live ones and refuses with a message naming the holder and its configuration file.
Listen ports are claimed after the instance offset of :mod:`gateway.instance`; a record whose
process is gone (:func:`gateway.pidfile.process_alive` with its start time) is stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.instance import InstancePaths, offset_address, split_host_port
from gateway.pidfile import process_alive, process_start_ticks, write_atomic

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

log = logging.getLogger("gateway.claims")

RUN_DIR_ENV = "PGW_RUN_DIR"
DEFAULT_RUN_DIR = "/tmp/protocol-gateway-run"
SYSTEMD_RUN_DIR = "/run/protocol-gateway"
#: Claim kinds whose identity is ``host:port``: offset per instance, wildcard hosts clash.
LISTEN_KINDS = ("tcp listen", "udp listen")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*", "[::]"}


def default_run_dir() -> Path:
    """``$PGW_RUN_DIR``; else the systemd units' RuntimeDirectory when it exists (so that the
    command line sees the services' instances); else a directory under /tmp."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if Path(SYSTEMD_RUN_DIR).is_dir():
        return Path(SYSTEMD_RUN_DIR)
    return Path(DEFAULT_RUN_DIR)


@dataclass(frozen=True)
class Claim:
    """An exclusive resource: ``what`` ("serial port", "tcp listen", "state dir", ...),
    its identity, and the section that holds it."""

    what: str
    identity: str
    section: str = ""

    def clashes_with(self, other: Claim) -> bool:
        if self.what != other.what:
            return False
        if self.what in LISTEN_KINDS:
            try:
                host_a, port_a = split_host_port(self.identity)
                host_b, port_b = split_host_port(other.identity)
            except ValueError:
                return self.identity == other.identity
            return port_a == port_b and (
                host_a == host_b or host_a in _WILDCARD_HOSTS or host_b in _WILDCARD_HOSTS)
        return self.identity == other.identity


def as_claims(items: Iterable[Claim | tuple[str, ...]]) -> list[Claim]:
    return [item if isinstance(item, Claim) else Claim(*item) for item in items]


def effective_claims(config: GatewayConfig) -> list[Claim]:
    """Everything instance N of ``config`` holds: listen ports offset, serial ports, files."""
    general = config.general
    n = general.instance
    paths = InstancePaths.for_instance(general)
    claims: list[Claim] = []
    if general.http_port:
        claims.append(Claim("tcp listen",
                            offset_address(f"{general.http_host}:{general.http_port}", n),
                            "general"))
    for name, transport in config.transports.items():
        for what, identity in transport.settings.claims():
            shown = offset_address(identity, n) if what in LISTEN_KINDS else identity
            claims.append(Claim(what, shown, name))
    claims.append(Claim("state dir", str(paths.state_dir), "general"))
    claims.append(Claim("log file", str(paths.log_file), "general"))
    return claims


class ClaimConflict(Exception):
    """Another live instance holds something this one needs; ``messages`` say what and who."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


@dataclass(frozen=True)
class InstanceRecord:
    instance: int
    pid: int
    start_ticks: int | None
    config: str
    pid_file: str
    log_file: str
    claims: tuple[Claim, ...]
    started: float

    def describe(self) -> str:
        where = f", config {self.config}" if self.config else ""
        return f"instance {self.instance} (pid {self.pid}{where})"


class ClaimRegistry:
    """One JSON file per running instance in a directory shared by all instances."""

    def __init__(self, run_dir: Path | str | None = None) -> None:
        self.run_dir = Path(run_dir or default_run_dir())

    def record_path(self, instance: int) -> Path:
        return self.run_dir / f"instance-{instance}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Check-then-register must be one step, or two instances starting together both win.

        The shared /tmp default is made world-writable and sticky (like /tmp itself) so that
        instances of different users can register; the lock is taken on a read-only
        descriptor, which any user can open.
        """
        if not self.run_dir.is_dir():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if str(self.run_dir) == DEFAULT_RUN_DIR:
                with contextlib.suppress(OSError):
                    os.chmod(self.run_dir, 0o1777)
        lock = self.run_dir / ".lock"
        fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def records(self) -> list[InstanceRecord]:
        """The live instances' records; files of dead or unreadable ones are removed."""
        if not self.run_dir.is_dir():
            return []
        found: list[InstanceRecord] = []
        for path in sorted(self.run_dir.glob("instance-*.json")):
            record = _parse_record(path)
            if record is None or not process_alive(record.pid, record.start_ticks):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(record)
        return sorted(found, key=lambda r: r.instance)

    def check(self, instance: int, claims: Iterable[Claim | tuple[str, ...]],
              pid: int | None = None) -> list[str]:
        """Messages naming the live instance that already holds one of ``claims``."""
        me = os.getpid() if pid is None else pid
        mine = as_claims(claims)
        messages: list[str] = []
        for record in self.records():
            if record.pid == me:
                continue
            if record.instance == instance:
                messages.append(f"instance {instance} is already running: {record.describe()}")
            for claim in mine:
                for held in record.claims:
                    if claim.clashes_with(held):
                        section = f" [{held.section}]" if held.section else ""
                        ours = f" (wanted by [{claim.section}])" if claim.section else ""
                        messages.append(f"{claim.what} {claim.identity}{ours} is already used "
                                        f"by {record.describe()}{section}")
        return messages

    def register(self, instance: int, claims: Iterable[Claim | tuple[str, ...]], *,
                 config: str = "", pid_file: str = "", log_file: str = "",
                 pid: int | None = None) -> None:
        pid = os.getpid() if pid is None else pid
        data: dict[str, Any] = {
            "instance": instance, "pid": pid, "start_ticks": process_start_ticks(pid),
            "config": config, "pid_file": pid_file, "log_file": log_file,
            "claims": [[c.what, c.identity, c.section] for c in as_claims(claims)],
            "started": time.time(),
        }
        write_atomic(self.record_path(instance), json.dumps(data, indent=1) + "\n")

    def unregister(self, instance: int, pid: int | None = None) -> None:
        """Remove our record (not one a newer process of the same instance wrote)."""
        pid = os.getpid() if pid is None else pid
        path = self.record_path(instance)
        record = _parse_record(path)
        if record is not None and record.pid == pid:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def hold(self, instance: int, claims: Iterable[Claim | tuple[str, ...]], *,
             config: str = "", pid_file: str = "", log_file: str = "") -> Iterator[None]:
        """Check and register as one step, unregister on exit; raises :class:`ClaimConflict`."""
        items = as_claims(claims)
        registered = False
        try:
            with self.locked():
                messages = self.check(instance, items)
                if messages:
                    raise ClaimConflict(messages)
                self.register(instance, items, config=config, pid_file=pid_file,
                              log_file=log_file)
                registered = True
        except OSError as exc:
            # An unwritable run directory must not stop a gateway: the OS still refuses a
            # second bind or serial open, only with a less helpful message.
            log.warning("claims of instance %d not registered in %s: %s (duplicate checks "
                        "across instances are off)", instance, self.run_dir, exc)
        try:
            yield
        finally:
            if registered:
                with contextlib.suppress(OSError):
                    self.unregister(instance)


def _parse_record(path: Path) -> InstanceRecord | None:
    try:
        data = json.loads(path.read_text())
        return InstanceRecord(
            instance=int(data["instance"]), pid=int(data["pid"]),
            start_ticks=None if data.get("start_ticks") is None else int(data["start_ticks"]),
            config=str(data.get("config", "")), pid_file=str(data.get("pid_file", "")),
            log_file=str(data.get("log_file", "")),
            claims=tuple(Claim(*map(str, c)) for c in data.get("claims", [])),
            started=float(data.get("started", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def hold_config_claims(
    config: GatewayConfig, registry: ClaimRegistry | None = None
) -> contextlib.AbstractContextManager[None]:
    """What a running gateway wraps its life in (daemon, foreground and systemd alike)."""
    paths = InstancePaths.for_instance(config.general)
    return (registry or ClaimRegistry()).hold(
        config.general.instance, effective_claims(config), config=os.path.abspath(config.source),
        pid_file=str(paths.pid_file), log_file=str(paths.log_file))

