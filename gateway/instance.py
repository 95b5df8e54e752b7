"""Several gateways on one host: port offsets, per-instance paths, pid files, claims.

Instance N listens on every base port + N*100 and keeps its state, pid file and log file
apart, so that instances never collide on a port or a file. Ports written in the INI file
are *base* ports: whoever opens a listening socket uses ``offset_port(base, general.instance)``,
and :func:`effective_claims` applies the same offset to ``("tcp listen", "host:port")``
claims. Port 0 means "off" (or "any free port") and is never offset.

What one process cannot see (another instance holding a serial port or a port) is caught by
the :class:`ClaimRegistry`: each running instance writes what it holds into a small JSON file
under a run directory shared by all instances; a starting instance compares its claims with
the live ones and refuses with a message naming the holder and its configuration file.

A pid is only an identity together with the process's start time (pids are reused, and a
crashed instance leaves its pid file behind), so pid files and claim records store both and
a record whose process is gone, a zombie, or a different process is stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.settings import GeneralSettings

log = logging.getLogger("gateway.instance")

PORT_STEP = 100
RUN_DIR_ENV = "PGW_RUN_DIR"
DEFAULT_RUN_DIR = "/tmp/protocol-gateway-run"
SYSTEMD_RUN_DIR = "/run/protocol-gateway"
#: A pid file without a start time names our process only if its command line says so.
PROCESS_MARKERS = ("protocol_gateway", "protocol-gateway", "gateway.cli")
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "*", "[::]"}
_LISTEN_KINDS = ("tcp listen", "udp listen")


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


# --- processes ----------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None when unreadable."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace").strip()
    except OSError:
        return ""


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, started at ``start_ticks``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return not Path("/proc/self/stat").exists()  # no /proc at all: trust kill(0)
    state, started = stat
    if state in ("Z", "X"):
        return False  # exited; nobody reaped it yet
    return start_ticks is None or started == start_ticks


def is_gateway_process(pid: int, start_ticks: int | None,
                       markers: Sequence[str] = PROCESS_MARKERS) -> bool:
    """A live process that is the one recorded: same start time, or (without one) a
    command line that names the gateway."""
    if not process_alive(pid, start_ticks):
        return False
    if start_ticks is not None:
        return True
    cmdline = process_cmdline(pid)
    return any(marker in cmdline for marker in markers)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class PidRecord:
    pid: int
    start_ticks: int | None


class PidFile:
    """``<pid>\\n<start ticks>\\n``: the first line alone is what ``kill $(cat ...)`` needs."""

    def __init__(self, path: Path | str, markers: Sequence[str] = PROCESS_MARKERS) -> None:
        self.path = Path(path)
        self.markers = tuple(markers)

    def write(self, pid: int | None = None) -> PidRecord:
        pid = os.getpid() if pid is None else pid
        record = PidRecord(pid, process_start_ticks(pid))
        ticks = "" if record.start_ticks is None else f"{record.start_ticks}\n"
        _write_atomic(self.path, f"{pid}\n{ticks}")
        return record

    def read(self) -> PidRecord | None:
        """The record, or None when there is no file or it is not a pid file."""
        try:
            lines = self.path.read_text().split()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            pid = int(lines[0])
            ticks = int(lines[1]) if len(lines) > 1 else None
        except (IndexError, ValueError):
            return None
        return PidRecord(pid, ticks) if pid > 0 else None

    def live_pid(self) -> int | None:
        record = self.read()
        if record is None or not is_gateway_process(record.pid, record.start_ticks,
                                                    self.markers):
            return None
        return record.pid

    def is_stale(self) -> bool:
        """The file exists but names no running instance (crash, reboot, reused pid)."""
        return self.path.exists() and self.live_pid() is None

    def remove(self, only_pid: int | None = None) -> bool:
        """Remove the file (only if it still names ``only_pid``, when given)."""
        if only_pid is not None:
            record = self.read()
            if record is None or record.pid != only_pid:
                return False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            return True
        return False


# --- claims across instances ---------------------------------------------------------------

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
        if self.what in _LISTEN_KINDS:
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
            shown = offset_address(identity, n) if what in _LISTEN_KINDS else identity
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
        _write_atomic(self.record_path(instance), json.dumps(data, indent=1) + "\n")

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


# --- `instance N info` ----------------------------------------------------------------------

def _named(settings: Any, keys: Sequence[str]) -> str:
    for key in keys:
        value = getattr(settings, key, None)
        if isinstance(value, str) and value:
            return value
    return ""


def info_table(config: GatewayConfig, registry: ClaimRegistry | None = None) -> str:
    """What instance N of ``config`` uses: ports, files, names, claims per section."""
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
        if claim.what in _LISTEN_KINDS and n:
            _, port = split_host_port(claim.identity)
            note = f"  (base port {port - n * PORT_STEP})"
        lines.append(f"  {'[' + claim.section + ']':<{section_width}}  {claim.what} "
                     f"{claim.identity}{note}")
    return "\n".join(lines)
