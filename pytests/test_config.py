"""Configuration: every error found and named; precedence; secrets masked; no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, effective_settings, load_config, render_ini

ROOT = Path(__file__).resolve().parent.parent


def check(tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.ini"
    path.write_text(text)
    return subprocess.run([sys.executable, str(ROOT / "protocol_gateway.py"), "check", str(path),
                           *args], capture_output=True, text=True, timeout=60, env=env)


def problems(tmp_path: Path, text: str, **kw) -> list[str]:
    path = tmp_path / "c.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={}, **kw)
    return [str(p) for p in info.value.problems]


def test_valid_file_checks_ok(tmp_path: Path) -> None:
    result = check(tmp_path, "[s]\ntransport = system\nbridge = o\n[o]\ntransport = jsonl_out\n")
    assert result.returncode == 0, result.stderr
    assert "OK (2 transports" in result.stdout


def test_every_error_is_reported_with_file_section_key_and_line(tmp_path: Path) -> None:
    text = """[general]
http_port = eighty

[a]
transport = sytem
[b]
transport = system
read_interval = soon
bridge = nowhere
colour = blue
[c]
path = x
"""
    result = check(tmp_path, text)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    err = result.stderr
    assert "c.ini:2: [general] http_port: Input should be a valid integer" in err
    assert "got 'eighty'" in err
    assert "[a] transport: unknown transport kind 'sytem' (did you mean 'system'?)" in err
    assert "c.ini:8: [b] read_interval:" in err and "got 'soon'" in err
    assert "[b] bridge: names section 'nowhere', which does not exist" in err
    assert "[b] colour: unknown key" in err
    assert "[c] transport: missing" in err
    assert "6 problem(s)" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("transport = system\n", "a key before any [section]"),
        ("[a]\ntransport = system\n[a]\ntransport = system\n", "section appears twice"),
        ("[a]\ntransport = system\ntransport = system\n", "key appears twice"),
        ("[a]\ntransport = system\nthis line has no equals sign\n", "cannot parse line"),
        ("\x00\xff[", "a key before any [section]"),
    ],
)
def test_malformed_ini_is_an_error_not_a_traceback(tmp_path: Path, text: str, message: str
                                                   ) -> None:
    result = check(tmp_path, text)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr


def test_missing_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "protocol_gateway.py"), "check",
                             str(tmp_path / "nope.ini")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "file not found" in result.stderr


def test_two_sections_claiming_one_resource(tmp_path: Path) -> None:
    found = problems(tmp_path, "[a]\ntransport = jsonl_out\npath = x.jsonl\n"
                               "[b]\ntransport = jsonl_out\npath = ./x.jsonl\n")
    assert any("[b]" in p and "already used by [a]" in p for p in found)


def test_self_bridge_rejected(tmp_path: Path) -> None:
    found = problems(tmp_path, "[a]\ntransport = system\nbridge = a\n")
    assert any("cannot bridge to itself" in p for p in found)


def test_precedence_file_then_environment_then_set(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[general]\nlog_level = INFO\n[transport.0]\ntransport = system\n"
                    "read_interval = 10\n")
    cfg = load_config(path, environ={})
    assert cfg.transports["transport.0"].settings.read_interval == 10
    env = {"PGW_TRANSPORT_0_READ_INTERVAL": "20", "PGW_GENERAL_LOG_LEVEL": "DEBUG"}
    cfg = load_config(path, environ=env)
    assert cfg.transports["transport.0"].settings.read_interval == 20
    assert cfg.general.log_level == "DEBUG"
    cfg = load_config(path, environ=env, sets=["transport.0.read_interval=30"])
    assert cfg.transports["transport.0"].settings.read_interval == 30


def test_environment_naming_an_unknown_section(tmp_path: Path) -> None:
    path = tmp_path / "c.ini"
    path.write_text("[a]\ntransport = system\n")
    cfg = load_config(path, environ={"PGW_NOSUCH_KEY": "1", "PGW_PLUGINS": ""})
    assert [w.key for w in cfg.warnings if w.source == "environment"] == ["PGW_NOSUCH_KEY"]


def test_bad_set_syntax(tmp_path: Path) -> None:
    found = problems(tmp_path, "[a]\ntransport = system\n", sets=["read_interval"])
    assert any("expected section.key=value" in p for p in found)


def test_print_config_shows_effective_values(tmp_path: Path) -> None:
    result = check(tmp_path, "[a]\ntransport = system\n")
    assert result.returncode == 0
    path = tmp_path / "c.ini"
    out = subprocess.run([sys.executable, str(ROOT / "protocol_gateway.py"), "run", str(path),
                          "--print-config", "--set", "a.read_interval=7"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[a]\ntransport = system" in out.stdout
    assert "read_interval = 7.0" in out.stdout
    assert "restart_backoff_max = 30.0" in out.stdout


def test_secrets_are_masked() -> None:
    from pydantic import Field

    from gateway.config import GatewayConfig, TransportConfig
    from gateway.settings import GeneralSettings, Secret, TransportSettings

    class WithSecret(TransportSettings):
        password: Secret = Field(default=Secret(""))

    cfg = GatewayConfig("x", GeneralSettings(), {
        "m": TransportConfig("m", "x", WithSecret(transport="x", password="hunter2"))})
    text = render_ini(effective_settings(cfg))
    assert "hunter2" not in text and "password = ***" in text
    assert "hunter2" not in repr(cfg)


def test_set_with_a_dotted_key_splits_after_the_known_section(tmp_path: Path) -> None:
    from gateway.config import apply_overrides

    raw = {"rs485_bus": {"transport": "modbus_bus"}, "transport.0": {}}
    assert apply_overrides(raw, {}, ["rs485_bus.meter1.unit=2", "transport.0.address=3",
                                     "general.log_level=DEBUG"], []) == []
    assert raw["rs485_bus"]["meter1.unit"] == "2"
    assert raw["transport.0"]["address"] == "3"
    assert raw["general"]["log_level"] == "DEBUG"


def test_unknown_kind_still_checks_the_common_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, "[a]\ntransport = modbus_warp\nread_interval = ten\n"
                     "bridge = nowhere\n")
    assert any("[a] transport: unknown transport kind 'modbus_warp'" in p for p in found)
    assert any(":3: [a] read_interval:" in p and "got 'ten'" in p for p in found), found
    assert any("[a] bridge: names section 'nowhere'" in p for p in found), found


def test_status_page_port_is_claimed_like_any_listening_port(tmp_path: Path) -> None:
    found = problems(tmp_path, """[general]
http_port = 8190

[charger]
transport = rapi_serial
port = socket://127.0.0.1:8023
bridge = ls

[ls]
transport = loadsharing
loadsharing_enabled = true
charger = charger
loadsharing_group_max_current = 32
node_listen = 127.0.0.1:8190
bridge = charger
""")
    assert any("[ls]: tcp listen 127.0.0.1:8190 is already used by [general] http_port" in p
               for p in found), found


def test_missing_serial_device_is_a_clear_warning(tmp_path: Path) -> None:
    result = check(tmp_path, "[m]\ntransport = modbus_rtu\nprotocol_version = sdm630\n"
                   "port = /dev/ttyNOSUCH7\nbridge = o\n[o]\ntransport = jsonl_out\n")
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr
    assert "[m] port: serial device /dev/ttyNOSUCH7 does not exist now" in result.stderr
    assert "OK (2 transports" in result.stdout


def test_an_override_is_named_as_the_source_of_its_error(tmp_path: Path) -> None:
    text = "[a]\ntransport = system\nbridge = o\n[o]\ntransport = jsonl_out\n"
    result = check(tmp_path, text, "--set", "a.read_interval=ten")
    assert result.returncode == 2
    assert "--set a.read_interval: [a] read_interval:" in result.stderr, result.stderr
    assert "c.ini:" not in result.stderr  # not placed at a line of the file
    env = {**os.environ, "PGW_A_READ_INTERVAL": "soon"}
    result = check(tmp_path, text, env=env)
    assert "environment PGW_A_READ_INTERVAL: [a] read_interval:" in result.stderr, result.stderr


def test_an_unparsable_line_is_shown_by_number_only(tmp_path: Path) -> None:
    result = check(tmp_path, "[mqtt]\ntransport = mqtt\nhunter2\\tsecret\\x00\n")
    assert result.returncode == 2
    assert "c.ini:3: cannot parse line 3" in result.stderr
    assert "hunter2" not in result.stderr and "\\\\" not in result.stderr


def test_a_section_that_moves_nothing_is_warned_about(tmp_path: Path) -> None:
    result = check(tmp_path, "[a]\ntransport = system\n[o]\ntransport = jsonl_out\n")
    assert result.returncode == 0
    assert "[a] bridge: receives nothing and sends nowhere" in result.stderr
    assert "[o] bridge: receives nothing and sends nowhere" in result.stderr
    result = check(tmp_path, "[a]\ntransport = system\nbridge = o\n[o]\ntransport = jsonl_out\n")
    assert "receives nothing" not in result.stderr


def test_example_moves_data_when_copied() -> None:
    """config.ini.example as-is: every input bridged to the outputs, the load-sharing node fed
    by its charger, nothing isolated (only the simulators' PTYs may be missing now)."""
    config = load_config(ROOT / "config.ini.example", environ={})
    assert all("serial device" in w.message for w in config.warnings), config.warnings
    outputs = {"jsonl", "mqtt", "influxdb_output"}
    for name, tc in config.transports.items():
        if name not in outputs:
            assert outputs <= set(tc.settings.bridge), name
    charger = config.transports["loadsharing"].settings.charger  # type: ignore[attr-defined]
    assert "loadsharing" in config.transports[charger].settings.bridge
