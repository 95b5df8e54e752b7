#!/usr/bin/env python3
"""Take docs/status-page.png: the demo's status page in headless Chromium.

    python scripts/screenshot.py [--instance 9] [--out docs/status-page.png]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytests.browser import Browser  # noqa: E402  (the tests' DevTools driver)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instance", type=int, default=9)
    parser.add_argument("--out", default=str(ROOT / "docs" / "status-page.png"))
    parser.add_argument("--settle", type=float, default=40.0,
                        help="seconds to let the demo run before the picture")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pgw-shot-"))
    env = dict(os.environ, PGW_RUN_DIR=str(work / "run"))
    demo = subprocess.Popen([sys.executable, str(ROOT / "protocol_gateway.py"), "demo", "--dir",
                             str(work), "--instance", str(args.instance), "--refresh", "0"],
                            stdout=open(work / "demo.log", "w"), stderr=subprocess.STDOUT,
                            env=env)
    try:
        time.sleep(args.settle)
        if demo.poll() is not None:
            print((work / "demo.log").read_text(), file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{8180 + 100 * args.instance}/"
        with Browser(url, 1280, 1180) as page:
            time.sleep(3)
            page.screenshot(Path(args.out))
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(60)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
