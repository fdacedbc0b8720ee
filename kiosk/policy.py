"""The school's policy as questions about time and roles, in the school's local time.

The ledger asks these; nothing else compares clock times with windows.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from kiosk.actors import ActorRole
from kiosk.config import PolicyConfig
from kiosk.errors import ValidationError
from kiosk.models import Pupil


class Policy:
    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.zone = config.zone

    def local(self, when: datetime) -> datetime:
        return when.astimezone(self.zone)

    def school_day(self, when: datetime) -> date:
        """The local calendar date of ``when``."""
        return self.local(when).date()

    def at_local(self, day: date, moment: time) -> datetime:
        """``moment`` on ``day`` in the school's timezone, as UTC (24:00 = next midnight)."""
        if moment == time.max:
            moment = time(23, 59, 59, 999999)
        return datetime.combine(day, moment, tzinfo=self.zone).astimezone(UTC)

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """UTC start (inclusive) and end (exclusive) of the local ``day``.

        ValidationError for a day at the very edge of the calendar (year 1 or 9999), whose
        bounds cannot be written as UTC times: no school day is there.
        """
        try:
            start = datetime.combine(day, time(0), tzinfo=self.zone).astimezone(UTC)
            end = datetime.combine(
                date.fromordinal(day.toordinal() + 1), time(0), tzinfo=self.zone
            ).astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValidationError(
                f"{day.isoformat()} is too far from today to be a school day"
            ) from None
        return start, end

    def in_deposit_window(self, when: datetime) -> bool:
        return self.config.deposit_window.contains(self.local(when).time())

    def in_collection_window(self, when: datetime) -> bool:
        return self.config.collection_window.contains(self.local(when).time())

    def release_not_before(self, confiscated_at: datetime) -> datetime:
        """Earliest release of a device confiscated at ``confiscated_at``: the configured time
        of day on that day, or at once when confiscated after it."""
        earliest = self.at_local(
            self.school_day(confiscated_at), self.config.confiscation_release_from
        )
        return max(earliest, confiscated_at)

    def end_of_day(self, day: date) -> datetime:
        return self.at_local(day, self.config.end_of_day)

    def may_release(self, role: ActorRole) -> bool:
        return role.value in self.config.release_roles

    def display_name(self, pupil: Pupil) -> str:
        """The name the kiosk screen shows, as little as the policy allows."""
        first, surname = pupil.first_name.strip(), pupil.surname.strip()
        mode = self.config.kiosk_name_display
        if mode == "first_name":
            return first
        if mode == "initials":
            return " ".join(f"{part[:1]}." for part in (first, surname) if part)
        if mode == "none":
            return ""
        return f"{first} {surname[:1]}." if surname else first
