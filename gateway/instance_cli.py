"""``protocol_gateway.py instance N|all start|stop|status|logs|clean|info [--config PATH]``.

Managing background instances on a host without systemd (with systemd, use
``systemctl start protocol-gateway@N``; ``status``, ``info`` and ``stop`` work for both).
``stop``, ``status`` and ``logs`` work even when the configuration file has gone or is
broken: they fall back to what the running instance registered in the claim registry.

Exit codes: 0 done / running; 1 refused, failed or (stop) not running; 2 usage or configuration
error; 3 (status) not running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gateway.claims import ClaimConflict, ClaimRegistry, effective_claims, hold_config_claims
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.daemon import instance_status, run_foreground, start_daemon, stop_instance
from gateway.instance import InstancePaths, info_table
from gateway.pidfile import PidFile

ETC_DIR = Path("/etc/protocol-gateway")
ACTIONS = ("start", "stop", "status", "logs", "clean", "info")
ALL_ACTIONS = ("stop", "status")


def default_config(instance: int | None) -> str:
    """``/etc/protocol-gateway/N.ini`` (what the systemd unit uses) if present, else
    ``./config.ini``."""
    if instance is not None:
        etc = ETC_DIR / f"{instance}.ini"
        if etc.exists():
            return str(etc)
    return "config.ini"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protocol_gateway.py instance",
        description="Manage background gateway instances (ports + N*100, own state/pid/log).")
    parser.add_argument("target", help="instance number 0-99, or 'all' (stop, status)")
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--config", "-c", help="INI file (default: /etc/protocol-gateway/N.ini "
                        "if it exists, else ./config.ini)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="stop: seconds to wait for the ordered shutdown before SIGKILL")
    parser.add_argument("--lines", "-n", type=int, default=50, help="logs: lines to show")
    parser.add_argument("--follow", "-f", action="store_true", help="logs: keep printing")
    parser.add_argument("--foreground", action="store_true",
                        help="start: do not detach (pid file and claims still apply)")
    parser.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="start: wait this long for every transport to start (0: only "
                        "for the pid file)")
    return parser


def main_instance(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    registry = ClaimRegistry()
    if args.target == "all":
        if args.action not in ALL_ACTIONS:
            parser.error(f"'all' supports {' and '.join(ALL_ACTIONS)}, not {args.action}")
        return _all(args, registry)
    try:
        n = int(args.target)
        if not 0 <= n <= 99:
            raise ValueError
    except ValueError:
        parser.error(f"instance must be a number 0-99 or 'all', got {args.target!r}")
    config_path = args.config or default_config(n)
    if args.action in ("start", "info", "clean"):
        config = _load(config_path, n)
        if config is None:
            return 2
        try:
            effective_claims(config)  # every offset port within 1-65535
        except ValueError as exc:
            print(f"{config_path}: instance {n}: {exc}", file=sys.stderr)
            return 2
        paths = InstancePaths.for_instance(config.general)
        if args.action == "info":
            print(info_table(config, registry))
            print(instance_status(paths)[2])
            return 0
        if args.action == "clean":
            return _clean(paths, registry)
        return _start(config, paths, registry, foreground=args.foreground, wait=args.wait)
    paths = _paths_for(n, config_path, registry)
    if paths is None:
        if args.action == "status":
            print(f"instance {n} is not running (and {config_path} cannot be read)")
            return 3
        print(f"instance {n} is not running (and {config_path} cannot be read to find its "
              f"files)", file=sys.stderr)
        return 1
    if args.action == "stop":
        return stop_instance(paths, args.timeout)
    if args.action == "status":
        running, _, text = instance_status(paths)
        print(text)
        return 0 if running else 3
    return _logs(paths, args.lines, args.follow)


def _load(path: str, instance: int) -> GatewayConfig | None:
    try:
        return load_config(path, instance=instance)
    except ConfigError as exc:
        print(f"configuration {path} has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _paths_for(n: int, config_path: str, registry: ClaimRegistry) -> InstancePaths | None:
    """The instance's files from its configuration, else from its live registry record."""
    paths: InstancePaths | None = None
    with contextlib.suppress(ConfigError):
        paths = InstancePaths.for_instance(load_config(config_path, instance=n).general)
    if paths is not None and PidFile(paths.pid_file).live_pid() is not None:
        return paths
    # Not running per its config (or no config): a live instance N registered elsewhere,
    # e.g. a systemd service whose state directory comes from the unit's environment.
    for record in registry.records():
        if record.instance == n and record.pid_file:
            pid_file = Path(record.pid_file)
            return InstancePaths(n, pid_file.parent, pid_file, Path(record.log_file))
    return paths


def _start(config: GatewayConfig, paths: InstancePaths, registry: ClaimRegistry, *,
           foreground: bool, wait: float) -> int:
    n = paths.instance
    live = PidFile(paths.pid_file).live_pid()
    if live is not None:
        print(f"instance {n} is already running (pid {live}); stop it first with: "
              f"instance {n} stop", file=sys.stderr)
        return 1
    messages = registry.check(n, effective_claims(config))
    if messages:
        _print_conflict(config, messages)
        return 1
    try:
        from gateway.cli import run_gateway
    except ImportError as exc:
        print(f"instance {n} cannot start: gateway.cli.run_gateway is missing ({exc})",
              file=sys.stderr)
        return 1

    run = _holding_claims(config, registry, lambda: int(run_gateway(config)))
    if foreground:
        return run_foreground(paths, run)
    return start_daemon(paths, run, ready_timeout=wait)


def _holding_claims(config: GatewayConfig, registry: ClaimRegistry,
                    run: Callable[[], int]) -> Callable[[], int]:
    """``run`` wrapped in the instance's registered claims (checked again: the registry lock
    makes check-and-register one step, so two instances started together can't both win)."""

    def guarded() -> int:
        try:
            with hold_config_claims(config, registry):
                return run()
        except ClaimConflict as exc:
            _print_conflict(config, exc.messages)
            return 1

    return guarded


def _print_conflict(config: GatewayConfig, messages: list[str]) -> None:
    print(f"instance {config.general.instance} cannot start ({config.source}):",
          file=sys.stderr)
    for message in messages:
        print(f"  {message}", file=sys.stderr)


def run_guarded(config: GatewayConfig, run: Callable[[], int],
                registry: ClaimRegistry | None = None) -> int:
    """The foreground path (``protocol-gateway run``, systemd): the same pid file and claims
    a daemon holds, so ``instance N status|stop`` and the duplicate checks see it too.
    Returns 1 (after saying why) when the instance runs already or a claim is taken."""
    return run_foreground(InstancePaths.for_instance(config.general),
                          _holding_claims(config, registry or ClaimRegistry(), run))


def _clean(paths: InstancePaths, registry: ClaimRegistry) -> int:
    """Remove an instance's state, only while it is stopped: a running one would recreate
    half of it and lose the rest."""
    n = paths.instance
    running, pid, _ = instance_status(paths)
    holder = next((r for r in registry.records() if r.instance == n), None)
    if running or holder is not None:
        who = pid if running else holder.pid if holder else "?"
        print(f"instance {n} is running (pid {who}); stop it before cleaning", file=sys.stderr)
        return 1
    removed: list[str] = []
    if paths.state_dir.name == f"instance-{n}" and paths.state_dir.is_dir():
        shutil.rmtree(paths.state_dir)
        removed.append(str(paths.state_dir))
    for extra in (paths.log_file, paths.pid_file,
                  paths.pid_file.with_name(paths.pid_file.name + ".lock")):
        if extra.exists():
            extra.unlink()
            removed.append(str(extra))
    with contextlib.suppress(FileNotFoundError):
        registry.record_path(n).unlink()
    if removed:
        print(f"instance {n}: removed " + ", ".join(removed))
    else:
        print(f"instance {n}: nothing to clean")
    return 0


def _all(args: argparse.Namespace, registry: ClaimRegistry) -> int:
    """Every instance we can find: live registry records, plus pid files under the state
    directory of ``--config`` (or ./config.ini) when it loads."""
    found: dict[int, InstancePaths] = {}
    config_path = args.config or default_config(None)
    if os.path.exists(config_path):
        config = _load(config_path, 0)
        if config is not None:
            base = InstancePaths.for_instance(config.general).state_dir.parent
            for pid_file in sorted(base.glob("instance-*/gateway.pid")):
                with contextlib.suppress(ValueError):
                    n = int(pid_file.parent.name.removeprefix("instance-"))
                    found[n] = InstancePaths.for_instance(
                        config.general.model_copy(update={"instance": n}))
    for record in registry.records():
        if record.instance not in found and record.pid_file:
            pid_file = Path(record.pid_file)
            found[record.instance] = InstancePaths(record.instance, pid_file.parent, pid_file,
                                                   Path(record.log_file))
    if args.action == "status":
        running_any = False
        for n in sorted(found):
            running, _, text = instance_status(found[n])
            running_any |= running
            print(text)
        if not found:
            print("no instance is running")
        return 0 if running_any else 3
    codes = []
    for n in sorted(found):
        if instance_status(found[n])[0]:
            codes.append(stop_instance(found[n], args.timeout))
    if not codes:
        print("no instance is running")
        return 1
    return 0 if all(code == 0 for code in codes) else 2


def _logs(paths: InstancePaths, lines: int, follow: bool) -> int:
    log_file = paths.log_file
    if not log_file.exists():
        print(f"instance {paths.instance} has no log file {log_file} (under systemd: "
              f"journalctl -u protocol-gateway@{paths.instance})", file=sys.stderr)
        return 1
    with open(log_file, "rb") as handle:
        tail = handle.read().splitlines()[-lines:] if lines > 0 else []
        for line in tail:
            sys.stdout.write(line.decode("utf-8", "replace") + "\n")
        sys.stdout.flush()
        if not follow:
            return 0
        try:
            while True:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk.decode("utf-8", "replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
