"""A real headless Chromium driven over the DevTools protocol, for testing web pages.

Debian's ``chromium`` (/usr/bin/chromium) with a fresh profile, started with
``--remote-debugging-port=0``: the port it chose is read from ``DevToolsActivePort`` in the
profile, and the page is driven over a WebSocket (the ``websockets`` dependency) with
``Runtime.evaluate`` and ``Page.captureScreenshot``. No Selenium, no driver binary to match.
A missing browser skips the test, naming the Debian package.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from pytests.helpers import wait_for

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name) or (f"/usr/bin/{name}"
                                       if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; ``with Browser(url, size) as page: ...``."""

    def __init__(self, url: str, width: int = 1280, height: int = 900) -> None:
        binary = chromium_binary()
        if binary is None:
            pytest.skip("chromium not installed (apt-get install chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="pgw-chromium-"))
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ids = itertools.count(1)
        self.ws: ClientConnection | None = None
        self.url = url

    def __enter__(self) -> Browser:
        active = self.profile / "DevToolsActivePort"
        wait_for(lambda: active.exists() and active.read_text().strip(), timeout=60,
                 interval=0.2)
        port = int(active.read_text().split()[0])
        pages = wait_for(lambda: [t for t in self._targets(port) if t["type"] == "page"],
                         timeout=30, interval=0.2)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20,
                          open_timeout=30)
        self.call("Page.enable")
        self.call("Page.navigate", url=self.url)
        return self

    def __exit__(self, *_: object) -> None:
        if self.ws is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    @staticmethod
    def _targets(port: int) -> list[dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                value = json.load(r)
        except OSError:
            return []
        return value if isinstance(value, list) else []

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the window."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip=clip)["data"]
        path.write_bytes(base64.b64decode(data))
