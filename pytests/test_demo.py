"""The newcomer's first command: the demo starts every simulator and reads each of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway.demo import PARTS
from pytests.gateway_proc import read_jsonl
from pytests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_demo_reads_every_simulated_device(tmp_path: Path) -> None:
    env = dict(os.environ, PGW_RUN_DIR=str(tmp_path / "run"))
    log = open(tmp_path / "demo.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "protocol_gateway.py"), "demo", "--dir", str(tmp_path),
         "--instance", "7"], stdout=log, stderr=subprocess.STDOUT, env=env)
    readings = tmp_path / "readings.jsonl"
    expected = {part.name for part in PARTS}
    try:
        wait_for(lambda: expected <= {r["source_transport"] for r in read_jsonl(readings)
                                      if r["kind"] == "reading"}, timeout=90, interval=0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "demo.log").read_text()[-3000:]
    text = (tmp_path / "demo.log").read_text()
    assert "Traceback" not in text
