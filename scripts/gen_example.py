#!/usr/bin/env python3
"""Assemble config.ini.example from docs/transports/*.ini, so samples live beside their docs.

Each sample runs alone (a test loads modbus_bus.ini as it is), so its ``# bridge = ...`` line
is a comment there; in config.ini.example, where every output section exists, those lines are
switched on: the example moves data when copied.

    python scripts/gen_example.py          # rewrite config.ini.example
    python scripts/gen_example.py --check  # exit 1 if it is out of date (a test runs this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "docs" / "transports"


BRIDGE = re.compile(r"^# (bridge = .*)$", re.MULTILINE)


def build() -> str:
    parts = [(SAMPLES / "general.ini").read_text().rstrip() + "\n"]
    for sample in sorted(SAMPLES.glob("*.ini")):
        if sample.name != "general.ini":
            text = BRIDGE.sub(r"\1", sample.read_text().rstrip())
            parts.append(f"# ---- from docs/transports/{sample.name}\n{text}\n")
    return "\n".join(parts)


def main() -> int:
    text = build()
    target = ROOT / "config.ini.example"
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != text:
            print("config.ini.example is out of date: run python scripts/gen_example.py")
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
