"""The RC522 emulator, checked with the unmodified mfrc522 library and with raw registers."""

from __future__ import annotations

import errno
import sys

import pytest

from hardware import _platform
from hardware.clock import ManualClock
from hardware.sim.fake_spidev import make_spidev_module
from hardware.sim.rc522 import RC522Emulator, SimCard
from hardware.uid import with_crc

UID4 = bytes.fromhex("DEADBEEF")
UID7 = bytes.fromhex("04112233445566")


@pytest.fixture
def chip() -> RC522Emulator:
    return RC522Emulator()


@pytest.fixture
def library(chip):
    spidev = make_spidev_module({(0, 0): chip})
    module = _platform.import_mfrc522_with_stand_ins(spidev)
    assert "mfrc522" not in sys.modules or sys.modules["mfrc522"] is not module
    return module.SimpleMFRC522()


def test_library_reads_a_uid_plus_bcc(chip, library) -> None:
    chip.add_card(UID4)
    assert library.read_id_no_block() == 0xDEADBEEF22


def test_library_empty_poll_spins_through_2000_reads(chip, library) -> None:
    before = chip.transfers
    assert library.read_id_no_block() is None
    assert chip.transfers - before == 2013  # as counted on the real library and chip


def test_library_sees_a_held_card_every_other_poll(chip, library) -> None:
    chip.add_card(UID4)
    results = [library.read_id_no_block() for _ in range(6)]
    assert results == [0xDEADBEEF22, None] * 3


def test_library_gets_only_the_first_cascade_level_of_a_7_byte_uid(chip, library) -> None:
    chip.add_card(UID7)
    assert library.read_id_no_block() == 0x88041122BF  # CT, 3 UID bytes, BCC


def test_library_reads_and_writes_blocks(chip, library) -> None:
    chip.add_card(UID4)
    assert library.write_no_block("hello") == (0xDEADBEEF22, "hello")
    library.read_id_no_block()  # the card is left ACTIVE: this REQA sends it to IDLE
    ident, text = library.read_no_block()
    assert ident == 0xDEADBEEF22 and text.startswith("hello")


def test_library_fails_on_a_collision(chip, library) -> None:
    chip.add_card(bytes.fromhex("01020304"))
    chip.add_card(bytes.fromhex("01020305"))
    assert library.read_id_no_block() is None
    assert chip.regs[0x06] & 0x08  # ErrorReg.CollErr


def test_burst_reads_and_writes() -> None:
    chip = RC522Emulator()
    chip.xfer2([0x09 << 1, 1, 2, 3])  # three bytes into the FIFO in one transfer
    assert chip.xfer2([0x80 | 0x0A << 1, 0]) == [0, 3]
    assert chip.xfer2([0x80 | 0x09 << 1] * 3 + [0]) == [0, 1, 2, 3]
    assert chip.xfer2([0x80 | 0x37 << 1, 0x80 | 0x0A << 1, 0]) == [0, 0x92, 0]


def test_timer_irq_comes_when_the_timer_runs_out() -> None:
    clock = ManualClock(start=0.0)
    chip = RC522Emulator(clock=clock.monotonic)
    for register, value in ((0x2A, 0x80), (0x2B, 0xA9), (0x2C, 0), (0x2D, 200), (0x14, 0x83)):
        chip.xfer2([register << 1, value])
    chip.xfer2([0x09 << 1, 0x26])
    chip.xfer2([0x0D << 1, 0x07])
    chip.xfer2([0x01 << 1, 0x0C])
    chip.xfer2([0x0D << 1, 0x87])
    irq = chip.xfer2([0x80 | 0x04 << 1, 0])[1]
    assert irq & 0x01 == 0 and irq & 0x40  # TxIRq, no TimerIRq yet
    clock.advance(0.005)
    assert chip.xfer2([0x80 | 0x04 << 1, 0])[1] & 0x01 == 0
    clock.advance(0.0001)
    assert chip.xfer2([0x80 | 0x04 << 1, 0])[1] & 0x01


def test_card_state_machine() -> None:
    card = SimCard(UID4)
    reqa, wupa = (b"\x26", 7), (b"\x52", 7)
    assert card.receive(*reqa) is not None and card.state == "READY"
    assert card.receive(*reqa) is None and card.state == "IDLE"  # unexpected frame
    card.receive(*reqa)
    select = with_crc(b"\x93\x70" + UID4 + b"\x22")
    assert card.receive(select, 72) is not None and card.state == "ACTIVE"
    assert card.receive(with_crc(b"\x50\x00"), 32) is None and card.state == "HALT"
    assert card.receive(*reqa) is None and card.state == "HALT"  # REQA does not wake it
    assert card.receive(*wupa) is not None and card.state == "READY" and card.halted
    assert card.receive(b"\x30\x04", 16) is None and card.state == "HALT"  # READY* -> HALT


def test_faults() -> None:
    chip = RC522Emulator(seed=1)
    chip.set_fault("raise")
    with pytest.raises(OSError) as info:
        chip.xfer2([0x80 | 0x37 << 1, 0])
    assert info.value.errno == errno.EIO
    chip.set_fault("garbage")
    answers = {chip.xfer2([0x80 | 0x37 << 1, 0])[1] for _ in range(20)}
    assert len(answers) > 5
    chip.xfer2([0x2D << 1, 200])
    chip.set_fault("vanish")
    assert chip.xfer2([0x80 | 0x37 << 1, 0]) == [0, 0]
    chip.set_fault(None)
    assert chip.xfer2([0x80 | 0x37 << 1, 0x80 | 0x2D << 1, 0]) == [0, 0x92, 0]  # power-cycled
    with pytest.raises(ValueError):
        chip.set_fault("melt")


def test_fake_spidev_missing_device() -> None:
    spidev = make_spidev_module({})
    with pytest.raises(FileNotFoundError):
        spidev.SpiDev().open(0, 0)
