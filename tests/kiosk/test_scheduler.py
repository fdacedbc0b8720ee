"""The kiosk loop's timers, on their own."""

from __future__ import annotations

from kiosk.scheduler import Timers


class Now:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_timers_run_in_order_once_due_and_a_new_one_replaces_the_old() -> None:
    now = Now()
    timers = Timers(now)
    timers.after(2.0, "pending", 7)
    timers.after(1.0, "screen_idle", 1)
    timers.after(5.0, "pending", 7)  # replaces the first
    assert timers.pop_due() is None and timers.next_at() == 101.0
    now.t = 103.0
    assert timers.pop_due() == ("screen_idle", 1)
    assert timers.pop_due() is None  # the replaced one never runs
    assert timers.next_at() == 105.0
    assert list(timers.named("pending")) == [(7, 105.0)]
    timers.cancel("pending", 7)
    assert timers.next_at() is None and not timers.pending("pending", 7)
    now.t = 200.0
    assert timers.pop_due() is None


def test_a_timer_can_move_to_another_key_keeping_its_time() -> None:
    now = Now()
    timers = Timers(now)
    timers.after(3.0, "pending", "local-1")
    for key, when in list(timers.named("pending")):
        timers.cancel("pending", key)
        timers.at(when, "pending", 42)
    now.t = 103.0
    assert timers.pop_due() == ("pending", 42)
