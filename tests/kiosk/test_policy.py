"""The policy in local time: windows across the clock changes, release times, names."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hypothesis import given
from hypothesis import strategies as st

from kiosk.config import load
from kiosk.models import Pupil
from kiosk.policy import Policy


def policy(tmp_path=None, **values) -> Policy:
    return Policy(load(None, env={}, overrides={"policy": values} if values else None).policy)


def test_deposit_window_is_local_time_in_summer_and_winter():
    rules = policy()
    summer_0730 = datetime(2026, 9, 7, 6, 30, tzinfo=UTC)  # BST
    winter_0730 = datetime(2026, 11, 23, 7, 30, tzinfo=UTC)  # GMT
    assert rules.in_deposit_window(summer_0730) and rules.in_deposit_window(winter_0730)
    assert not rules.in_deposit_window(
        datetime(2026, 9, 7, 7, 30, tzinfo=UTC).replace(hour=8, minute=16)
    )
    assert not rules.in_deposit_window(datetime(2026, 11, 23, 6, 29, tzinfo=UTC))


def test_the_day_the_clocks_go_back_has_25_hours():
    rules = policy()
    start, end = rules.day_bounds(date(2026, 10, 25))
    assert (end - start).total_seconds() == 25 * 3600


def test_release_time_is_the_local_time_on_the_day_of_confiscation():
    rules = policy(confiscation_release_from="15:15")
    morning = datetime(2026, 3, 30, 9, 0, tzinfo=UTC)  # Monday after the clocks went forward
    assert rules.release_not_before(morning) == datetime(2026, 3, 30, 14, 15, tzinfo=UTC)
    evening = datetime(2026, 3, 30, 16, 0, tzinfo=UTC)
    assert rules.release_not_before(evening) == evening


def test_release_roles():
    from kiosk.actors import ActorRole

    rules = policy(release_roles=["dsl"])
    assert rules.may_release(ActorRole.DSL)
    assert not rules.may_release(ActorRole.OFFICE)


def pupil(forename="Siobhán", surname="O'Brien", preferred=None) -> Pupil:
    return Pupil(forename=forename, surname=surname, preferred_forename=preferred)


def test_kiosk_names_show_as_little_as_the_policy_allows():
    assert policy().display_name(pupil()) == "Siobhán O."
    assert policy(kiosk_name_display="first_name").display_name(pupil()) == "Siobhán"
    assert policy(kiosk_name_display="initials").display_name(pupil()) == "S. O."
    assert policy(kiosk_name_display="none").display_name(pupil()) == ""
    assert policy().display_name(pupil(preferred="Shiv")) == "Shiv O."


names = st.text(alphabet=st.characters(categories=["L", "Zs", "Pd"]), min_size=1, max_size=40)


@given(forename=names, surname=names)
def test_the_kiosk_never_shows_more_than_one_letter_of_the_surname(forename, surname):
    shown = policy().display_name(pupil(forename.strip() or "A", surname))
    tail = surname.strip()[1:]
    if len(tail) >= 2:
        assert tail not in shown.removeprefix(forename.strip() or "A")
