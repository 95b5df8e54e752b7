"""The sample configuration cannot drift from the code: it loads, and covers every kind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import transports
from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_example_is_generated_from_the_per_transport_samples() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_example.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_example_loads_through_the_real_loader() -> None:
    config = load_config(ROOT / "config.ini.example", environ={})
    assert config.transports


def test_every_registered_kind_has_a_page_and_a_sample_section() -> None:
    config = load_config(ROOT / "config.ini.example", environ={})
    sampled = {t.kind for t in config.transports.values()}
    for kind, cls in transports.load_all().items():
        module = cls.__module__.split(".")[1]
        pages = [ROOT / "docs" / "transports" / f"{kind}.md",
                 ROOT / "docs" / "transports" / f"{module}.md"]
        assert any(p.exists() for p in pages), f"{kind}: no docs/transports/{kind}.md"
        assert kind in sampled, f"{kind}: no sample section in config.ini.example"
