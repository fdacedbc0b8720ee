"""Card UIDs (ISO/IEC 14443-3 type A): parsing, formatting and the checks the standard implies.

A UID is 4 (single size), 7 (double) or 10 (triple) bytes. It travels in cascade levels of
4 bytes plus a BCC check byte (the XOR of the four); when a UID does not fit in one level, the
level starts with the cascade tag 0x88, so the byte that would take the tag's place (uid0 of
a single-size UID, uid3 of a triple-size one) may never be 0x88.
"""

from __future__ import annotations

import re

CASCADE_TAG = 0x88
UID_LENGTHS = (4, 7, 10)

_SEPARATORS = re.compile(r"[\s:\-]")
_HEX = re.compile(r"[0-9a-fA-F]+")


def validate_uid(uid: bytes) -> bytes:
    """Return ``uid`` as bytes if it is a valid ISO 14443 UID; raise ValueError otherwise."""
    uid = bytes(uid)
    if len(uid) not in UID_LENGTHS:
        raise ValueError(f"a card UID has 4, 7 or 10 bytes, not {len(uid)} ({uid.hex().upper()})")
    if len(uid) == 4 and uid[0] == CASCADE_TAG:
        raise ValueError("a 4-byte UID cannot start with 0x88 (the cascade tag)")
    if len(uid) == 10 and uid[3] == CASCADE_TAG:
        raise ValueError("byte 4 of a 10-byte UID cannot be 0x88 (the cascade tag)")
    return uid


def parse_uid(value: str | bytes | bytearray) -> bytes:
    """Parse a UID written as hex (``"DEADBEEF"``, ``"de:ad:be:ef"``, ``"04 11 22 ..."``) or bytes.

    Raises ValueError with a readable message when the text is not a valid UID.
    """
    if isinstance(value, bytes | bytearray):
        return validate_uid(bytes(value))
    if not isinstance(value, str):
        raise ValueError(f"a card UID is hex text or bytes, not {type(value).__name__}")
    text = _SEPARATORS.sub("", value.strip())
    if text[:2].lower() == "0x":
        text = text[2:]
    if not text or not _HEX.fullmatch(text) or len(text) % 2:
        raise ValueError(f"not a card UID in hex: {value!r}")
    return validate_uid(bytes.fromhex(text))


def format_uid(uid: bytes) -> str:
    """Format a UID as upper-case hex without separators (``"DEADBEEF"``)."""
    return bytes(uid).hex().upper()


def bcc(data: bytes | list[int]) -> int:
    """The block check character of a cascade level: the XOR of its bytes."""
    value = 0
    for byte in data:
        value ^= byte
    return value


def cascade_levels(uid: bytes) -> list[bytes]:
    """Split a UID into the 4-byte blocks sent at each cascade level (with cascade tags)."""
    uid = validate_uid(uid)
    if len(uid) == 4:
        return [uid]
    if len(uid) == 7:
        return [bytes([CASCADE_TAG]) + uid[:3], uid[3:]]
    return [bytes([CASCADE_TAG]) + uid[:3], bytes([CASCADE_TAG]) + uid[3:6], uid[6:]]


def crc_a(data: bytes | list[int], preset: int = 0x6363) -> int:
    """CRC_A of ISO/IEC 14443-3 (polynomial x^16 + x^12 + x^5 + 1, reflected, preset 0x6363).

    Returned as an int; on the air the low byte goes first.
    """
    crc = preset
    for byte in data:
        byte ^= crc & 0xFF
        byte = (byte ^ (byte << 4)) & 0xFF
        crc = ((crc >> 8) ^ (byte << 8) ^ (byte << 3) ^ (byte >> 4)) & 0xFFFF
    return crc


def with_crc(data: bytes | list[int]) -> bytes:
    """``data`` followed by its CRC_A, low byte first."""
    crc = crc_a(data)
    return bytes(data) + bytes([crc & 0xFF, crc >> 8])


__all__ = [
    "CASCADE_TAG",
    "UID_LENGTHS",
    "bcc",
    "cascade_levels",
    "crc_a",
    "format_uid",
    "parse_uid",
    "validate_uid",
    "with_crc",
]
