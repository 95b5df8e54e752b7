"""Fuzz tests for the codecs and parsers that read untrusted input, one per input path (the
RAPI and QLink line codecs have theirs in test_rapi_codec.py and test_qlink_codec.py).

Each feeds arbitrary input and holds the contract: a value or the parser's own typed error,
never another exception, and never more than ~200 characters of the input echoed back.
Size and seed from the environment: PGW_FUZZ_EXAMPLES (default 150, modest for CI; try 20000
by hand) and PGW_FUZZ_SEED (unset: random, printed by hypothesis on a failure).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gateway.message import ValueSpec
from protocols import rapi_replies as rr
from protocols.qlink_project import parse_keypads, parse_loads, parse_project
from protocols.rapi_values import POLLED, Snapshot
from protocols.read_plan import ReadRequest
from protocols.registers import load_map
from transports.loadsharing.messages import MessageError, decode
from transports.modbus.device import ModbusDevice
from transports.modbus.link import explain_frame
from transports.mqtt_discovery import CommandError, parse_set_payload

F = TypeVar("F", bound=Callable[..., Any])
EXAMPLES = int(os.environ.get("PGW_FUZZ_EXAMPLES", "150"))
SEED = os.environ.get("PGW_FUZZ_SEED")
ECHO_LIMIT = 260  # a message may quote ~200 characters of input plus its own words


def fuzz(test: F) -> F:
    wrapped = settings(max_examples=EXAMPLES, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck))(test)
    return seed(int(SEED))(wrapped) if SEED else wrapped


# -- Modbus: register decoding and the range check, for every value of the shipped maps --------
DEVICES = [ModbusDevice(1, load_map(name)) for name in ("eg4_v58", "sdm630")]


@fuzz
@given(st.sampled_from(DEVICES), st.data())
def test_register_decoding_gives_a_value_or_a_rejection(device: ModbusDevice, data: Any) -> None:
    request: ReadRequest = data.draw(st.sampled_from(device.plan.requests))
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=request.count,
                               max_size=request.count))
    if request.table in ("coil", "discrete"):
        words = [bool(w & 1) for w in words]
    values = device.decode(request, words)
    assert set(values) == set(request.names)
    rejected = device.out_of_range(values)
    for name, value in values.items():
        if name in rejected:
            assert name in rejected[name]
            continue
        assert isinstance(value, bool | int | float | str)
        if isinstance(value, float):
            assert math.isfinite(value)
        spec = device.map[name]
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert spec.minimum is None or value >= spec.minimum
            assert spec.maximum is None or value <= spec.maximum


@fuzz
@given(st.binary(max_size=600), st.booleans(), st.integers(0, 255), st.integers(1, 127))
def test_explaining_a_bad_modbus_frame_never_fails(raw: bytes, tcp: bool, unit: int,
                                                   function: int) -> None:
    text = explain_frame(raw, tcp, unit, function, raw[:12])
    assert isinstance(text, str) and len(text) < 500


# -- QLink: the project export and the INI's loads/keypads lists ----------------------------
PROJECT_LINES = st.sampled_from([
    "Room: Kitchen", "Load: Pendant", "Load: 12 Pendant 1.1.2.1", "Station: 1.23 Entry",
    "Button: 1", "LdA 1.1.1.3 100", "Press 100 2", "Release", "Contractor 127", "\t", "",
    "Room:", "Load:", "Station: 99.999", "LdA x.y.z", "Button: -1",
])


@fuzz
@given(st.lists(PROJECT_LINES | st.text(max_size=80), max_size=40))
def test_a_project_export_parses_or_says_why(lines: list[str]) -> None:
    try:
        export = parse_project("\n".join(lines), "fuzz.txt")
    except ValueError as exc:
        assert len(str(exc)) < ECHO_LIMIT + 200
        return
    names = [spec.name for spec in export.loads] + [spec.name for spec in export.keypads]
    assert len(names) == len(set(names))  # duplicate names were made unique


@fuzz
@given(st.text(max_size=300))
def test_loads_and_keypads_lists_parse_or_say_why(text: str) -> None:
    for parse in (parse_loads, parse_keypads):
        try:
            parse(text)
        except ValueError:
            pass


# -- MQTT: a /set payload ----------------------------------------------------------------
SPECS = [
    None,
    ValueSpec("pilot_current", "A", writable=True, minimum=6, maximum=32, step=1),
    ValueSpec("enabled", kind="switch", writable=True),
    ValueSpec("mode", kind="select", writable=True, options=("eco", "fast", "off")),
    ValueSpec("name", kind="text", writable=True),
]
PAYLOADS = (st.binary(max_size=6000)
            | st.text(max_size=300).map(str.encode)
            | st.builds(lambda v, r: json.dumps({"value": v, "request_id": r}).encode(),
                        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                        st.none() | st.text(max_size=400)))


@fuzz
@given(PAYLOADS, st.sampled_from(SPECS))
def test_a_set_payload_is_a_write_or_a_short_refusal(payload: bytes, spec: ValueSpec | None
                                                     ) -> None:
    try:
        request = parse_set_payload(payload, spec)
    except CommandError as exc:
        assert len(str(exc)) < ECHO_LIMIT, str(exc)
        return
    assert request.request_id is None or len(request.request_id) <= 110
    if spec is not None and spec.kind == "number":
        assert spec.minimum is not None and spec.maximum is not None
        assert spec.minimum <= request.value <= spec.maximum


# -- load sharing: a peer's report ---------------------------------------------------------
REPORT = {"pgw_loadsharing": 1, "node": "10.0.0.2:8190", "seq": 3, "sent_at": 1.0,
          "status": {"demanding": True, "min_current": 6, "max_current": 32}}


def _mutations() -> st.SearchStrategy[bytes]:
    leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
    tree = st.recursive(leaf, lambda kids: st.lists(kids, max_size=4)
                        | st.dictionaries(st.text(max_size=10), kids, max_size=4), max_leaves=12)

    def mutate(key: str, value: Any) -> bytes:
        body = json.loads(json.dumps(REPORT))
        target = body["status"] if key.startswith("status.") else body
        target[key.removeprefix("status.")] = value
        return json.dumps(body).encode()

    keys = st.sampled_from(["node", "seq", "sent_at", "status", "status.demanding",
                            "status.min_current", "status.max_current", "status.amp",
                            "pgw_loadsharing", "group_hash", "led"])
    return st.builds(mutate, keys, tree) | st.binary(max_size=2000)


@fuzz
@given(_mutations())
def test_a_peer_report_decodes_or_is_a_message_error(raw: bytes) -> None:
    try:
        report = decode(raw)
    except MessageError as exc:
        assert len(str(exc)) < ECHO_LIMIT + 200
        return
    assert report.status.min_current >= 0 and report.status.max_current >= 0


# -- RAPI: a reply's tokens into the snapshot (the range checks included) -----------------
TOKENS = st.lists(st.sampled_from(["0", "1", "2", "03", "ff", "-1", "999", "80", "32", "6",
                                   "x", "", "0100", "240000", "65535", "-2560"])
                  | st.text(max_size=8), max_size=5)


@fuzz
@given(st.lists(st.tuples(st.sampled_from([*POLLED, "GY"]), TOKENS), max_size=12))
def test_rapi_replies_update_the_snapshot_or_are_bad_replies(replies: list[Any]) -> None:
    snap = Snapshot()
    for name, params in replies:
        try:
            snap.apply(name, params)
        except rr.RapiReplyError:
            continue
    reading = snap.reading()
    limit = snap.current_limit()
    assert 0 <= reading.get("current_capacity", 0) <= limit
    assert 0 <= reading.get("charging_current", 0) <= limit * 1.1
