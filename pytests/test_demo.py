"""The newcomer's first command: the demo starts every simulator and reads each of them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from gateway.demo import PARTS
from pytests.gateway_proc import read_jsonl
from pytests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def _openevse_led(port: int, controller: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/sim/state", timeout=5) as r:
            state = json.loads(r.read())
    except (OSError, ValueError):
        return False
    return bool(state["controller_host"] == controller and state["frames"] > 0)


def test_demo_reads_every_simulated_device(tmp_path: Path) -> None:
    env = dict(os.environ, PGW_RUN_DIR=str(tmp_path / "run"))
    log = open(tmp_path / "demo.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "protocol_gateway.py"), "demo", "--dir", str(tmp_path),
         "--instance", "7"], stdout=log, stderr=subprocess.STDOUT, env=env)
    readings = tmp_path / "readings.jsonl"
    expected = {part.name for part in PARTS if part.section(700, tmp_path)}
    try:
        wait_for(lambda: expected <= {r["source_transport"] for r in read_jsonl(readings)
                                      if r["kind"] == "reading"}, timeout=90, interval=0.5)
        # the simulated OpenEVSE charger (no section of its own) is led by the demo's
        # load-sharing node: it names it as its controller and obeys its frames
        wait_for(lambda: _openevse_led(8081 + 700, f"127.0.0.1:{8190 + 700}"), timeout=60,
                 interval=0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "demo.log").read_text()[-3000:]
    text = (tmp_path / "demo.log").read_text()
    assert "Traceback" not in text
