"""Our RC522 driver against the chip emulator, on a ManualClock (no real sleeping)."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware import _platform
from hardware.clock import ManualClock, SystemClock
from hardware.errors import ReaderError, ReaderUnavailable
from hardware.gpio import LineFactory
from hardware.rfid import RC522Reader
from hardware.sim.fake_spidev import make_spidev_module
from hardware.sim.rc522 import RC522Emulator
from hardware.spec import PinRef, ReaderSpec
from tests.hardware.conftest import states
from tests.hardware.test_uid import uids

UID4 = bytes.fromhex("DEADBEEF")
UID7 = bytes.fromhex("04112233445566")
UID10 = bytes.fromhex("04112233445566778899")


class Rig:
    def __init__(self, clock=None, *, spec: ReaderSpec | None = None, reset_line=None, seed=0):
        self.clock = clock or ManualClock()
        self.chip = RC522Emulator(clock=self.clock.monotonic, seed=seed)
        self.devices = {(0, 0): self.chip}
        self.spidev = make_spidev_module(self.devices)
        self.reader = RC522Reader(
            spec or ReaderSpec(),
            open_spi=self.open_spi,
            chip_class=lambda: _platform.mfrc522_class(simulated=True, spidev_module=self.spidev),
            reset_line=reset_line,
            clock=self.clock,
        )

    def open_spi(self):
        spi = self.spidev.SpiDev()
        spi.open(0, 0)
        return spi

    def polls(self, n: int) -> list:
        return [tap for tap in (self.reader.poll_once() for _ in range(n)) if tap]


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_empty_poll_stops_at_the_timer_interrupt(rig) -> None:
    rig.reader.check()
    for _ in range(5):
        before = rig.chip.transfers
        assert rig.reader.poll_once() is None
        assert rig.chip.transfers - before <= 12  # the library needs 2013


@pytest.mark.parametrize("uid", [UID4, UID7, UID10])
def test_whole_uid_without_bcc(rig, uid) -> None:
    rig.chip.add_card(uid)
    tap = rig.reader.poll_once()
    assert tap is not None and tap.uid == uid and tap.sak == 0x08
    assert tap.uid_hex == uid.hex().upper()
    assert rig.chip.cards[0].state == "HALT"  # put to sleep after the read


def test_held_card_is_one_tap_and_a_new_tap_after_it_left(rig) -> None:
    rig.chip.add_card(UID4)
    assert [tap.uid for tap in rig.polls(50)] == [UID4]
    rig.chip.remove_card()
    assert rig.polls(2) == []
    rig.chip.add_card(UID4)
    assert [tap.uid for tap in rig.polls(5)] == [UID4]


def test_one_missed_poll_does_not_end_the_presence(rig) -> None:
    rig.chip.add_card(UID4)
    rig.polls(1)
    rig.chip.remove_card()
    rig.polls(1)  # one miss (miss_limit is 2)
    rig.chip.add_card(UID4)
    assert rig.polls(3) == []
    assert rig.reader.present == (UID4,)


def test_two_cards_at_once_are_two_taps(rig) -> None:
    rig.chip.add_card(bytes.fromhex("01020304"))
    rig.chip.add_card(bytes.fromhex("01020384"))  # collides at bit 32 (the last UID bit)
    taps = rig.polls(4)
    assert sorted(tap.uid for tap in taps) == sorted(
        [bytes.fromhex("01020304"), bytes.fromhex("01020384")]
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(uids(), st.integers(1, 6), st.integers(2, 4)),
        min_size=1,
        max_size=6,
    )
)
def test_each_arrival_is_exactly_one_tap(visits) -> None:
    rig = Rig()
    taps = []
    for uid, hold, gap in visits:
        rig.chip.add_card(uid)
        taps += rig.polls(hold)
        rig.chip.remove_card()
        taps += rig.polls(gap)
    assert [tap.uid for tap in taps] == [uid for uid, _hold, _gap in visits]


@settings(max_examples=40, deadline=None)
@given(st.lists(uids(), min_size=2, max_size=3, unique=True))
def test_cards_arriving_together_are_each_one_tap(cards) -> None:
    rig = Rig()
    for uid in cards:
        rig.chip.add_card(uid)
    taps = rig.polls(len(cards) + 3)
    assert sorted(tap.uid for tap in taps) == sorted(cards)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_garbage_never_becomes_a_tap_and_is_reported(seed) -> None:
    rig = Rig(seed=seed)
    rig.reader.check()
    rig.chip.add_card(UID4)
    rig.chip.set_fault("garbage")
    errors = 0
    for _ in range(30):
        try:
            assert rig.reader.poll_once() is None
        except ReaderError:
            errors += 1
        rig.clock.advance(0.05)
    assert errors >= 1


def test_raise_fault_is_reported_once_and_recovers(rig) -> None:
    events: list[object] = []
    rig.reader.start(events.append, events.append, lambda: events.append("recovered"), thread=False)
    rig.reader.step()
    rig.chip.set_fault("raise")
    assert rig.reader.step() is None
    assert rig.reader.step() is None
    assert len(events) == 1 and isinstance(events[0], ReaderError)
    assert "SPI transfer" in str(events[0]) and not rig.reader.healthy
    with pytest.raises(ReaderError):
        rig.reader.poll_once()
    rig.chip.set_fault(None)
    rig.chip.add_card(UID4)
    tap = rig.reader.step()
    assert tap is not None and rig.reader.healthy
    assert events[1:] == ["recovered", tap]


def test_vanished_reader_is_unavailable_then_comes_back(rig) -> None:
    rig.chip.add_card(UID4)
    assert len(rig.polls(1)) == 1
    rig.chip.set_fault("vanish")
    with pytest.raises(ReaderUnavailable, match="no RC522 answers"):
        rig.reader.poll_once()
    with pytest.raises(ReaderUnavailable):
        rig.reader.poll_once()
    rig.chip.set_fault(None)  # back, power-cycled: registers at reset values, antenna off
    assert rig.polls(3) == []  # re-initialised; the held card is still the same tap
    assert rig.chip.antenna_on
    rig.chip.remove_card()
    rig.polls(2)
    rig.chip.add_card(UID4)
    assert len(rig.polls(1)) == 1


def test_chip_reset_behind_our_back_is_repaired(rig) -> None:
    rig.reader.check()
    rig.chip.xfer2([0x01 << 1, 0x0F])  # SoftReset: settings lost, antenna off
    rig.chip.add_card(UID4)
    taps = rig.polls(3)
    assert [tap.uid for tap in taps] == [UID4]


def test_missing_spi_device(rig) -> None:
    rig.devices.clear()
    with pytest.raises(ReaderUnavailable):
        rig.reader.check()


def test_unknown_version_is_an_error() -> None:
    rig = Rig()
    rig.chip.version = 0x42
    with pytest.raises(ReaderError, match="VersionReg 0x42"):
        rig.reader.check()


def test_reset_pin_is_driven_through_the_line_factory(mock_factory) -> None:
    line = LineFactory(mock_factory).output(PinRef(None, 25), active_high=True, label="reset")
    rig = Rig(reset_line=line)
    rig.reader.check()
    pin = mock_factory.pin("GPIO25")
    assert states(pin) == [False, True]  # low (reset), then high: running
    rig.reader.close()
    rig.reader.close()
    assert states(pin) == [False, True, False]  # closed: chip held in power-down
    with pytest.raises(ReaderError):
        rig.reader.poll_once()


def test_the_library_close_is_never_used(monkeypatch, rig) -> None:
    cls = _platform.mfrc522_class(simulated=True, spidev_module=rig.spidev)

    def forbidden(self):
        raise AssertionError("Close_MFRC522 calls GPIO.cleanup()")

    monkeypatch.setattr(cls, "Close_MFRC522", forbidden)
    rig.chip.add_card(UID4)
    rig.polls(2)
    rig.reader.close()


def test_polling_thread_delivers_taps_without_busy_looping() -> None:
    clock = SystemClock()
    rig = Rig(clock, spec=ReaderSpec(poll_s=0.02))
    taps = []
    got = threading.Event()
    rig.reader.start(lambda tap: (taps.append(tap), got.set()))
    time.sleep(0.2)
    polls_before = rig.reader.polls
    rig.chip.add_card(UID4)
    assert got.wait(2.0)
    time.sleep(0.2)
    rig.reader.stop()
    rig.reader.stop()
    assert not rig.reader.running
    assert [tap.uid for tap in taps] == [UID4]
    assert 2 <= polls_before <= 12  # about 0.2 s / 0.02 s, not thousands
    rig.reader.close()
    clock.close()


def test_reader_thread_survives_a_failing_callback() -> None:
    rig = Rig()
    rig.reader.start(lambda tap: 1 / 0, thread=False)
    rig.chip.add_card(UID4)
    assert rig.reader.step() is not None
    assert rig.reader.healthy


CARD_A = bytes.fromhex("DEADBEEF")
CARD_B = bytes.fromhex("CAFEBABE")


def steps(rig: Rig, n: int, gap: float = 0.05) -> None:
    for _ in range(n):
        rig.reader.step()
        rig.clock.advance(gap)


def test_removing_one_of_two_cards_leaves_the_other_present(rig) -> None:
    rig.chip.add_card(CARD_A)
    rig.chip.add_card(bytes.fromhex("04A1B2C3D4E5F6"))
    assert len(rig.polls(4)) == 2
    rig.chip.remove_card(CARD_A)
    assert rig.polls(10) == []
    assert rig.reader.present == (bytes.fromhex("04A1B2C3D4E5F6"),)
    assert [card.state for card in rig.chip.cards] == ["HALT"]  # not left half-awake
    rig.chip.add_card(CARD_A)
    assert [tap.uid for tap in rig.polls(4)] == [CARD_A]  # came back: a new tap


def test_two_held_cards_are_not_tapped_again_after_a_transient_error(rig) -> None:
    taps: list[object] = []
    rig.reader.start(taps.append, taps.append, lambda: taps.append("recovered"), thread=False)
    rig.chip.add_card(CARD_A)
    rig.chip.add_card(CARD_B)
    steps(rig, 5)
    rig.chip.remove_card(CARD_A)
    steps(rig, 5)
    assert rig.reader.present == (CARD_B,)
    rig.chip.set_fault("raise")
    steps(rig, 1)
    rig.chip.set_fault(None)
    rig.clock.advance(rig.reader.spec.retry_s)  # the thread's next attempt
    steps(rig, 3)
    assert [getattr(t, "uid", t) for t in taps if not isinstance(t, ReaderError)] == [
        CARD_A,
        CARD_B,
        "recovered",
    ]
    assert rig.reader.present == (CARD_B,)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.frozensets(st.sampled_from([CARD_A, CARD_B, UID7, UID10]), max_size=4),
        min_size=1,
        max_size=6,
    )
)
def test_several_cards_coming_and_going_are_one_tap_per_arrival(rounds) -> None:
    """A card that stays is never tapped again; one that left is a new tap when it is back."""
    rig = Rig()
    on_reader: frozenset[bytes] = frozenset()
    for cards in rounds:
        for uid in on_reader - cards:
            rig.chip.remove_card(uid)
        for uid in cards - on_reader:
            rig.chip.add_card(uid)
        taps = rig.polls(4 + rig.reader.spec.miss_limit)  # long enough to see every change
        assert sorted(tap.uid for tap in taps) == sorted(cards - on_reader)
        assert set(rig.reader.present) == cards
        on_reader = cards


def test_a_card_held_through_a_short_outage_is_still_the_same_tap(rig) -> None:
    taps: list[object] = []
    rig.reader.start(taps.append, taps.append, thread=False)
    rig.chip.add_card(CARD_A)
    steps(rig, 3)
    rig.chip.set_fault("vanish")
    steps(rig, 1)
    rig.chip.set_fault(None)
    rig.clock.advance(rig.reader.spec.retry_s)
    steps(rig, 3)
    assert [type(t).__name__ for t in taps] == ["Tap", "ReaderUnavailable"]


def test_a_card_removed_during_a_long_outage_is_a_new_tap_when_back(rig) -> None:
    taps: list[object] = []
    rig.reader.start(taps.append, taps.append, thread=False)
    rig.chip.add_card(CARD_A)
    steps(rig, 3)
    rig.chip.set_fault("vanish")
    steps(rig, 2)
    rig.chip.remove_card()
    rig.clock.advance(10.0)
    rig.chip.set_fault(None)
    rig.chip.add_card(CARD_A)  # tapped again while the reader was still down
    rig.clock.advance(rig.reader.presence_keep_s)
    steps(rig, 3)
    assert [getattr(t, "uid", type(t).__name__) for t in taps] == [
        CARD_A,
        "ReaderUnavailable",
        CARD_A,
    ]
    assert rig.reader.present == (CARD_A,)


def test_a_reader_returning_garbage_is_reported_once_per_outage(rig) -> None:
    events: list[object] = []
    rig.reader.start(events.append, events.append, lambda: events.append("ok"), thread=False)
    steps(rig, 2)
    for outage in range(2):
        rig.chip.set_fault("garbage")
        steps(rig, 40, gap=0.5)  # random VersionReg values: each error reads differently
        rig.chip.set_fault(None)
        rig.clock.advance(rig.reader.spec.retry_s)
        steps(rig, 2)
        kinds = [type(e).__name__ if e != "ok" else e for e in events]
        assert kinds == ["ReaderError", "ok"] * (outage + 1), kinds
