"""protocols/line_protocol.py against influxdb-client's ``Point``: the same text for any point.

The encoder exists to spare the InfluxDB output the library's memory (see its docstring); the
library stays the reference for what a line must look like. Examples from hypothesis, with
the characters line protocol escapes over-represented; ``PGW_LINE_EXAMPLES`` for more.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from influxdb_client import Point

from protocols import line_protocol

EXAMPLES = int(os.environ.get("PGW_LINE_EXAMPLES", "300"))
# the characters with a meaning in line protocol, often; any other text too
text = st.text(alphabet=st.sampled_from(',= "\\\n\t\rab#é1') | st.characters(), max_size=12)
value = (st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
         | st.floats(allow_nan=True, allow_infinity=True) | text | st.none())


def reference(measurement: str, tags: dict[str, str], fields: dict[str, object],
              stamp: int) -> str:
    point = Point(measurement)
    for key, tag in tags.items():
        point.tag(key, tag)
    for key, field in fields.items():
        point.field(key, field)
    return point.time(stamp, "ms").to_line_protocol()


@settings(max_examples=EXAMPLES, deadline=None)
@given(measurement=text.filter(lambda m: not m.startswith("#")),
       tags=st.dictionaries(text, text, max_size=4),
       fields=st.dictionaries(text, value, max_size=5),
       stamp=st.integers(min_value=0, max_value=2**62))
def test_the_same_line_as_the_library(measurement: str, tags: dict[str, str],
                                      fields: dict[str, object], stamp: int) -> None:
    assert line_protocol.encode(measurement, tags, fields, stamp) == \
        reference(measurement, tags, fields, stamp)


def test_escaping_by_example() -> None:
    """The rules written out, so that a reader sees them (and a change in both would show)."""
    line = line_protocol.encode(
        "my meter", {"site": "garage, rack=2", "empty": ""},
        {"power W": 1500.0, "count": 3, "on": True, "note": 'say "hi" \\', "gone": float("nan")},
        1_700_000_000_000)
    assert line == ('my\\ meter,site=garage\\,\\ rack\\=2 count=3i,note="say \\"hi\\" \\\\",'
                    'on=true,power\\ W=1500 1700000000000')
    assert line_protocol.encode("m", {}, {"v": None, "w": float("inf")}) == ""
