"""The JSON codec: values round-trip, and any bytes either decode or raise InvalidPayload."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

from turret import InvalidPayload, JsonCodec

CODEC = JsonCodec()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_json_values_round_trip_as_compact_utf8(value: object) -> None:
    data = CODEC.encode(value)
    assert CODEC.decode(data) == value
    data.decode("utf-8")  # always UTF-8


def test_encoding_is_compact_and_keeps_non_ascii_text() -> None:
    assert CODEC.encode({"to": "é", "n": [1, 2]}) == '{"to":"é","n":[1,2]}'.encode()


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_invalid_payload(data: bytes) -> None:
    try:
        CODEC.decode(data)
    except InvalidPayload as exc:
        reason = str(exc)
    else:
        return
    assert reason.startswith("payload is not valid JSON: ")


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"\xff\xfe", "can't decode byte 0xff"), (b"1 2", "Extra data"), (b"", "Expecting value")],
)
def test_undecodable_payloads_name_the_problem(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidPayload, match=reason):
        CODEC.decode(data)
