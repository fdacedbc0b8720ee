from __future__ import annotations

import threading

import pytest

from hardware.clock import ManualClock, SystemClock


def test_manual_clock_runs_due_callbacks_in_order_at_their_time() -> None:
    clock = ManualClock(start=0.0)
    seen: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: seen.append(("b", clock.monotonic())))
    clock.call_later(1.0, lambda: seen.append(("a", clock.monotonic())))
    cancelled = clock.call_later(1.5, lambda: seen.append(("x", clock.monotonic())))
    cancelled.cancel()
    clock.advance(1.0)
    assert seen == [("a", 1.0)]
    clock.sleep(5.0)
    assert seen == [("a", 1.0), ("b", 2.0)]
    assert clock.monotonic() == 6.0
    assert clock.pending == 0


def test_manual_clock_callback_scheduling_another() -> None:
    clock = ManualClock(start=0.0)
    seen: list[float] = []

    def tick() -> None:
        seen.append(clock.monotonic())
        if len(seen) < 3:
            clock.call_later(0.5, tick)

    clock.call_later(0.5, tick)
    clock.advance(10)
    assert seen == [0.5, 1.0, 1.5]
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_system_clock_runs_and_cancels_callbacks() -> None:
    clock = SystemClock()
    done = threading.Event()
    seen: list[str] = []
    clock.call_later(0.01, lambda: (seen.append("ran"), done.set()))
    never = clock.call_later(0.01, lambda: seen.append("cancelled"))
    never.cancel()
    clock.call_later(0.001, lambda: 1 / 0)  # a failing callback does not stop the others
    assert done.wait(2.0)
    clock.close()
    assert seen == ["ran"]
    late = clock.call_later(0.0, lambda: seen.append("after close"))
    assert late.cancelled


def test_system_clock_dispatches_in_order_off_the_timer_thread() -> None:
    clock = SystemClock("probe")
    release = threading.Event()
    timer_ran = threading.Event()
    seen: list[tuple[str, str]] = []

    def slow() -> None:
        seen.append(("slow", threading.current_thread().name))
        release.wait(10.0)  # held until the timer below has run

    def timer() -> None:
        seen.append(("timer", threading.current_thread().name))
        timer_ran.set()
        release.set()

    clock.call_later(0.0, lambda: clock.dispatch(slow))
    clock.dispatch(lambda: seen.append(("second", threading.current_thread().name)))
    clock.call_later(0.01, timer)
    assert timer_ran.wait(10.0), "a timer waited behind a dispatched callback"
    clock.dispatch(lambda: 1 / 0)  # logged; the next ones still run
    done = threading.Event()
    clock.dispatch(done.set)
    assert done.wait(10.0)
    clock.close()
    assert [name for name, _ in seen if name != "timer"] == ["second", "slow"]
    assert {thread for name, thread in seen if name != "timer"} == {"probe-events"}
    assert ("timer", "probe") in seen
    after: list[str] = []
    clock.dispatch(lambda: after.append(threading.current_thread().name))
    assert after == [threading.current_thread().name]  # closed: run at once, here


def test_manual_clock_dispatches_at_once() -> None:
    clock = ManualClock()
    seen: list[int] = []
    clock.dispatch(lambda: seen.append(1))
    clock.dispatch(lambda: 1 / 0)
    assert seen == [1] and clock.pending == 0
