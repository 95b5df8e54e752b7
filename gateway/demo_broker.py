"""The demo's own MQTT broker: Mosquitto when installed, else amqtt's broker in a process.

Mosquitto is what a Home Assistant installation runs, so it is preferred; amqtt (an asyncio
MQTT broker on PyPI, kept up) makes ``pip install`` alone enough for a demo with MQTT. Both
listen on loopback only, anonymous, without persistence: a demo's broker holds nothing worth
keeping. ``python -m gateway.demo_broker PORT`` runs the amqtt one.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import sys
from pathlib import Path

_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in _SEARCH:
        candidate = Path(folder) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


#: ``PGW_DEMO_BROKER=amqtt`` uses the embedded broker even where Mosquitto is installed.
BROKER_ENV = "PGW_DEMO_BROKER"


def broker_command(port: int, work: Path, python: str = sys.executable) -> tuple[list[str], str]:
    """(argv, name) of the broker to start on 127.0.0.1:``port``."""
    binary = None if os.environ.get(BROKER_ENV) == "amqtt" else mosquitto_binary()
    if binary is not None:
        conf = work / "mosquitto.conf"
        conf.write_text("\n".join([
            f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
            # as root, Mosquitto would switch to a "mosquitto" user that may not exist
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "log_dest stderr", "log_type error", "log_type warning"]) + "\n")
        return [binary, "-c", str(conf)], "mosquitto"
    return [python, "-m", "gateway.demo_broker", str(port)], "amqtt"


async def _serve_amqtt(port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {
            "allow_anonymous": True}},
    }
    broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m gateway.demo_broker PORT", file=sys.stderr)
        return 2
    asyncio.run(_serve_amqtt(int(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
