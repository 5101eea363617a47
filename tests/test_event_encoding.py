"""An event's data is stored as the text the json module writes, whichever encoder wrote it.

`new_event` leaves values made only of str, int, bool, None, list, tuple and dict to orjson
(faster on a mail event's long strings) and everything else to the json module; the stored text,
the errors and the size limit must be the same either way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import sqlite3
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brain.api import events
from brain.api.events import StoredEvent, new_event
from brain.api.publisher import payload_for
from brain.errors import BadRequest, PayloadTooLarge

MAX_BYTES = 2048
_TEXT = st.text(st.sampled_from([*map(chr, range(0x80)), "\u2028", "\xa0", "\u00e9", "\U0001f600", "\ud800", "\ufeff"]))
_SCALARS = (
    _TEXT
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5)
    | st.tuples(inner, inner)
    | st.dictionaries(_TEXT | st.integers(0, 3), inner, max_size=5),
    max_leaves=40,
)


def _outcome(call: Any) -> tuple[str, str]:
    try:
        return "ok", call()
    except (BadRequest, PayloadTooLarge) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=2000, deadline=None)
@given(_VALUES)
def test_the_stored_text_and_errors_are_the_json_modules(value: Any) -> None:
    got = _outcome(lambda: new_event({"type": "a.b", "data": value}, max_bytes=MAX_BYTES).data)
    assert got == _outcome(lambda: events._encoded(value, "event.", MAX_BYTES))


@dataclasses.dataclass
class _Point:
    x: int


class _Text(str):
    pass


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return {"deep": value}


@pytest.mark.parametrize(
    "value",
    [
        _nested(300),  # deeper than orjson goes (254)
        [[]] * 300,
        list(range(600)),  # more items than the fast path looks through
        {"x": math.nan},
        {"x": 1e16},
        {1: "int key"},
        _Text("a str subclass"),
        "x" * (MAX_BYTES - 1),  # two bytes of quotes over the limit
        "\u00e9" * 1000,
    ],
)
def test_edge_values_are_stored_or_refused_as_before(value: Any) -> None:
    got = _outcome(lambda: new_event({"type": "a.b", "data": value}, max_bytes=MAX_BYTES).data)
    assert got == _outcome(lambda: events._encoded(value, "event.", MAX_BYTES))


def test_types_the_json_module_refuses_are_refused() -> None:
    with pytest.raises(BadRequest, match="not JSON-serialisable"):
        new_event({"type": "a.b", "data": {"p": _Point(1)}}, max_bytes=MAX_BYTES)


def test_a_mail_sized_event_takes_the_fast_path() -> None:
    data = {"subject": "Re: plans", "to": [{"name": "A", "address": "a@b.c"}], "size": 20480, "read": True,
            "thread_id": None, "body_text": "\u00e9t\u00e9 " * 4000}
    assert events._encoded_fast(data) is not None
    assert new_event({"type": "mail.message.received", "data": data}, max_bytes=1 << 20).data == events._encoded(
        data, "", 1 << 20
    )


def _slow_time(text: str) -> str:
    """What parse_time gave for a UTC time before its fast path: format_time of the datetime."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return "BadRequest"
    return events.format_time(moment)


@settings(max_examples=400, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(1000, 1, 1)),
    st.integers(0, 6),
    st.sampled_from(["", " ", "\t"]),
)
def test_a_utc_time_is_stored_as_format_time_writes_it(moment: Any, digits: int, pad: str) -> None:
    # The fast path for ``...Z`` times (mail sync's created_at) must give format_time's text.
    text = moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond:06d}"[: digits + 1] if digits else "") + "Z"
    assert events.parse_time(pad + text + pad, "created_at") == _slow_time(text)


@pytest.mark.parametrize(
    "text",
    ["2025-02-30T10:00:00Z", "2025-13-01T10:00:00Z", "2025-01-01T24:00:00Z", "2025-01-01T23:59:60Z",
     "0000-01-01T00:00:00Z", "2025-01-01T10:00:00.1234567Z", "٢٠٢٥-01-01T10:00:00Z", "2025-01-01T10:00:00.Z"],
)
def test_a_malformed_utc_time_is_refused_or_read_as_before(text: str) -> None:
    try:
        got = events.parse_time(text, "created_at")
    except BadRequest:
        got = "BadRequest"
    assert got == _slow_time(text)


@settings(max_examples=200, deadline=None)
@given(_VALUES.filter(lambda v: not isinstance(v, float)), st.booleans())
def test_a_jetstream_payload_is_the_event_as_json(value: Any, bound: bool) -> None:
    # payload_for encodes the data on its own (a just-appended event's str keeps its UTF-8 from
    # the INSERT's bind): the bytes must be those of the whole object, bound or not.
    try:
        made = new_event({"type": "note.made", "data": value}, max_bytes=1 << 20)
    except BadRequest:
        return
    ev = StoredEvent(7, made.type, made.data, "2025-01-01T00:00:00.000000Z", "k\u00e9")
    if bound:
        sqlite3.connect(":memory:").execute("SELECT ?", (ev.data,))
    body = payload_for("u\u00e9", ev)
    assert body == (
        f'{{"id":7,"user_id":"u\u00e9","type":"note.made","data":{ev.data},"created_at":"{ev.created_at}"}}'
    ).encode()
    assert json.loads(body)["data"] == json.loads(ev.data)
