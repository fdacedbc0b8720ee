"""Finding pupils the way people name them: by admission number, whatever its case."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from kiosk.errors import NotFound
from kiosk.models import Pupil, PupilStatus


@dataclass(frozen=True)
class PupilRef:
    """What the kiosk needs of a pupil, read in one query with their card (no ORM object)."""

    id: int
    admission_number: str
    forename: str
    preferred_forename: str | None
    surname: str
    status: PupilStatus

    @property
    def first_name(self) -> str:
        return self.preferred_forename or self.forename


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
