"""Command line: run, check, status, demo, instance.

    protocol-gateway config.ini                  run every section (same as `run config.ini`)
    protocol-gateway check config.ini            validate only; exit 0, or 2 with every error
    protocol-gateway run config.ini --print-config
    protocol-gateway status config.ini           the running gateway's transports, as a table
    protocol-gateway read config.ini [SECTION]   connect each input once, print its values
    protocol-gateway ports                       serial ports, by-id paths and USB ids
    protocol-gateway demo                        simulators + gateway, no hardware
    protocol-gateway instance N start|stop|...   background instances (docs/deployment.md)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gateway
from gateway import logs
from gateway.config import ConfigError, GatewayConfig, effective_settings, load_config, render_ini

if TYPE_CHECKING:
    from gateway.forkserver import ForkServer

EXIT_CONFIG = 2
COMMANDS = ("run", "check", "status", "read", "ports", "demo", "instance")


def http_port(config: GatewayConfig) -> int:
    """The status API's port for this instance (base + N*100), 0 when off."""
    base = config.general.http_port
    return 0 if base == 0 else base + 100 * config.general.instance


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protocol-gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"protocol-gateway {gateway.__version__}")
    sub = parser.add_subparsers(dest="command")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="the INI file")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one setting (repeatable; wins over file and environment)")
        p.add_argument("--instance", type=int, default=None,
                       help="instance number N: ports at base + N*100, own state and pid files")

    run = sub.add_parser("run", help="run the gateway")
    common(run)
    run.add_argument("--print-config", action="store_true",
                     help="print the effective settings (secrets masked) and exit")
    check = sub.add_parser("check", help="validate the configuration and exit")
    common(check)
    status = sub.add_parser("status", help="show the running gateway's transports")
    common(status)
    read = sub.add_parser("read", help="connect each input once, print its values, exit")
    common(read)
    read.add_argument("section", nargs="?", default="",
                      help="only this section (default: every input section)")
    read.add_argument("--timeout", type=float, default=30.0,
                      help="seconds to wait for each section's first reading")
    sub.add_parser("ports", help="list serial ports with their /dev/serial/by-id names")
    demo = sub.add_parser("demo", help="run simulators and the gateway on a demo configuration")
    demo.add_argument("--duration", type=float, default=0.0,
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--dir", default="", help="where to put the demo's files (default: temp)")
    demo.add_argument("--instance", type=int, default=0,
                      help="instance number N: every demo port at base + N*100")
    demo.add_argument("--mqtt", default="", metavar="HOST:PORT",
                      help="publish to this MQTT broker (Home Assistant's) instead of the "
                           "demo's own")
    demo.add_argument("--refresh", type=float, default=5.0,
                      help="seconds between live views in the terminal (0: none)")
    sub.add_parser("instance", help="manage background instances (see docs/deployment.md)",
                   add_help=False)
    return parser


def _exit_quietly(signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT before the supervisor's own handlers exist: nothing to stop yet."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "instance":
        from gateway.instance_cli import main_instance

        return main_instance(args_list[1:])
    if args_list and args_list[0] not in COMMANDS and not args_list[0].startswith("-"):
        args_list.insert(0, "run")
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    if args.command == "ports":
        from gateway.bringup import print_ports

        return print_ports()
    if args.command == "demo":
        from gateway.demo import run_demo

        return run_demo(args.duration, args.dir, args.instance, args.mqtt, args.refresh)
    forkserver = None
    if args.command == "run" and not args.print_config:
        from gateway.supervisor import start_forkserver_early

        forkserver = start_forkserver_early(args.config)  # imports beside the validation's
    try:
        return _command(args, forkserver)
    finally:
        if forkserver is not None:
            forkserver.close()  # the supervisor's, when it ran; or one nobody needed


def _command(args: argparse.Namespace, forkserver: ForkServer | None) -> int:
    try:
        config = load_config(args.config, sets=args.set, instance=args.instance)
    except ConfigError as exc:
        print(f"configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.command == "check":
        print(f"{args.config}: OK ({len(config.transports)} transports: "
              f"{', '.join(f'{n} ({t.kind})' for n, t in config.transports.items())})")
        return 0
    if args.command == "status":
        return print_status(config)
    if args.command == "read":
        from gateway.bringup import run_read

        return run_read(config, args.section, args.timeout)
    if args.print_config:
        print(render_ini(effective_settings(config)), end="")
        return 0
    from gateway.instance_cli import run_guarded

    return run_guarded(config, lambda: run_gateway(config, forkserver=forkserver))


def for_instance(config: GatewayConfig) -> tuple[GatewayConfig, str]:
    """The configuration transports see (state under the instance's own directory) and the
    log file to write ("" when none is configured, or when a daemon's stderr is that file)."""
    from gateway.daemon import DAEMON_LOG_ENV
    from gateway.instance import InstancePaths

    paths = InstancePaths.for_instance(config.general)
    log_file = str(paths.log_file) if config.general.log_file else ""
    if log_file and os.environ.get(DAEMON_LOG_ENV) == log_file:
        log_file = ""
    general = config.general.model_copy(
        update={"state_dir": str(paths.state_dir), "log_file": log_file})
    return dataclasses.replace(config, general=general), log_file


def run_gateway(config: GatewayConfig, notifier: Any = None,
                forkserver: ForkServer | None = None) -> int:
    """Run until SIGTERM/SIGINT; return the process exit code."""
    config, log_file = for_instance(config)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    log = logs.setup("supervisor", config.general.log_level, log_file)
    if notifier is None:
        try:
            from gateway.sd_notify import Notifier
        except ImportError:
            notifier = None
        else:
            notifier = Notifier.from_env()
    if not config.transports:
        log.error("%s has no transport sections: nothing to run", config.source)
        return EXIT_CONFIG
    if len(config.transports) == 1:
        return asyncio.run(_run_single(config, notifier, log))
    from gateway import status_http  # h11: only the process that serves it imports it
    from gateway.live import GroupPoller, LatestReadings, LiveState, group_sources
    from gateway.supervisor import Supervisor

    supervisor = Supervisor(config, notifier, forkserver)
    readings = LatestReadings()
    supervisor.frame_tap = readings.tap
    groups = GroupPoller(group_sources(config))
    live = LiveState(lambda: [s.public() for s in supervisor.slots.values()], readings, groups)

    async def main_async() -> int:
        server = await status_http.start(live, config.general.http_host, http_port(config))
        poller = asyncio.create_task(groups.run()) if server is not None else None
        try:
            return await supervisor.run()
        finally:
            if poller is not None:
                poller.cancel()
            if server is not None:
                await server.close()

    return asyncio.run(main_async())


async def _run_single(config: GatewayConfig, notifier: Any, log: logging.Logger) -> int:
    """One transport: run it right here, no processes, no pipes; same restart policy and
    heartbeat as with processes (gateway/single.py)."""
    from gateway import status_http
    from gateway.single import InProcess

    (tc,) = config.transports.values()
    tlog = logs.setup(tc.name, config.general.log_level, config.general.log_file)
    single = InProcess(tc, config.general, tlog, notifier)
    loop = asyncio.get_running_loop()

    def stop(sig: int) -> None:
        tlog.info("received %s: stopping", signal.Signals(sig).name)
        if notifier is not None:
            notifier.stopping()
        single.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    server = await status_http.start(lambda: [single.public()], config.general.http_host,
                                     http_port(config))
    try:
        code = await single.run()
    finally:
        if server is not None:
            await server.close()
    del log
    return code


def last_error_text(t: dict[str, Any]) -> str:
    """LAST ERROR as a person reads it: the error with its time, or "recovered" once the
    transport reported recovery after it (``recovered_at`` >= ``last_error_at``)."""
    message = t.get("last_error") or ""
    error_at, recovered_at = t.get("last_error_at"), t.get("recovered_at")
    if recovered_at and (not error_at or recovered_at >= error_at):
        when = time.strftime("%H:%M:%S", time.localtime(recovered_at))
        return f"recovered {when}" + (f" (was: {message})" if message else "")
    if message and error_at:
        return f"{message} ({time.strftime('%H:%M:%S', time.localtime(error_at))})"
    return message


def _no_answer_hint(config: GatewayConfig) -> str:
    """Where the gateway may be instead: the instances that run, or how to start one."""
    from gateway.claims import ClaimRegistry

    try:
        records = ClaimRegistry().records()
    except OSError:
        records = []
    n = config.general.instance
    others = [r for r in records if r.instance != n]
    if others:
        listed = ", ".join(f"{r.describe()}" for r in others)
        return (f"instance {n} is not running; running: {listed}. Ask one with "
                f"--instance N (e.g. status {config.source} --instance {others[0].instance})")
    return (f"is the gateway running? start it with: protocol-gateway {config.source} "
            f"(instance N listens on http_port + N*100: add --instance N)")


def print_status(config: GatewayConfig) -> int:
    import urllib.error  # here: the supervisor runs this module for its life and never asks
    import urllib.request

    port = http_port(config)
    if port == 0:
        print(f"{config.source}: [general] http_port = 0, the status API is off",
              file=sys.stderr)
        return 1
    url = f"http://{config.general.http_host}:{port}/api/transports"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or reason
        print(f"no gateway answering at {url} ({reason})", file=sys.stderr)
        print(f"  {_no_answer_hint(config)}", file=sys.stderr)
        return 1
    rows = [("TRANSPORT", "KIND", "STATE", "PID", "RESTARTS", "IN", "OUT", "DROPPED",
             "LAST ERROR")]
    counters: list[str] = []
    for t in body.get("transports", []):
        rows.append((t["name"], t["kind"], t["state"], str(t.get("pid") or "-"),
                     str(t["restarts"]), str(t["envelopes_in"]), str(t["envelopes_out"]),
                     str(t.get("dropped", 0)), last_error_text(t)))
        extra = t.get("counters") or {}
        shown = [f"errors {t.get('errors', 0)}"] + [f"{k} {v}" for k, v in sorted(extra.items())]
        counters.append(f"  {t['name']}: {', '.join(shown)}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    if counters:
        print("counters")
        print("\n".join(counters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
