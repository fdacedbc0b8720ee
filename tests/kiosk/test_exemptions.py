"""Exemptions: admin-approved, dated, with the written agreement's reference."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select

from kiosk import exemptions
from kiosk.errors import ConflictError, PermissionDenied, ValidationError
from kiosk.models import AuditEvent, ExemptionKind, Role

from .conftest import add_pupil, staff_actor


def grant(instance, session, clock, actor, pupil, **changes):
    values = {
        "kind": ExemptionKind.EDUCATIONAL_VISIT,
        "starts_on": date(2026, 9, 10),
        "ends_on": date(2026, 9, 11),
        "agreement_reference": "TRIP-2026-07",
        **changes,
    }
    return exemptions.grant(session, actor, clock, instance.audit, pupil=pupil, **values)


def test_an_admin_grants_and_it_is_active_on_its_days_only(instance, session, clock):
    pupil = add_pupil(session, clock)
    admin = staff_actor(session, clock, Role.ADMIN)
    exemption = grant(instance, session, clock, admin, pupil)
    assert exemption.approved_by == admin.label
    assert not exemptions.is_exempt(session, pupil.id, date(2026, 9, 9))
    assert exemptions.is_exempt(session, pupil.id, date(2026, 9, 10))
    assert exemptions.is_exempt(session, pupil.id, date(2026, 9, 11))
    assert not exemptions.is_exempt(session, pupil.id, date(2026, 9, 12))
    event = session.execute(select(AuditEvent).where(AuditEvent.kind == "exemption.granted"))
    assert event.scalar_one().pupil_id == pupil.id


@pytest.mark.parametrize("role", [Role.STAFF, Role.OFFICE, Role.DSL])
def test_only_an_admin_approves(instance, session, clock, role):
    pupil = add_pupil(session, clock)
    with pytest.raises(PermissionDenied):
        grant(instance, session, clock, staff_actor(session, clock, role), pupil)


def test_dates_agreement_and_review_are_checked(instance, session, clock):
    pupil = add_pupil(session, clock)
    admin = staff_actor(session, clock, Role.ADMIN)
    with pytest.raises(ValidationError, match="before it starts"):
        grant(instance, session, clock, admin, pupil, ends_on=date(2026, 9, 1))
    with pytest.raises(ValidationError, match="written agreement"):
        grant(instance, session, clock, admin, pupil, agreement_reference=" ")
    with pytest.raises(ValidationError, match="review date"):
        grant(instance, session, clock, admin, pupil, ends_on=None)
    open_ended = grant(
        instance,
        session,
        clock,
        admin,
        pupil,
        kind=ExemptionKind.MEDICAL,
        ends_on=None,
        review_on=date(2026, 12, 1),
    )
    assert exemptions.is_exempt(session, pupil.id, date(2027, 6, 1))
    assert open_ended.review_on == date(2026, 12, 1)


def test_revoked_exemptions_stop_applying(instance, session, clock):
    pupil = add_pupil(session, clock)
    admin = staff_actor(session, clock, Role.ADMIN)
    exemption = grant(instance, session, clock, admin, pupil)
    exemptions.revoke(
        session, admin, clock, instance.audit, exemption_id=exemption.id, reason="trip cancelled"
    )
    assert not exemptions.is_exempt(session, pupil.id, date(2026, 9, 10))
    with pytest.raises(ConflictError, match="already revoked"):
        exemptions.revoke(
            session, admin, clock, instance.audit, exemption_id=exemption.id, reason="again"
        )


@pytest.mark.parametrize("text", ["medical", "Educational visit", "young-carer", "OTHER"])
def test_kinds_are_parsed_leniently(text):
    assert isinstance(exemptions.parse_kind(text), ExemptionKind)


def test_unknown_kinds_list_the_choices():
    with pytest.raises(ValidationError, match="medical, educational_visit, young_carer, other"):
        exemptions.parse_kind("holiday")
