"""``check`` verifies a loadsharing section's ``charger =`` at load (issue 17): the section exists,
is a Charger, bridges back, and no other loadsharing section names it; errors name file, line,
section and key and exit 2. A clean reference makes the loadsharing section the charger's owner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent

CHARGER = """
[openevse]
transport = rapi_serial
port = socket://127.0.0.1:8023
bridge = {bridge}
"""
NODE = """
[{name}]
transport = loadsharing
loadsharing_enabled = true
loadsharing_group_max_current = 32
charger = {charger}
"""


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.ini"
    path.write_text(text)
    return subprocess.run([sys.executable, str(ROOT / "protocol_gateway.py"), "check", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def test_a_typo_in_charger_is_refused_with_file_line_section_and_key(tmp_path: Path) -> None:
    text = CHARGER.format(bridge="ls") + NODE.format(name="ls", charger="openevse_typo")
    out = check(tmp_path, text)
    assert out.returncode == 2, out
    line = line_of(text, "charger = openevse_typo")
    assert f"config.ini:{line}: [ls] charger: names section 'openevse_typo', which does not " \
           "exist" in out.stderr + out.stdout


def test_a_charger_that_does_not_bridge_back_is_refused(tmp_path: Path) -> None:
    text = CHARGER.format(bridge="") + NODE.format(name="ls", charger="openevse")
    out = check(tmp_path, text)
    assert out.returncode == 2
    assert f"config.ini:{line_of(text, 'charger =')}: [ls] charger: names [openevse], which " \
           "does not bridge back" in out.stderr + out.stdout


def test_a_section_that_is_no_charger_is_refused(tmp_path: Path) -> None:
    text = CHARGER.format(bridge="ls") + NODE.format(name="ls", charger="sink") + """
[sink]
transport = jsonl_out
path = out.jsonl
bridge = ls
"""
    out = check(tmp_path, text)
    assert out.returncode == 2
    assert "[ls] charger: names [sink], a jsonl_out transport, which is not a charger " \
           "(transports that are: rapi_serial)" in out.stderr + out.stdout


def test_two_loadsharing_sections_cannot_share_a_charger(tmp_path: Path) -> None:
    text = (CHARGER.format(bridge="ls1, ls2") + NODE.format(name="ls1", charger="openevse")
            + NODE.format(name="ls2", charger="openevse"))
    out = check(tmp_path, text)
    assert out.returncode == 2
    assert "[ls2] charger: [openevse] is already the charger of [ls1]" in out.stderr + out.stdout


def test_charger_owner_is_not_for_the_file(tmp_path: Path) -> None:
    text = CHARGER.format(bridge="ls") + "charger_owner = mqtt\n" + NODE.format(
        name="ls", charger="openevse")
    out = check(tmp_path, text)
    assert out.returncode == 2
    assert "[openevse] charger_owner: is set at load from [ls] charger =" in out.stderr + out.stdout


def test_a_clean_reference_makes_the_node_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text(CHARGER.format(bridge="ls") + NODE.format(name="ls", charger="openevse"))
    config = load_config(path, environ={})
    assert config.transports["openevse"].settings.charger_owner == "ls"  # type: ignore[attr-defined]
    # a disabled node owns nothing: writes reach the charger as before
    path.write_text(CHARGER.format(bridge="ls") + NODE.format(name="ls", charger="openevse")
                    .replace("loadsharing_enabled = true", "loadsharing_enabled = false"))
    config = load_config(path, environ={})
    assert config.transports["openevse"].settings.charger_owner == ""  # type: ignore[attr-defined]


def test_a_token_without_a_secret_is_warned_about(tmp_path: Path) -> None:
    text = CHARGER.format(bridge="ls") + NODE.format(name="ls", charger="openevse") + (
        "node_listen = 127.0.0.1:18190\nloadsharing_api_token = tok\n")
    out = check(tmp_path, text)
    assert out.returncode == 0, out.stderr
    assert "[ls] loadsharing_api_token: a token without loadsharing_group_secret" in (
        out.stderr + out.stdout)


def test_non_finite_numbers_are_refused(tmp_path: Path) -> None:
    for bad in ("inf", "nan", "1e309"):
        text = CHARGER.format(bridge="ls") + NODE.format(name="ls", charger="openevse").replace(
            "loadsharing_group_max_current = 32", f"loadsharing_group_max_current = {bad}")
        out = check(tmp_path, text)
        assert out.returncode == 2, (bad, out.stdout)
        assert "[ls] loadsharing_group_max_current" in out.stderr + out.stdout


def test_a_charger_read_slower_than_the_response_time_is_warned_about(tmp_path: Path) -> None:
    text = CHARGER.format(bridge="ls") + "read_interval = 10\n" + NODE.format(
        name="ls", charger="openevse")
    out = check(tmp_path, text)
    assert out.returncode == 0, out.stderr
    assert "[openevse] read_interval 10 s is longer than loadsharing_response_time 5 s" in (
        out.stderr + out.stdout)
