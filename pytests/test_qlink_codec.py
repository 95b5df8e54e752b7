"""The QLink codec, the names/project parsing, the command planner and the controller model:
pure logic, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocols.qlink import (
    AllLoadsEvent,
    CommandError,
    ErrorReply,
    Garbled,
    IrEvent,
    LcdEvent,
    LedEvent,
    LineSplitter,
    LoadEvent,
    QLinkParser,
    Reply,
    StationLoadEvent,
    SwitchEvent,
    VariableEvent,
    classify,
    command,
    decode_leds,
    encode_leds,
    format_fade,
    parse_command,
)
from protocols.qlink_project import (
    LoadAddress,
    parse_keypads,
    parse_loads,
    parse_project,
    slug,
)
from simulators.qlink_model import ControllerModel, Monitoring
from transports.qlink_config import CommandRejected, Directory, QLinkSettings

# A cut-down export in the shape of a real one (QLINK.md, source PRJ).
PROJECT = """QLink: 4.82, 02/14/2007, Build:346
OwnerInfo: ,,,192.168.1.200,3040,,
Master: M1West Utility 1,1,0,2
Floor: 1st Floor
  Room: Game Room
    Station: V23,255,1,23,0182024,1,1948280182,0,1,0,1
      Btn: Pendant ,2,Pendant,,1
        Event: 1, 0 DIM 34 2.0 3.0 1 0
          LdA: 1111
      Btn: Medium,6,Medium,,1
        Event: 1, 0 PRESET_ON 1 2.0 0 0
          LdA: 1111:60%,1114
      Btn: Game Room Off,8,Game,Room Of,1
        Event: 1, 0 PRESET_OFF 2 3.0
          LdA: 1111,1114
      BCnt: Garage,9
        Event: 1, 0 ALL_OFF 2 0.0
    Load: Pendant,1,1,1,1,101,Incandescent,0,200,,1,100
    Load: Sofit, Fluor,1,1,1,4,105,Fluor. Mag non-Dim,1,720,,1,100
  Room: Kitchen
    Load: Pendant,1,1,2,1,127,Incandescent,0,200,,1,100
    Load: Pendant,1,1,2,2,128,Incandescent,0,200,,1,100
"""


# ---------------------------------------------------------------------------- lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"SW 2 55 1 1 0", SwitchEvent(2, 55, 1, True, 0)),
        (b"SW 1 23 4 0", SwitchEvent(1, 23, 4, False)),
        (b"IR 1 140 7 1", IrEvent(1, 140, 7, True)),
        (b"LO 1 1 2 1 50", LoadEvent(1, 1, 2, 1, 50)),
        (b"LS 1 23 1 75", StationLoadEvent(1, 23, 1, 75)),
        (b"LV 1 3 9", VariableEvent(1, 3, 9)),
        (b"AON 3", AllLoadsEvent(True, 3)),
        (b"AOFF 0", AllLoadsEvent(False, 0)),
        (b"LE 1 23 4C 20", LedEvent(1, 23, 0x4C, 0x20)),
        (b"LC 1 40 3 1", LcdEvent(1, 40, 3, 1)),
        (b"RGS# 1 9 23 0", Reply("RGS# 1 9 23 0", "RGS#", ("1", "9", "23", "0"))),
        (b"RGL 101 50", Reply("RGL 101 50", "RGL", ("101", "50"))),
        (b"4", Reply("4", "", ("4",))),
        (b"4C 20", Reply("4C 20", "", ("4C", "20"))),
        (b"VER 5.37 10/14/1997", Reply("VER 5.37 10/14/1997", "VER", ("5.37", "10/14/1997"))),
        (b"Pendant|Game Room|1st|Incandescent",
         Reply("Pendant|Game Room|1st|Incandescent", "",
               ("Pendant", "Game Room", "1st", "Incandescent"))),
        (b"256", ErrorReply(256)),
        (b"257", ErrorReply(257)),
        (b"258", ErrorReply(258)),
    ],
)
def test_classify(line: bytes, expected: object) -> None:
    assert classify(line) == expected


@pytest.mark.parametrize(
    "line",
    [b"\x00\xffQ#?garbage", b"HELLO there", b"LO 1 1 2", b"SW 1 2 3 7", b"LE 1 23 ZZ 00",
     b"LO a b c d e", b"\x07\x07"],
)
def test_garbage_is_reported_with_its_bytes(line: bytes) -> None:
    item = classify(line)
    assert isinstance(item, Garbled)
    assert item.raw == line
    assert "\\x" in str(item) or line.decode(errors="replace") in str(item)


@pytest.mark.parametrize("line", [b"LO 1 1 1 4 145", b"LO 1 1 1 4 255", b"LO 1 1 1 4 999",
                                  b"LO 1 1 1 4 65535", b"LS 1 23 1 101", b"LO 1 1 1 4 -1"])
def test_load_levels_outside_0_to_100_are_rejected_not_read(line: bytes) -> None:
    item = classify(line)
    assert isinstance(item, Garbled), item
    assert item.raw == line


def test_load_level_bounds_are_read() -> None:
    assert classify(b"LO 1 1 1 4 0") == LoadEvent(1, 1, 1, 4, 0)
    assert classify(b"LS 1 23 1 100") == StationLoadEvent(1, 23, 1, 100)


def test_events_are_told_from_replies_by_shape() -> None:
    # an event ahead of the reply to the command causing it (QLINK.md, BUGFIX capture)
    items = QLinkParser().feed(b"SW 2 55 1 1 0\r4\r")
    assert items == [SwitchEvent(2, 55, 1, True, 0), Reply("4", "", ("4",))]


def test_line_ends_cr_lf_crlf_and_empty_lines() -> None:
    parser = QLinkParser()
    assert parser.feed(b"1\r2\n3\r\n\r\n\n4") == [Reply(v, "", (v,)) for v in "123"]
    assert parser.feed(b"\r") == [Reply("4", "", ("4",))]


def test_overlong_line_is_garbage_and_the_stream_recovers() -> None:
    parser = QLinkParser()
    out = parser.feed(b"X" * 600)
    assert len(out) == 1 and isinstance(out[0], Garbled)
    assert parser.feed(b"tail of it\rLO 1 1 1 1 5\r") == [LoadEvent(1, 1, 1, 1, 5)]


_events = st.one_of(
    st.builds(SwitchEvent, st.integers(1, 15), st.integers(1, 255), st.integers(1, 10),
              st.booleans(), st.none() | st.integers(0, 9999999)),
    st.builds(LoadEvent, st.integers(1, 15), st.integers(1, 4), st.integers(1, 4),
              st.integers(1, 8), st.integers(0, 100)),
    st.builds(LedEvent, st.integers(1, 15), st.integers(1, 255), st.integers(0, 255),
              st.integers(0, 255)),
    st.builds(AllLoadsEvent, st.booleans(), st.integers(0, 500)),
)
_replies = st.sampled_from([b"50", b"RGL# 127 50", b"4C 20", b"257", b"VER 7.89 02/14/2007",
                            b"\x00junk\xfe"])


@given(
    st.lists(st.one_of(_events.map(lambda e: e.encode().encode()), _replies), max_size=30),
    st.sampled_from([b"\r", b"\n", b"\r\n"]),
    st.lists(st.integers(0, 2000), max_size=20),
)
def test_any_split_of_the_stream_gives_the_same_items(
    lines: list[bytes], end: bytes, cuts: list[int]
) -> None:
    stream = b"".join(line + end for line in lines)
    whole = QLinkParser().feed(stream)
    parser = QLinkParser()
    pieces: list[object] = []
    start = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        pieces += parser.feed(stream[start:cut])
        start = cut
    assert pieces == whole
    assert len(whole) == len(lines)


@given(_events)
def test_event_encode_parse_round_trip(event: object) -> None:
    assert classify(event.encode().encode()) == event  # type: ignore[attr-defined]


def test_led_masks() -> None:
    states = decode_leds(0x4C, 0x20)  # QL2's example
    assert [i + 1 for i, s in enumerate(states) if s == "on"] == [3, 4, 7]
    assert [i + 1 for i, s in enumerate(states) if s == "blink"] == [6]
    assert states.count("off") == 4


@given(st.lists(st.sampled_from(["off", "on", "blink"]), min_size=8, max_size=8))
def test_led_masks_round_trip(states: list[str]) -> None:
    assert list(decode_leds(*encode_leds(states))) == states  # type: ignore[arg-type]


def test_line_splitter_keeps_partial_input() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"VGL 1") == []
    assert splitter.feed(b"27\r") == [b"VGL 127"]


# ---------------------------------------------------------------------------- commands


def test_command_builders() -> None:
    assert command("VLO", 127, 50, 2.3, modifier="#").encode() == b"VLO# 127 50 2.3\r"
    assert command("VLO", 127, 50, 0.0).encode(b"\r\n") == b"VLO 127 50 0\r\n"
    assert format_fade(6553.5) == "6553.5" and format_fade(2) == "2"
    with pytest.raises(CommandError):
        command("VLO", 127)  # too few parameters: our bug, caught before the wire


@pytest.mark.parametrize(
    ("line", "code"),
    [(b"VXX 1", 256), (b"vgl 127", 256), (b"VER", 256), (b"hello", 256), (b"VGL", 257),
     (b"VGL 1 2", 257), (b"VGL abc", 257), (b"VLO 127 -5", 257)],
)
def test_parse_command_errors(line: bytes, code: int) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(line)
    assert info.value.code == code


def test_parse_command_modifiers_and_spaces() -> None:
    cmd = parse_command(b"VSW@   2 55  1 4")
    assert (cmd.verb, cmd.modifier, cmd.args) == ("VSW", "@", ("2", "55", "1", "4"))
    assert command("VGL", 1, modifier="#").matches(Reply("RGL# 1 0", "RGL#", ("1", "0")))
    assert not command("VGL", 1, modifier="#").matches(Reply("RLO# 1 0 0", "RLO#", ()))
    assert command("VGL", 1).matches(ErrorReply(257))


# ---------------------------------------------------------------------------- names


def test_ini_syntax() -> None:
    loads = parse_loads("kitchen_pendant=127@1.1.2.1, porch=@1.1.1.3")
    assert loads[0].contractor == 127 and loads[0].address == LoadAddress(1, 1, 2, 1)
    assert loads[1].contractor is None
    assert parse_keypads("entry=1.23")[0].station == 23


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("a=127", "address is needed"), ("a=1@1.5.1.1", "enclosure 5"), ("a=1@1.1.1", "address"),
     ("A=1@1.1.1.1", "lower-case"), ("a=1@1.1.1.1,b=2@1.1.1.1", "given twice"),
     ("a=0@1.1.1.1", "contractor number")],
)
def test_ini_syntax_errors_name_the_item(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_loads(text)


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        QLinkSettings(transport="qlink", keypads="entry=1")
    assert info.value.errors()[0]["loc"] == ("keypads",)
    with pytest.raises(ValidationError, match="writable_buttons"):
        QLinkSettings(transport="qlink", keypads="entry=1.23", writable_buttons="hall.1")
    with pytest.raises(ValidationError, match="project_file"):
        QLinkSettings(transport="qlink", project_file="/nonexistent/export.txt")


def test_project_export() -> None:
    export = parse_project(PROJECT)
    names = {s.name: s for s in export.loads}
    assert names["game_room_pendant"].address == LoadAddress(1, 1, 1, 1)
    assert names["game_room_sofit_fluor"].contractor == 105  # a comma in the name
    assert names["kitchen_pendant"].contractor == 127
    assert names["kitchen_pendant_128"].address == LoadAddress(1, 1, 2, 2)  # duplicate name
    assert [(k.name, k.master, k.station) for k in export.keypads] == [("game_room_v23", 1, 23)]
    actions = dict(export.actions)
    assert actions[(1, 23, 2)].kind == "toggle"
    assert actions[(1, 23, 6)].loads == ((LoadAddress(1, 1, 1, 1), 60),
                                         (LoadAddress(1, 1, 1, 4), 100))
    assert actions[(1, 23, 8)].kind == "off" and actions[(1, 23, 8)].fade == 3.0
    assert actions[(1, 23, 9)].kind == "all_off"
    assert slug('4 6" downlites') == "4_6_downlites"


def test_project_file_in_settings(tmp_path: object) -> None:
    path = tmp_path / "export.txt"  # type: ignore[operator]
    path.write_text(PROJECT)
    s = QLinkSettings(transport="qlink", project_file=str(path), loads="extra=9@1.2.1.1",
                      writable_loads="kitchen_pendant")
    assert "kitchen_pendant" in {x.name for x in s.all_loads} and len(s.all_loads) == 5
    with pytest.raises(ValidationError, match="given twice"):
        QLinkSettings(transport="qlink", project_file=str(path), loads="kitchen_pendant=9@1.2.1.1")


# ---------------------------------------------------------------------------- planner


def _directory(**extra: str) -> Directory:
    return Directory(QLinkSettings(transport="qlink", loads="kitchen=127@1.1.2.1, porch=@1.1.1.4",
                                   keypads="entry=1.23", **extra))


def test_plan_write_and_allowlists() -> None:
    d = _directory(writable_loads="kitchen, porch", writable_buttons="entry.1",
                   writable_leds="entry")
    steps = d.plan({"command": "write", "values": {"kitchen": 50, "porch": True}, "fade": 2.5})
    assert [s.command.text() for s in steps] == ["VLO# 127 50 2.5", "VLB# 1 1 1 4 100 2.5"]
    assert d.plan({"command": "write", "values": {"entry_button_1": "press"}})[0].command.text() \
        == "VSW# 1 23 1 6"
    assert d.plan({"command": "set_led", "keypad": "entry", "led": 3, "state": "blink"})[0] \
        .command.text() == "VLD# 1 23 3 2"
    assert d.plan({"command": "press", "keypad": "entry", "button": 1})[0].command.args[-1] == "4"
    for bad, why in [
        ({"command": "write", "values": {"kitchen": 101}}, "outside"),
        ({"command": "write", "values": {"kitchen": "bright"}}, "not a number"),
        ({"command": "write", "values": {"entry_button_2": 1}}, "writable_buttons"),
        ({"command": "write", "values": {"nothing": 1}}, "no writable value"),
        ({"command": "write", "values": {}}, "non-empty"),
        ({"command": "set_level", "load": "kitchen", "level": 5, "fade": 7000}, "fade"),
        ({"command": "explode"}, "unknown command"),
    ]:
        with pytest.raises(CommandRejected, match=why):
            d.plan(bad)


def test_nothing_is_writable_by_default() -> None:
    d = _directory()
    with pytest.raises(CommandRejected, match="writable_loads"):
        d.plan({"command": "write", "values": {"kitchen": 1}})
    specs = {s.name: s for s in d.specs()}
    assert specs["kitchen"].unit == "%" and specs["kitchen"].maximum == 100
    assert specs["entry_button_1"].kind == "button" and not specs["entry_button_1"].writable


# ---------------------------------------------------------------------------- the model


def _model(**mon: object) -> ControllerModel:
    return ControllerModel(parse_loads("kitchen=127@1.1.2.1, hall=12@1.1.1.3"),
                           parse_keypads("entry=1.23"), monitoring=Monitoring(**mon))  # type: ignore[arg-type]


def test_model_events_come_before_the_reply() -> None:
    model = _model(switches=True, loads=True, leds=1)
    out = model.handle_line(b"VSW@ 1 23 1 4")
    assert out.events[0] == SwitchEvent(1, 23, 1, True, None)
    assert LoadEvent(1, 1, 2, 1, 100) in out.events
    assert out.reply == "4"
    assert model.handle_line(b"VLT# 1 23").reply == "RLT# 1 23 55 00"  # LEDs 1, 3, 5, 7 (kitchen)


def test_model_monitoring_and_formats_are_per_controller() -> None:
    model = _model()
    assert model.handle_line(b"VLO 127 40").events == []  # monitoring off: no LO
    assert model.handle_line(b"VOL 1").reply == "1"
    assert model.handle_line(b"VOS# 1 1").reply == "ROS# 1 1"
    assert model.handle_line(b"VCL 1 1").reply == "1 1"
    assert model.mon.crlf and model.line_end == b"\r\n"
    assert model.handle_line(b"VGL 127").reply == "RGL 127 40"  # detailed from VCL: no '#'
    assert model.handle_line(b"VGL@ 127").reply == "40"
    assert model.handle_line(b"VGL! 127").reply is None
    assert model.handle_line(b"VGL 999").reply == "257"
    assert model.handle_line(b"VZZ 1").reply == "256"
    assert model.handle_line(b"VLO 127 50 2.5").events == [LoadEvent(1, 1, 2, 1, 50)]
