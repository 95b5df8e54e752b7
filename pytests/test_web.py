"""The status page in a real headless Chromium, /api/state and /metrics of a real gateway.

The page must load from the gateway alone, show every transport, and follow a kill -9 of a
transport through its event stream (no reload: a marker set on the page before the kill is
still there after it).
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pytests.browser import Browser
from pytests.gateway_proc import GatewayProcess
from pytests.helpers import wait_for

SECTIONS = """
[house]
transport = system
read_interval = 0.5
bridge = out

[garage]
transport = system
read_interval = 0.5
bridge = out

[out]
transport = jsonl_out
path = {tmp}/out.jsonl
"""


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return bytes(response.read())


def _state(port: int) -> dict[str, Any]:
    return dict(json.loads(_get(port, "/api/state")))


def _rows(page: Browser) -> dict[str, dict[str, str]]:
    return dict(page.evaluate("""Object.fromEntries(
        [...document.querySelectorAll('#transports tr[data-transport]')].map(tr => [
          tr.dataset.transport,
          {state: tr.dataset.state, restarts: tr.querySelector('[data-field=restarts]')
             .textContent, text: tr.textContent}]))""") or {})


def test_page_shows_every_transport_and_follows_a_kill(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, SECTIONS.format(tmp=tmp_path))
    try:
        table = gw.wait_all_running(timeout=60)
        with Browser(f"http://127.0.0.1:{gw.port}/") as page:
            wait_for(lambda: set(_rows(page)) == {"house", "garage", "out"}, timeout=60,
                     interval=0.3)
            assert all(r["state"] == "running" for r in _rows(page).values())
            # devices arrive through the bridge tap
            wait_for(lambda: page.evaluate(
                "document.querySelector('#devices tr[data-device=\"house/house\"]') !== null"),
                timeout=60, interval=0.3)
            assert page.evaluate("document.getElementById('conn').className") == "live"
            page.evaluate("window.notReloaded = true")
            os.kill(table["garage"]["pid"], signal.SIGKILL)
            row = wait_for(lambda: (r := _rows(page).get("garage")) and r["restarts"] == "1"
                           and "SIGKILL" in r["text"] and r, timeout=60, interval=0.3)
            assert row["state"] in ("running", "restarting")
            assert page.evaluate("window.notReloaded === true")
            assert _rows(page)["house"]["restarts"] == "0"
    finally:
        code = gw.stop()
    assert code == 0, gw.log_text()[-3000:]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_and_state_follow_the_transports(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, SECTIONS.format(tmp=tmp_path))
    try:
        table = gw.wait_all_running(timeout=60)
        wait_for(lambda: {d["transport"] for d in _state(gw.port)["devices"]}
                 >= {"house", "garage"}, timeout=60, interval=0.3)
        samples = _samples(_get(gw.port, "/metrics").decode())
        for name, kind in (("house", "system"), ("garage", "system"), ("out", "jsonl_out")):
            labels = (("kind", kind), ("transport", name))
            assert samples[("pgw_transport_up", labels)] == 1.0
            assert samples[("pgw_transport_restarts_total", labels)] == 0.0
        age = samples[("pgw_device_last_reading_age_seconds",
                       (("device", "house"), ("transport", "house")))]
        assert 0 <= age < 60
        os.kill(table["house"]["pid"], signal.SIGKILL)

        def restarted() -> bool:
            s = _samples(_get(gw.port, "/metrics").decode())
            labels = (("kind", "system"), ("transport", "house"))
            return s[("pgw_transport_restarts_total", labels)] == 1.0 and s[
                ("pgw_transport_up", labels)] == 1.0

        wait_for(restarted, timeout=60, interval=0.3)
        envelopes_in = _samples(_get(gw.port, "/metrics").decode())[
            ("pgw_transport_envelopes_in_total", (("kind", "jsonl_out"), ("transport", "out")))]
        assert envelopes_in > 0
        state = _state(gw.port)
        house = next(t for t in state["transports"] if t["name"] == "house")
        assert "SIGKILL" in house["last_error"]
        assert isinstance(house["counters"], dict)
    finally:
        code = gw.stop()
    assert code == 0, gw.log_text()[-3000:]
