"""An emulator of the NXP MFRC522 (RC522) reader chip and of the cards in its field.

It sits behind a fake ``spidev`` (:mod:`hardware.sim.fake_spidev`), so the *unmodified*
``mfrc522`` library and our driver both talk to it through SPI register reads and writes:

- the register file with the read/write semantics that matter (Set1/Set2 IRQ bits, FIFO level
  and flush, StartSend, RxAlign/TxLastBits, CollReg, Status2 MFCrypto1On, antenna bits);
- SPI bursts as in the datasheet (8.1.2): a read transfer carries several addresses, a write
  transfer writes several bytes to one address;
- the commands Idle, CalcCRC (CRC_A with the ModeReg preset), Transmit, Transceive,
  MFAuthent and SoftReset;
- the timer (TModeReg.TAuto, prescaler, reload): a transceive that no card answers sets
  TimerIRq when the timer runs out, measured on an injectable clock. Nothing else ends the
  wait, so a driver that ignores TimerIRq (the library) spins as on the real chip;
- cards following ISO/IEC 14443-3 type A: IDLE, READY, ACTIVE, HALT and the starred states,
  REQA/WUPA/ANTICOLLISION/SELECT/HLTA over cascade levels (4, 7 and 10-byte UIDs), bit
  collisions between several cards (ErrorReg.CollErr, CollReg.CollPos), and MIFARE Classic
  READ/WRITE after MFAuthent;
- faults: ``"raise"`` (every transfer raises OSError EIO), ``"garbage"`` (random bytes),
  ``"vanish"`` (the chip stops answering: zeros; when it comes back it has been power-cycled,
  as it is when its reset pin goes low).

CollPos counts bit positions from bit 0 of the first FIFO byte, RxAlign bits included (so the
first received bit of a frame received with RxAlign = 3 is position 4).
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from hardware.uid import bcc, cascade_levels, crc_a, validate_uid, with_crc

logger = logging.getLogger(__name__)

# Registers (page 0-3) used here.
CommandReg = 0x01
ComIEnReg = 0x02
DivIEnReg = 0x03
ComIrqReg = 0x04
DivIrqReg = 0x05
ErrorReg = 0x06
Status1Reg = 0x07
Status2Reg = 0x08
FIFODataReg = 0x09
FIFOLevelReg = 0x0A
WaterLevelReg = 0x0B
ControlReg = 0x0C
BitFramingReg = 0x0D
CollReg = 0x0E
ModeReg = 0x11
TxModeReg = 0x12
RxModeReg = 0x13
TxControlReg = 0x14
TxASKReg = 0x15
CRCResultRegH = 0x21
CRCResultRegL = 0x22
TModeReg = 0x2A
TPrescalerReg = 0x2B
TReloadRegH = 0x2C
TReloadRegL = 0x2D
TCounterValueRegH = 0x2E
TCounterValueRegL = 0x2F
VersionReg = 0x37

# Commands.
CMD_IDLE = 0x0
CMD_MEM = 0x1
CMD_RANDOM_ID = 0x2
CMD_CALC_CRC = 0x3
CMD_TRANSMIT = 0x4
CMD_NO_CHANGE = 0x7
CMD_RECEIVE = 0x8
CMD_TRANSCEIVE = 0xC
CMD_MF_AUTHENT = 0xE
CMD_SOFT_RESET = 0xF

# ComIrqReg bits.
IRQ_TX = 0x40
IRQ_RX = 0x20
IRQ_IDLE = 0x10
IRQ_ERR = 0x02
IRQ_TIMER = 0x01
# DivIrqReg bits.
IRQ_CRC = 0x04
# ErrorReg bits.
ERR_PROTOCOL = 0x01
ERR_PARITY = 0x02
ERR_CRC = 0x04
ERR_COLL = 0x08
ERR_BUFFER_OVFL = 0x10

FIFO_SIZE = 64
CLOCK_HZ = 13.56e6

#: Register values after power-on or SoftReset (datasheet, section 9.3).
RESET_VALUES: dict[int, int] = {
    CommandReg: 0x20,
    ComIEnReg: 0x80,
    ComIrqReg: 0x14,
    Status1Reg: 0x21,
    WaterLevelReg: 0x08,
    ControlReg: 0x10,
    CollReg: 0xA0,
    ModeReg: 0x3F,
    TxControlReg: 0x80,
    0x16: 0x10,  # TxSelReg
    0x17: 0x84,  # RxSelReg
    0x18: 0x84,  # RxThresholdReg
    0x19: 0x4D,  # DemodReg
    0x1C: 0x62,  # MfTxReg
    0x1F: 0xEB,  # SerialSpeedReg
    CRCResultRegH: 0xFF,
    CRCResultRegL: 0xFF,
    0x24: 0x26,  # ModWidthReg
    0x26: 0x48,  # RFCfgReg
    0x27: 0x88,  # GsNReg
    0x28: 0x20,  # CWGsPReg
    0x29: 0x20,  # ModGsPReg
}

_SEL = {0x93: 0, 0x95: 1, 0x97: 2}
_ATQA = {4: b"\x04\x00", 7: b"\x44\x00", 10: b"\x84\x00"}

Bits = list[int]


def to_bits(data: bytes | list[int], nbits: int | None = None) -> Bits:
    """Bytes to a list of bits, least significant bit of each byte first (air order)."""
    bits = [(byte >> i) & 1 for byte in data for i in range(8)]
    return bits if nbits is None else bits[:nbits]


def from_bits(bits: Bits) -> bytes:
    """The inverse of :func:`to_bits`; the last byte is padded with zero bits."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


class SimCard:
    """A type A card (MIFARE Classic 1K by default) with its ISO 14443-3 state.

    ``state`` is ``"IDLE"``, ``"READY"``, ``"ACTIVE"`` or ``"HALT"``; ``halted`` is True for
    the starred states (woken from HALT by WUPA), which fall back to HALT rather than IDLE.
    """

    def __init__(
        self,
        uid: bytes,
        *,
        sak: int = 0x08,
        atqa: bytes | None = None,
        key: bytes = b"\xff" * 6,
    ) -> None:
        self.uid = validate_uid(uid)
        self.levels = [block + bytes([bcc(block)]) for block in cascade_levels(self.uid)]
        self.sak = sak
        self.atqa = atqa if atqa is not None else _ATQA[len(self.uid)]
        self.key = bytes(key)
        self.blocks = [bytearray(16) for _ in range(64)]
        block0 = self.levels[0] if len(self.uid) == 4 else self.uid
        self.blocks[0][: len(block0)] = block0
        for sector in range(16):
            self.blocks[sector * 4 + 3][:] = self.key + b"\xff\x07\x80\x69" + self.key
        self.power_on()

    def power_on(self) -> None:
        """The field came up (or the card arrived): IDLE, cascade level 1, not authenticated."""
        self.state = "IDLE"
        self.halted = False
        self.level = 0
        self.auth_sector: int | None = None
        self.pending_write: int | None = None

    def _other(self) -> None:
        # Any frame a state does not expect: READY/ACTIVE -> IDLE, READY*/ACTIVE* -> HALT.
        if self.state in ("READY", "ACTIVE"):
            self.state = "HALT" if self.halted else "IDLE"
        self.auth_sector = None
        self.pending_write = None

    def receive(self, data: bytes, nbits: int) -> Bits | None:
        """Handle one frame of ``nbits`` bits; return the bits of the answer, or None."""
        if nbits == 7:
            return self._short_frame(data[0] & 0x7F)
        if nbits >= 16 and data[0] in _SEL:
            return self._select(data, nbits)
        if nbits == 32 and data[:2] == b"\x50\x00" and crc_a(data[:4]) == 0:
            if self.state == "ACTIVE":
                self.state = "HALT"
                self.halted = True
                self.auth_sector = None
            else:
                self._other()
            return None
        if self.state == "ACTIVE" and nbits % 8 == 0 and len(data) >= 3 and crc_a(data) == 0:
            return self._mifare(data[:-2])
        self._other()
        return None

    def _short_frame(self, command: int) -> Bits | None:
        if command == 0x26 and self.state == "IDLE":  # REQA
            self.state, self.level = "READY", 0
            return to_bits(self.atqa)
        if command == 0x52 and self.state in ("IDLE", "HALT"):  # WUPA
            self.halted = self.state == "HALT"
            self.state, self.level = "READY", 0
            return to_bits(self.atqa)
        if self.state != "HALT":
            self._other()
        return None

    def _select(self, data: bytes, nbits: int) -> Bits | None:
        if self.state != "READY":
            self._other()
            return None
        if _SEL[data[0]] != self.level:
            return None
        nvb = data[1]
        known = ((nvb >> 4) - 2) * 8 + (nvb & 0x0F)
        block = self.levels[self.level]
        if nvb == 0x70 and nbits == 72:
            if crc_a(data[:9]) != 0 or data[2:7] != block:
                return None
            if self.level < len(self.levels) - 1:
                self.level += 1
                return to_bits(with_crc([0x04]))
            self.state = "ACTIVE"
            return to_bits(with_crc([self.sak]))
        if not 0 <= known < 40 or nbits != 16 + known:
            return None
        mine = to_bits(block)
        if to_bits(data[2:], known) != mine[:known]:
            return None
        return mine[known:]

    def _mifare(self, frame: bytes) -> Bits | None:
        if self.pending_write is not None:
            block, self.pending_write = self.pending_write, None
            if len(frame) == 16:
                self.blocks[block][:] = frame
                return [0, 1, 0, 1]  # ACK 0xA
            return [0, 0, 0, 0]
        command = frame[0]
        if command == 0x30 and len(frame) == 2 and frame[1] < 64:
            if self.auth_sector != frame[1] // 4:
                self._other()
                return [0, 0, 1, 0]  # NAK 0x4
            return to_bits(with_crc(bytes(self.blocks[frame[1]])))
        if command == 0xA0 and len(frame) == 2 and frame[1] < 64:
            if self.auth_sector != frame[1] // 4 or frame[1] == 0:
                return [0, 0, 1, 0]
            self.pending_write = frame[1]
            return [0, 1, 0, 1]
        self._other()
        return None

    def authenticate(self, block: int, key: bytes, uid4: bytes) -> bool:
        """MFAuthent with key A: True if the card is ACTIVE, the UID and the key match."""
        if self.state != "ACTIVE" or not 0 <= block < 64:
            return False
        if uid4 != self.uid[-4:] or bytes(key) != self.key:
            return False
        self.auth_sector = block // 4
        return True


class RC522Emulator:
    """The chip. Give it to a fake spidev; put cards in its field with :meth:`add_card`.

    ``clock`` (seconds, monotonic) times the chip's timer: use the same ManualClock as the
    driver for deterministic tests. ``reset_level`` returns the level of the NRSTPD pin (low:
    hard power-down; rising: power-on reset). ``transfers`` counts SPI transfers.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        version: int = 0x92,
        seed: int = 0,
        reset_level: Callable[[], bool] | None = None,
    ) -> None:
        self.clock = clock
        self.version = version
        self.reset_level = reset_level
        self.rng = random.Random(seed)
        self.cards: list[SimCard] = []
        self.fault: str | None = None
        self.transfers = 0
        self._lock = threading.RLock()
        self._down = False
        self._power_on_reset()

    # ------------------------------------------------------------------ the world

    def add_card(self, card: SimCard | bytes) -> SimCard:
        """Put a card in the field (it powers up in IDLE if the antenna is on)."""
        if not isinstance(card, SimCard):
            card = SimCard(card)
        with self._lock:
            card.power_on()
            self.cards.append(card)
        return card

    def remove_card(self, uid: bytes | None = None) -> None:
        """Take ``uid`` (or every card) out of the field."""
        with self._lock:
            if uid is None:
                self.cards.clear()
            else:
                self.cards = [card for card in self.cards if card.uid != bytes(uid)]

    def set_fault(self, mode: str | None) -> None:
        """``"raise"``, ``"garbage"``, ``"vanish"`` or None (healthy)."""
        if mode not in (None, "raise", "garbage", "vanish"):
            raise ValueError(f"unknown reader fault {mode!r}: use raise, garbage, vanish or None")
        with self._lock:
            self.fault = mode

    @property
    def antenna_on(self) -> bool:
        return bool(self.regs[TxControlReg] & 0x03)

    # ------------------------------------------------------------------ SPI

    def xfer2(self, data: list[int]) -> list[int]:
        """One SPI transfer (chip select held for the whole list)."""
        with self._lock:
            self.transfers += 1
            if self.fault == "raise":
                raise OSError(errno.EIO, "Input/output error")
            powered_down = self.reset_level is not None and not self.reset_level()
            if self.fault == "vanish" or powered_down:
                self._down = True
                return [0] * len(data)
            if self._down:
                self._down = False
                self._power_on_reset()
            if self.fault == "garbage":
                return [0] + [self.rng.randrange(256) for _ in data[1:]]
            if not data:
                return []
            if data[0] & 0x80:
                out = [0]
                for byte in data[:-1]:
                    out.append(self._read((byte >> 1) & 0x3F) if byte & 0x80 else 0)
                return out
            address = (data[0] >> 1) & 0x3F
            for value in data[1:]:
                self._write(address, value & 0xFF)
            return [0] * len(data)

    # ------------------------------------------------------------------ registers

    def _power_on_reset(self) -> None:
        self.regs = [0] * 64
        for address, value in RESET_VALUES.items():
            self.regs[address] = value
        self.fifo: deque[int] = deque()
        self._command = CMD_IDLE
        self._timer_expiry: float | None = None
        self._timer_start = 0.0
        self._crc: int | None = None
        for card in self.cards:
            card.power_on()

    def _read(self, address: int) -> int:
        if address == ComIrqReg:
            self._update_timer()
            return self.regs[ComIrqReg] & 0x7F
        if address == DivIrqReg:
            return self.regs[DivIrqReg] & 0x7F
        if address == FIFODataReg:
            return self.fifo.popleft() if self.fifo else 0
        if address == FIFOLevelReg:
            return len(self.fifo)
        if address == CommandReg:
            return (self.regs[CommandReg] & 0x30) | self._command
        if address == Status1Reg:
            self._update_timer()
            running = 0x08 if self._timer_expiry is not None else 0
            crc_ready = 0x20 if self._crc is not None or self._command != CMD_CALC_CRC else 0
            irq = 0x10 if self.regs[ComIrqReg] & self.regs[ComIEnReg] & 0x7F else 0
            return crc_ready | irq | running | 0x01
        if address == Status2Reg:
            return self.regs[Status2Reg] & 0xCF
        if address in (TCounterValueRegH, TCounterValueRegL):
            ticks = self._timer_ticks_left()
            return (ticks >> 8) & 0xFF if address == TCounterValueRegH else ticks & 0xFF
        if address == VersionReg:
            return self.version
        return self.regs[address]

    def _write(self, address: int, value: int) -> None:
        if address == CommandReg:
            self.regs[CommandReg] = value & 0x30
            self._start_command(value & 0x0F)
        elif address in (ComIrqReg, DivIrqReg):
            if value & 0x80:
                self.regs[address] |= value & 0x7F
            else:
                self.regs[address] &= ~value & 0x7F
        elif address == FIFODataReg:
            if self._command == CMD_CALC_CRC:
                self._crc_feed([value])
            elif len(self.fifo) >= FIFO_SIZE:
                self.regs[ErrorReg] |= ERR_BUFFER_OVFL
            else:
                self.fifo.append(value)
        elif address == FIFOLevelReg:
            if value & 0x80:
                self.fifo.clear()
                self.regs[ErrorReg] &= ~ERR_BUFFER_OVFL & 0xFF
        elif address == BitFramingReg:
            self.regs[BitFramingReg] = value
            if value & 0x80 and self._command == CMD_TRANSCEIVE:
                self._transceive()
        elif address == ControlReg:
            if value & 0x80:
                self._timer_expiry = None
            if value & 0x40:
                self._start_timer()
            self.regs[ControlReg] = (self.regs[ControlReg] & 0x07) | (value & 0x30)
        elif address == Status2Reg:
            self.regs[Status2Reg] = (self.regs[Status2Reg] & 0x08 & value) | (value & 0xC0)
        elif address == CollReg:
            self.regs[CollReg] = (self.regs[CollReg] & 0x7F) | (value & 0x80)
        elif address == TxControlReg:
            was_on = self.antenna_on
            self.regs[TxControlReg] = value
            if was_on != self.antenna_on:
                for card in self.cards:
                    card.power_on()  # field switched: cards lose power or power up
        elif address in (ErrorReg, Status1Reg, VersionReg):
            pass  # read-only
        else:
            self.regs[address] = value

    # ------------------------------------------------------------------ timer

    def _timer_period(self) -> float | None:
        prescaler = ((self.regs[TModeReg] & 0x0F) << 8) | self.regs[TPrescalerReg]
        reload = (self.regs[TReloadRegH] << 8) | self.regs[TReloadRegL]
        if reload == 0:
            return None
        return (2 * prescaler + 1) * (reload + 1) / CLOCK_HZ

    def _start_timer(self) -> None:
        period = self._timer_period()
        self._timer_start = self.clock()
        self._timer_expiry = None if period is None else self._timer_start + period

    def _update_timer(self) -> None:
        if self._timer_expiry is not None and self.clock() >= self._timer_expiry:
            self._timer_expiry = None
            self.regs[ComIrqReg] |= IRQ_TIMER

    def _timer_ticks_left(self) -> int:
        self._update_timer()
        if self._timer_expiry is None:
            return 0
        prescaler = ((self.regs[TModeReg] & 0x0F) << 8) | self.regs[TPrescalerReg]
        tick = (2 * prescaler + 1) / CLOCK_HZ
        return max(0, min(0xFFFF, int((self._timer_expiry - self.clock()) / tick)))

    # ------------------------------------------------------------------ commands

    def _start_command(self, command: int) -> None:
        if command == CMD_NO_CHANGE:
            return
        self._command = command
        if command == CMD_IDLE:
            self._crc = None
        elif command == CMD_SOFT_RESET:
            self._power_on_reset()
        elif command == CMD_CALC_CRC:
            self._crc = self._crc_preset()
            data = list(self.fifo)
            self.fifo.clear()
            self._crc_feed(data)
        elif command == CMD_TRANSMIT:
            self._exchange(expect_answer=False)
            self._command = CMD_IDLE
            self.regs[ComIrqReg] |= IRQ_IDLE
        elif command == CMD_TRANSCEIVE:
            if self.regs[BitFramingReg] & 0x80:
                self._transceive()
        elif command == CMD_MF_AUTHENT:
            self._mf_authent()
        elif command in (CMD_MEM, CMD_RANDOM_ID, CMD_RECEIVE):
            if command != CMD_RECEIVE:
                self._command = CMD_IDLE
                self.regs[ComIrqReg] |= IRQ_IDLE
        else:  # unknown command: back to Idle with IdleIRq
            self._command = CMD_IDLE
            self.regs[ComIrqReg] |= IRQ_IDLE

    def _crc_preset(self) -> int:
        return (0x0000, 0x6363, 0xA671, 0xFFFF)[self.regs[ModeReg] & 0x03]

    def _crc_feed(self, data: list[int]) -> None:
        self._crc = crc_a(data, self._crc if self._crc is not None else self._crc_preset())
        self.regs[CRCResultRegL] = self._crc & 0xFF
        self.regs[CRCResultRegH] = self._crc >> 8
        self.regs[DivIrqReg] |= IRQ_CRC

    def _mf_authent(self) -> None:
        data = bytes(self.fifo)
        self.fifo.clear()
        ok = False
        if len(data) >= 12 and data[0] in (0x60, 0x61) and self.antenna_on:
            for card in self.cards:
                if card.authenticate(data[1], data[2:8], data[8:12]):
                    ok = True
        if ok:
            self.regs[Status2Reg] |= 0x08
        else:
            self.regs[ErrorReg] |= ERR_PROTOCOL
            self.regs[ComIrqReg] |= IRQ_ERR
        self._command = CMD_IDLE
        self.regs[ComIrqReg] |= IRQ_IDLE

    def _transceive(self) -> None:
        self._exchange(expect_answer=True)

    def _exchange(self, *, expect_answer: bool) -> None:
        frame = bytes(self.fifo)
        self.fifo.clear()
        framing = self.regs[BitFramingReg]
        tx_last = framing & 0x07
        rx_align = (framing >> 4) & 0x07
        if self.regs[TxModeReg] & 0x80 and frame and tx_last == 0:
            frame = with_crc(frame)
        nbits = (len(frame) - 1) * 8 + (tx_last or 8) if frame else 0
        self.regs[ErrorReg] = 0
        self.regs[CollReg] = (self.regs[CollReg] & 0x80) | 0x20
        self.regs[ComIrqReg] |= IRQ_TX
        answers: list[Bits] = []
        if self.antenna_on and nbits:
            for card in list(self.cards):
                answer = card.receive(frame, nbits)
                if answer:
                    answers.append(answer)
        if self.regs[TModeReg] & 0x80:
            self._start_timer()
        if not expect_answer or not answers:
            return
        self._timer_expiry = None  # TAuto: the timer stops when a frame starts arriving
        bits, collision = self._merge(answers)
        data = from_bits([0] * rx_align + bits)
        if self.regs[RxModeReg] & 0x80 and len(bits) >= 24:
            if crc_a(data) != 0:
                self.regs[ErrorReg] |= ERR_CRC
            data = data[:-2]
        for byte in data:
            if len(self.fifo) < FIFO_SIZE:
                self.fifo.append(byte)
            else:
                self.regs[ErrorReg] |= ERR_BUFFER_OVFL
        self.regs[ControlReg] = (self.regs[ControlReg] & 0xF8) | ((rx_align + len(bits)) % 8)
        if collision is not None:
            self.regs[ErrorReg] |= ERR_COLL
            position = rx_align + collision + 1
            if position <= 32:
                self.regs[CollReg] = (self.regs[CollReg] & 0x80) | (position & 0x1F)
        if self.regs[ErrorReg]:
            self.regs[ComIrqReg] |= IRQ_ERR
        self.regs[ComIrqReg] |= IRQ_RX

    def _merge(self, answers: list[Bits]) -> tuple[Bits, int | None]:
        """Superpose the answers of several cards; report the first colliding bit."""
        length = max(len(answer) for answer in answers)
        keep_after = bool(self.regs[CollReg] & 0x80)
        bits: Bits = []
        collision: int | None = None
        for i in range(length):
            values = {answer[i] for answer in answers if i < len(answer)}
            if collision is not None and not keep_after:
                bits.append(0)
            elif len(values) > 1:
                if collision is None:
                    collision = i
                bits.append(1)
            else:
                bits.append(values.pop())
        return bits, collision


__all__ = ["RC522Emulator", "SimCard", "from_bits", "to_bits"]
