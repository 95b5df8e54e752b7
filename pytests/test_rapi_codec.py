"""The RAPI codec, reply decoding, command planning and the simulator's models: no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import rapi_replies as rr
from protocols.rapi import (
    RapiCommandError,
    RapiFrame,
    RapiGarbage,
    RapiParser,
    encode_command,
    encode_line,
    encode_reply,
    parse_line,
)
from protocols.rapi_values import (
    CommandRejected,
    Snapshot,
    plan_command,
    step_outcome,
    value_specs,
)
from simulators.ev_model import EvModel
from simulators.evse_model import EvseModel
from simulators.rapi_responder import RapiResponder

# -- framing -----------------------------------------------------------------------------


def test_checksums_match_the_firmware_examples() -> None:
    assert encode_line("GS") == b"$GS^30\r"
    assert encode_line("FD", checksum="sum") == b"$FD*AE\r"
    assert encode_command("SC", 16, "V", seq=0x12).startswith(b"$SC 16 V :12^")


def test_lower_case_checksum_and_sum_form_are_accepted() -> None:
    frame = parse_line(b"$GS^30".lower().replace(b"$gs", b"$GS"))
    assert isinstance(frame, RapiFrame) and frame.name == "GS"
    frame = parse_line(b"$FD*AE")
    assert isinstance(frame, RapiFrame) and frame.checksum == "sum"


def test_command_over_31_characters_is_refused_before_sending() -> None:
    encode_command("SY", "65535", "255", seq=0xFF)  # long but fits
    with pytest.raises(RapiCommandError, match="31"):
        encode_command("FF", "X" * 30)
    with pytest.raises(RapiCommandError, match="tokens"):
        encode_command("FF", *"1234567890")
    with pytest.raises(RapiCommandError):
        encode_command("SC", "1 6")  # a space would split the token
    with pytest.raises(RapiCommandError):
        encode_command("GS", seq=0)  # 00 is not a sequence id


def test_sequence_id_is_parsed_and_left_out_of_params() -> None:
    frame = parse_line(encode_reply(True, "16", seq=0xA5)[:-1])
    assert isinstance(frame, RapiFrame)
    assert (frame.name, frame.params, frame.seq, frame.ok) == ("OK", ("16",), 0xA5, True)
    frame = parse_line(encode_reply(False)[:-1])
    assert isinstance(frame, RapiFrame) and frame.seq is None and not frame.ok


TOKEN = st.text(alphabet="0123456789abcdefABCDEF.-_+", min_size=1, max_size=8)
NAME = st.sampled_from(["OK", "NK", "AT", "GS", "SC", "SY", "GV", "AB"])


@given(NAME, st.lists(TOKEN, max_size=6), st.none() | st.integers(1, 255))
def test_encode_parse_round_trip(name: str, params: list[str], seq: int | None) -> None:
    events = RapiParser().feed(encode_line(name, params, seq))
    assert events == [
        RapiFrame(name, tuple(params), seq, "xor", encode_line(name, params, seq)[:-1])
    ]


LINES = st.lists(
    st.one_of(
        st.builds(encode_line, NAME, st.lists(TOKEN, max_size=4), st.none() | st.integers(1, 255)),
        st.binary(max_size=40),
        st.just(b"$OK 1 2^00\r"),
        st.just(b"$AT 03 03 16"),
    ),
    max_size=12,
)


@given(LINES, st.data())
def test_any_split_of_the_bytes_gives_the_same_events(
    chunks: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(chunks)
    whole = RapiParser().feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    parser = RapiParser()
    pieces: list[RapiFrame | RapiGarbage] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        pieces += parser.feed(stream[start:end])
    assert pieces == whole


@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(noise: bytes) -> None:
    parser = RapiParser()
    parser.feed(noise)
    # whatever came before, a CR and a good line afterwards come through
    events = parser.feed(b"\r" + encode_reply(True, "1"))
    assert isinstance(events[-1], RapiFrame) and events[-1].params == ("1",)


def test_garbage_is_reported_by_reason_and_good_lines_survive() -> None:
    parser = RapiParser()
    good = encode_reply(True, "7")
    stream = (
        b"\x00\xffnoise"
        + good
        + b"$OK 1^00\r"  # bad checksum
        + b"$OK 2 3"  # truncated by the next '$'
        + good
        + b"$"
        + b"X" * 10_000  # 10 kB without CR
        + b"\r"
        + good
        + b"$OK 5\r"  # no checksum
    )
    events = parser.feed(stream)
    reasons = [e.reason for e in events if isinstance(e, RapiGarbage)]
    frames = [e for e in events if isinstance(e, RapiFrame)]
    assert reasons == ["noise", "bad_checksum", "truncated", "too_long", "no_checksum"]
    assert len(frames) == 3 and all(f.params == ("7",) for f in frames)
    too_long = next(e for e in events if isinstance(e, RapiGarbage) and e.reason == "too_long")
    assert len(too_long.raw) <= 256
    assert "\\x00\\xff" in next(e for e in events if isinstance(e, RapiGarbage)).describe()


# -- replies -----------------------------------------------------------------------------


def test_status_formats() -> None:
    s = rr.parse_status(("03", "125", "03", "0140"))
    assert (s.state_name, s.elapsed_s, s.pilot_state, s.vflags) == ("charging", 125, 3, 0x140)
    old = rr.parse_status(("3", "125"), (4, 0, 1))
    assert (old.state, old.elapsed_s, old.vflags) == (3, 125, None)
    assert rr.parse_status(("254", "7")).state_name == "sleeping"  # 2 tokens: old form anyway
    extra = rr.parse_status(("fe", "0", "02", "0100", "extra", "tokens"))
    assert extra.state_name == "sleeping"
    with pytest.raises(rr.RapiReplyError):
        rr.parse_status(("zz", "1", "2", "3"))


def test_values_have_units() -> None:
    assert rr.parse_charging(("16000", "240000")) == rr.Charging(16.0, 240.0)
    assert rr.parse_charging(("16000", "240000")).power_w == 3840.0
    assert rr.parse_charging(("-1", "120000")).current_a is None
    t = rr.parse_temperatures(("250", "-2560", "-2560"))
    assert (t.best_c, t.mcp9808_c) == (25.0, None)
    e = rr.parse_energy(("3600000", "12345"))
    assert (e.session_kwh, e.total_kwh) == (1.0, 12.345)
    assert rr.parse_ev_connected(("2",)) is None and rr.parse_ev_connected(("1",)) is True
    assert rr.parse_fault_counters(("ff", "1", "a")) == rr.FaultCounters(255, 1, 10)
    r = rr.parse_current_range(("6", "48", "16", "32"))
    assert (r.min_a, r.max_a, r.capacity_a, r.ceiling_a) == (6, 48, 16, 32)
    assert rr.parse_current_range(("6", "80")).ceiling_a == 80
    assert rr.parse_capacity(("32", "0001")).service_level == 2
    assert rr.parse_async_state(("03", "03", "16", "0140")) == rr.AsyncState(3, 3, 16, 0x140)
    assert rr.parse_heartbeat(("10", "6", "2")).trigger == 2
    assert rr.parse_set_current(()) is None and rr.parse_set_current(("6",)) == 6
    assert rr.parse_version(("8.2.3", "5.2.1")).rapi_tuple == (5, 2, 1)
    assert rr.vflag_names(0x0140) == ("charging_on", "ev_connected")
    assert rr.state_name(0x42) == "unknown_42"


# -- values and commands -----------------------------------------------------------------


def test_snapshot_merges_poll_and_async_state() -> None:
    snap = Snapshot()
    snap.apply_status(rr.parse_status(("01", "0", "01", "0000")))
    snap.charging = rr.Charging(12.0, 240.0)
    snap.apply_range(rr.parse_current_range(("6", "48", "16", "32")))
    reading = snap.reading()
    assert reading["state"] == "not_connected" and reading["pilot_current"] == 16
    assert reading["max_current"] == 32 and reading["power"] == 2880.0
    snap.apply_async(rr.AsyncState(0x02, 0x02, 20, 0x0100))
    reading = snap.reading()
    assert reading["state"] == "connected" and reading["vehicle_connected"] is True
    assert reading["pilot_current"] == 20 and reading["charging_current"] == 0.0
    specs = {s.name: s for s in value_specs(snap.current_range)}
    assert specs["pilot_current"].writable and specs["pilot_current"].maximum == 32
    assert specs["enabled"].kind == "switch" and specs["power"].unit == "W"


def test_command_plans() -> None:
    step = plan_command({"command": "set_current", "amps": 16.7}).steps[0]
    assert (step.name, step.params) == ("SC", ("16", "V"))
    step = plan_command({"command": "set_current", "amps": 16, "volatile": False}).steps[0]
    assert step.params == ("16",)
    assert plan_command({"command": "disable"}).steps[0].name == "FD"
    assert plan_command({"command": "set_charge_limit", "kwh": 5}).steps[0].params == ("5",)
    hb = plan_command({"command": "heartbeat", "interval": 30, "amps": 6})
    assert hb.steps[0].params == ("30", "6") and hb.pulse_interval == 30
    assert plan_command({"command": "heartbeat"}).steps[0].params == ()
    write = plan_command({"command": "write", "values": {"pilot_current": 10, "enabled": "off"}})
    assert [s.name for s in write.steps] == ["SC", "FD"]
    for bad in (
        {"command": "set_current"},
        {"command": "set_current", "amps": "lots"},
        {"command": "set_current", "amps": float("nan")},
        {"command": "set_current", "amps": True},
        {"command": "write", "values": {"state": 1}},
        {"command": "write", "values": {"enabled": "maybe"}},
    ):
        with pytest.raises(CommandRejected):
            plan_command(bad)
    sc = plan_command({"command": "set_current", "amps": 40}).steps[0]
    assert step_outcome(sc, False, ("32",)) == {"amps": 32}
    assert step_outcome(sc, True, ()) == {"amps": 40}  # an emulator's bare $OK
    assert "reply_error" in step_outcome(sc, True, ("lots",))
    sy = plan_command({"command": "heartbeat", "interval": 5, "amps": 6}).steps[0]
    assert step_outcome(sy, True, ("5", "6", "0"))["heartbeat_amps"] == 6
    with pytest.raises(CommandRejected) as info:
        plan_command({"command": "explode"})
    assert info.value.result == "unsupported"


# -- the simulator's models --------------------------------------------------------------


def test_ev_follows_offer_and_max_rate_and_tapers() -> None:
    ev = EvModel(max_rate_a=16, soc=0.5, plugged=True)
    assert ev.step(1, 32) == 16 and ev.step(1, 10) == 10 and ev.step(1, 0) == 0
    ev.soc = 0.9
    assert ev.step(1, 32) == pytest.approx(8, abs=0.1)  # halfway through the taper
    before = ev.session_wh
    ev.step(3600, 32)
    assert ev.session_wh > before and ev.total_wh >= ev.session_wh
    full = EvModel(soc=1.0, plugged=True)
    assert full.step(1, 32) == 0 and not full.requesting


def test_evse_states_current_and_heartbeat() -> None:
    m = EvseModel()
    assert m.state == 0x01
    m.plug()
    m.step(0.1)
    assert m.state == 0x03 and m.ev.draw_a == 32
    assert m.set_current(3) == (False, 6)
    assert m.set_current(100) == (False, 32)
    assert m.set_current(10) == (True, 10)
    m.step(0.1)
    assert m.ev.draw_a == 10
    m.disable()
    m.step(0.1)
    assert (m.state, m.ev.draw_a, m.ev_connected) == (0xFF, 0, 2)
    m.enable()
    assert m.state == 0x00
    m.step(0.1)
    assert m.state == 0x03
    m.heartbeat((5, 6))
    m.set_current(20)
    m.step(6)
    assert (m.hb_trigger, m.capacity_a) == (2, 6)
    assert not m.heartbeat(())  # pulses refused until acknowledged
    assert m.heartbeat((165,)) and m.capacity_a == 32 and m.hb_trigger == 1
    m.inject_fault("gfci")
    assert m.state == 0x06 and m.trips["gfci"] == 1 and m.vflags & 0x0080
    m.clear_fault()
    m.unplug()
    assert not m.set_charge_limit(5)  # only in B/C


def test_responder_follows_the_firmware_on_bad_input() -> None:
    r = RapiResponder(EvseModel())
    assert r.notifications()[0].startswith(b"$AT 01 01 32 0000^")  # the baseline
    (reply,) = r.handle(parse_line(b"$GS^31"))  # bad checksum: NK without sequence id
    assert reply == encode_line("NK")
    assert r.handle(parse_line(b"$SC 16 V :12 " + b"0" * 20)) == []  # over 31: dropped
    (reply,) = r.handle(parse_line(encode_line("FF", list("1234567890"))[:-1]))
    assert reply.startswith(b"$NK")
    replies = r.handle(parse_line(encode_command("SC", 16, "V", seq=9)[:-1]))
    assert replies[0] == encode_reply(True, 16, seq=9) and replies[1].startswith(b"$AT ")
    assert r.handle(parse_line(encode_command("SC", 40, "V")[:-1]))[0] == encode_reply(False, 32)
