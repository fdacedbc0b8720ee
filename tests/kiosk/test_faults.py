"""A kiosk's fault bookkeeping, on its own: which faults stop what."""

from __future__ import annotations

from hardware import CabinetSpec
from hardware.errors import ExpanderError, LockError
from kiosk.faults import FaultBook, scope_of, source_of

SPEC = CabinetSpec.simulated(24)  # mcp0: compartments 1-8, mcp1: 9-16, mcp2: 17-24


def test_a_part_takes_out_only_the_compartments_it_serves() -> None:
    assert scope_of("expander mcp1", SPEC.compartments) == frozenset(range(9, 17))
    assert scope_of("compartment 3 lock", SPEC.compartments) == {3}
    assert scope_of("compartment 12 door", SPEC.compartments) == {12}
    assert scope_of("interrupt line GPIO4", SPEC.compartments) == frozenset()
    assert scope_of("something else", SPEC.compartments) is None


def test_the_source_of_a_report() -> None:
    failing = {"expander mcp2": "mcp2 does not answer"}
    assert source_of(ExpanderError("mcp2 does not answer"), failing) == "expander mcp2"
    assert source_of(ExpanderError("no", expander="mcp0"), {}) == "expander mcp0"
    assert source_of(LockError("stuck", number=5), {}) == "compartment 5 lock"
    assert source_of(LockError("stuck"), {}) == "hardware"


def test_scoped_faults_kiosk_wide_faults_and_retrying() -> None:
    book = FaultBook()
    assert book.set("expander mcp0", "down", compartments=range(1, 9))
    assert not book.set("expander mcp0", "still down", compartments=range(1, 9))
    assert not book.kiosk_wide() and not book.blocks_deposits()
    assert book.out_of_use(now=0) == set(range(1, 9))
    assert book.none_of(range(1, 9), now=0) and not book.none_of(range(1, 10), now=0)
    book.set("compartment 10 lock", "failed", compartments={10}, retry_at=50.0)
    assert 10 in book.out_of_use(now=49) and 10 not in book.out_of_use(now=51)
    book.set("reader", "card reader: gone")
    assert book.kiosk_wide() and not book.blocks_deposits()
    book.set("wiring", "compartment 9 has no lock")
    assert book.blocks_deposits()
    cleared = book.clear("expander mcp0")
    assert cleared is not None and book.out_of_use(now=0) == {10}
    book.restore("expander mcp0", cleared)
    assert book.messages["expander mcp0"] == "still down" and 1 in book.out_of_use(now=0)
    assert book.clear("nothing") is None
