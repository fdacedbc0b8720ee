"""Checks for free text typed by people (reasons, names, references)."""

from __future__ import annotations

import unicodedata

from kiosk.errors import ValidationError


def clean_text(value: object, what: str, *, max_length: int, required: bool = True) -> str:
    """``value`` stripped and NFC-normalised; ValidationError naming ``what`` when it is
    missing (and required), too long, or holds control characters."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be text")
    value = unicodedata.normalize("NFC", value.strip())
    if required and not value:
        raise ValidationError(f"{what} is required")
    if len(value) > max_length:
        raise ValidationError(f"{what} is too long ({len(value)} characters, at most {max_length})")
    if any(unicodedata.category(char) == "Cc" and char not in "\n\t" for char in value):
        raise ValidationError(f"{what} contains control characters")
    return value
