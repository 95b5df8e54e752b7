"""InfluxDB line protocol: one point as one line of text. Pure: no I/O, no client library.

    measurement,tag=value,tag=value field=1.5,count=3i,on=true,name="text" 1700000000000

Why not influxdb-client's ``Point``: importing influxdb-client costs a process 15 MB (25 MB
where numpy is installed, which it then imports too), a tenth of what the whole gateway may
take on a Raspberry Pi, for the text of a line. The InfluxDB 1.x output needs nothing else of
it; the v2 output still writes through the library, with these lines.
``pytests/test_line_protocol.py`` holds this encoder to ``Point.to_line_protocol()`` on
generated points (hypothesis), so both write the same bytes.

The rules (docs.influxdata.com, "Line protocol", special characters): commas and spaces are
escaped in a measurement; commas, equals signs and spaces in tag keys, tag values and field
keys; double quotes and backslashes in a string field value. Tags and fields are sorted by key
(InfluxDB's own preferred order); a tag with an empty key or value, a field that is None, NaN
or infinite is left out; a line without a field is no line (the server would refuse it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FieldValue = bool | int | float | str

_CONTROL = {"\n": r"\n", "\t": r"\t", "\r": r"\r"}
_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", **_CONTROL})
_ESCAPE_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", **_CONTROL})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


def _tag_value(value: str) -> str:
    escaped = value.translate(_ESCAPE_KEY)
    # a value ending in a backslash would escape the separator after it
    return escaped + " " if escaped.endswith("\\") else escaped


def _field(value: FieldValue) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = str(value)
        return text[:-2] if text.endswith(".0") else text
    return '"' + value.translate(_ESCAPE_STRING) + '"'


def encode(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue | None],
           timestamp: int | None = None) -> str:
    """One line (no newline), or "" when no field can be written. ``timestamp`` is an integer
    in the write's precision (s, ms, us or ns, given to the server beside the lines)."""
    written = []
    for key, value in sorted(fields.items()):
        text = None if value is None else _field(value)
        if text is not None:
            written.append(f"{key.translate(_ESCAPE_KEY)}={text}")
    if not written:
        return ""
    parts = [measurement.translate(_ESCAPE_MEASUREMENT)]
    for key, value in sorted(tags.items()):
        key_text, value_text = str(key).translate(_ESCAPE_KEY), _tag_value(str(value))
        if key_text and value_text:
            parts.append(f"{key_text}={value_text}")
    line = ",".join(parts) + " " + ",".join(written)
    return line if timestamp is None else f"{line} {int(timestamp)}"
