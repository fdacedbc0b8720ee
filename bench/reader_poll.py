"""Benchmark: the mfrc522 library's polling against our RC522 driver, on the chip emulator.

Runs ``SimpleMFRC522().read_id_no_block()`` (the unmodified library) and our
``hardware.rfid.RC522Reader`` against :class:`hardware.sim.rc522.RC522Emulator` and prints SPI
transfers per empty poll and per successful read, polls per second, and how many taps each
reports while one card is held on the reader for 50 polls. Our driver runs in real time (it
sleeps while the chip's timer runs, as on a Pi); the emulator's timer runs on the same clock.

Usage (from the repository root)::

    .venv/bin/python bench/reader_poll.py

The last line is ``RESULT library_idle_spi=N ours_idle_spi=N ours_read_spi=N held_taps=N``.
Goals: ``ours_idle_spi`` at most 25 (the library spends about 2,000), ``held_taps`` exactly 1.
"""

from __future__ import annotations

import statistics
import time

from hardware import _platform
from hardware.clock import SystemClock
from hardware.rfid import RC522Reader
from hardware.sim.fake_spidev import make_spidev_module
from hardware.sim.rc522 import RC522Emulator
from hardware.spec import ReaderSpec

CARD = bytes.fromhex("DEADBEEF")
CARD7 = bytes.fromhex("04A1B2C3D4E5F6")
EMPTY_POLLS = 50
HELD_POLLS = 50


def bench_library() -> dict[str, float]:
    chip = RC522Emulator()
    spidev = make_spidev_module({(0, 0): chip})
    library = _platform.import_mfrc522_with_stand_ins(spidev)
    reader = library.SimpleMFRC522()

    counts = []
    started = time.perf_counter()
    for _ in range(EMPTY_POLLS):
        before = chip.transfers
        assert reader.read_id_no_block() is None
        counts.append(chip.transfers - before)
    idle_rate = EMPTY_POLLS / (time.perf_counter() - started)

    chip.add_card(CARD)
    before = chip.transfers
    ident = reader.read_id_no_block()
    read_spi = chip.transfers - before
    reads, arrivals, previous = 0, 0, None
    for _ in range(HELD_POLLS - 1):
        value = reader.read_id_no_block()
        reads += value is not None
        arrivals += value is not None and previous is None
        previous = value
    chip.remove_card()
    print(
        f"library: empty poll    {statistics.mean(counts):8.1f} SPI transfers (max {max(counts)})"
    )
    print(f"library: read          {read_spi:8d} SPI transfers, id {ident:#x} (UID + BCC byte)")
    print(f"library: empty polls   {idle_rate:8.1f} per second (busy CPU, no sleeping)")
    print(
        f"library: card held {HELD_POLLS} polls: {reads + 1} reads, "
        f"{arrivals + 1} apparent arrivals (the card answers only every other REQA)"
    )
    return {"idle_spi": statistics.mean(counts), "read_spi": read_spi}


def bench_ours() -> dict[str, float]:
    clock = SystemClock()
    chip = RC522Emulator(clock=clock.monotonic)
    spidev = make_spidev_module({(0, 0): chip})

    def open_spi():
        spi = spidev.SpiDev()
        spi.open(0, 0)
        return spi

    reader = RC522Reader(
        ReaderSpec(),
        open_spi=open_spi,
        chip_class=lambda: _platform.mfrc522_class(simulated=True, spidev_module=spidev),
        reset_line=None,
        clock=clock,
    )
    reader.check()

    counts = []
    started = time.perf_counter()
    for _ in range(EMPTY_POLLS):
        before = chip.transfers
        assert reader.poll_once() is None
        counts.append(chip.transfers - before)
    idle_rate = EMPTY_POLLS / (time.perf_counter() - started)

    results: dict[str, float] = {}
    for name, uid in (("read_spi", CARD), ("read7_spi", CARD7)):
        chip.add_card(uid)
        before = chip.transfers
        tap = reader.poll_once()
        assert tap is not None and tap.uid == uid, tap
        results[name] = chip.transfers - before
        chip.remove_card()
        for _ in range(ReaderSpec().miss_limit):
            reader.poll_once()

    chip.add_card(CARD)
    taps = []
    held_counts = []
    started = time.perf_counter()
    for _ in range(HELD_POLLS):
        before = chip.transfers
        tap = reader.poll_once()
        held_counts.append(chip.transfers - before)
        if tap is not None:
            taps.append(tap)
    held_rate = HELD_POLLS / (time.perf_counter() - started)
    chip.remove_card()
    reader.close()
    clock.close()

    print(
        f"ours:    empty poll    {statistics.mean(counts):8.1f} SPI transfers (max {max(counts)})"
    )
    print(f"ours:    read (4 byte) {results['read_spi']:8.0f} SPI transfers, whole UID, HLTA after")
    print(f"ours:    read (7 byte) {results['read7_spi']:8.0f} SPI transfers")
    print(f"ours:    held card     {statistics.mean(held_counts[1:]):8.1f} SPI transfers per poll")
    print(f"ours:    empty polls   {idle_rate:8.1f} per second (sleeping while the timer runs)")
    print(f"ours:    held polls    {held_rate:8.1f} per second")
    print(
        f"ours:    card held {HELD_POLLS} polls: {len(taps)} tap(s) {[tap.uid_hex for tap in taps]}"
    )
    results.update(idle_spi=statistics.mean(counts), held_taps=len(taps))
    return results


def main() -> None:
    library = bench_library()
    ours = bench_ours()
    print(
        f"RESULT library_idle_spi={round(library['idle_spi'])} "
        f"ours_idle_spi={round(ours['idle_spi'])} ours_read_spi={round(ours['read_spi'])} "
        f"held_taps={ours['held_taps']}"
    )


if __name__ == "__main__":
    main()
