from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hardware.uid import (
    CASCADE_TAG,
    bcc,
    cascade_levels,
    crc_a,
    format_uid,
    parse_uid,
    validate_uid,
    with_crc,
)


def uids() -> st.SearchStrategy[bytes]:
    def valid(uid: bytes) -> bool:
        return not (len(uid) == 4 and uid[0] == CASCADE_TAG) and not (
            len(uid) == 10 and uid[3] == CASCADE_TAG
        )

    return (
        st.sampled_from([4, 7, 10])
        .flatmap(lambda n: st.binary(min_size=n, max_size=n))
        .filter(valid)
    )


@given(uids(), st.sampled_from(["", ":", " ", "-"]), st.booleans())
def test_format_and_parse_round_trip(uid: bytes, sep: str, lower: bool) -> None:
    text = sep.join(f"{byte:02X}" for byte in uid)
    if lower:
        text = text.lower()
    assert parse_uid(text) == uid
    assert parse_uid(format_uid(uid)) == uid
    assert format_uid(uid) == uid.hex().upper()


@given(st.text(max_size=40))
def test_parse_uid_rejects_garbage_with_value_error_only(text: str) -> None:
    try:
        uid = parse_uid(text)
    except ValueError:
        return
    assert len(uid) in (4, 7, 10)


@pytest.mark.parametrize("bad", ["", "DEADBEE", "DEADBE", "DEADBEEF00", "zzzzzzzz", "88AABBCC"])
def test_parse_uid_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_uid(bad)


def test_cascade_levels_insert_the_cascade_tag() -> None:
    assert cascade_levels(bytes.fromhex("DEADBEEF")) == [bytes.fromhex("DEADBEEF")]
    assert cascade_levels(bytes.fromhex("04112233445566")) == [
        bytes.fromhex("88041122"),
        bytes.fromhex("33445566"),
    ]
    assert cascade_levels(bytes.fromhex("04112233445566778899")) == [
        bytes.fromhex("88041122"),
        bytes.fromhex("88334455"),
        bytes.fromhex("66778899"),
    ]


def test_crc_a_known_vectors() -> None:
    # ISO/IEC 14443-3 examples: 00 00 -> A0 1E; HLTA is 50 00 57 CD on the air.
    assert with_crc(b"\x00\x00") == bytes.fromhex("0000A01E")
    assert with_crc(b"\x50\x00") == bytes.fromhex("500057CD")
    assert crc_a(with_crc(b"\x93\x70\xde\xad\xbe\xef\x22")) == 0


def test_bcc_and_validate() -> None:
    assert bcc(bytes.fromhex("DEADBEEF")) == 0x22
    with pytest.raises(ValueError, match="4, 7 or 10"):
        validate_uid(b"\x01\x02")
