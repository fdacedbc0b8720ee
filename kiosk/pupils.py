"""Finding pupils the way people name them: by admission number, whatever its case."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiosk.errors import NotFound
from kiosk.models import Pupil


def find_by_admission(session: Session, admission_number: str) -> Pupil:
    """The pupil with this admission number (case-insensitive, as the roster import
    matches them); NotFound otherwise."""
    wanted = admission_number.strip().upper()
    pupil = session.execute(
        select(Pupil).where(func.upper(Pupil.admission_number) == wanted)
    ).scalar_one_or_none()
    if pupil is None:
        raise NotFound(f"no pupil with admission number {admission_number.strip()!r}")
    return pupil
