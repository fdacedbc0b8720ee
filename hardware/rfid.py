"""Our RC522 (MFRC522) card reader driver, on the ``mfrc522`` package's register access.

Wiring (SPI0, CE0; the reader is a 3.3 V part, never feed it 5 V)::

    RC522   Pi header         RC522   Pi header
    SDA     pin 24 (BCM 8, CE0)  MISO  pin 21 (BCM 9)
    SCK     pin 23 (BCM 11)      GND   pin 20
    MOSI    pin 19 (BCM 10)      RST   pin 22 (BCM 25, ``reader_reset_pin``)
    IRQ     not connected        3.3V  pin 17

What it fixes compared with ``SimpleMFRC522`` (see HARDWARE-NOTES.md):

- an empty poll ends at the chip's timer interrupt: the chip's timer is set to 5 ms, the driver
  sleeps until an answer or the timer is due, and reads the IRQ register about twice (about
  nine SPI transfers per empty poll instead of about 2,000);
- one polling thread with a stop event and an interval (``reader_poll_s``, default 50 ms);
  no busy loop; never ``GPIO.cleanup()``: the reset pin is a gpiozero output named in BCM,
  whatever mode RPi.GPIO may be in;
- the whole UID over all cascade levels (4, 7 and 10 bytes, without BCC bytes), with bit
  collisions between several cards resolved;
- a read card is put to sleep with HLTA; while it is held, each poll wakes it with WUPA and
  SELECTs it by its UID, then halts it again (and every other card the WUPA woke, even when
  the SELECT found nothing, so that several cards on the reader never leave each other
  half-awake). A card counts as removed after ``reader_miss_limit`` polls in a row without
  it, so a held card is one tap, and the same card tapped again after it left is a new one;
- errors become :class:`~hardware.errors.ReaderError` (or ReaderUnavailable when no chip
  answers) delivered to ``on_error`` once per outage; the thread re-initialises the chip
  (hard reset through RST) every ``reader_retry_s`` seconds until it answers again, then
  calls ``on_recover``. Cards held through a short outage (one the first retry ends) stay
  one tap; after a longer one the reader forgets what was on it, so a card put back during
  the outage is a new tap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from hardware import _platform
from hardware.clock import Clock
from hardware.errors import HardwareError, ReaderError, ReaderUnavailable
from hardware.interfaces import CardReader, ErrorCallback, OutputLine, Tap, TapCallback
from hardware.spec import ReaderSpec
from hardware.uid import CASCADE_TAG, UID_LENGTHS, bcc, cascade_levels, crc_a, with_crc

logger = logging.getLogger(__name__)

# Registers.
CommandReg = 0x01
ComIrqReg = 0x04
ErrorReg = 0x06
FIFODataReg = 0x09
FIFOLevelReg = 0x0A
ControlReg = 0x0C
BitFramingReg = 0x0D
CollReg = 0x0E
ModeReg = 0x11
TxModeReg = 0x12
RxModeReg = 0x13
TxControlReg = 0x14
TxASKReg = 0x15
TModeReg = 0x2A
TPrescalerReg = 0x2B
TReloadRegH = 0x2C
TReloadRegL = 0x2D
VersionReg = 0x37

CMD_IDLE = 0x00
CMD_TRANSMIT = 0x04
CMD_TRANSCEIVE = 0x0C

IRQ_RX = 0x20
IRQ_TIMER = 0x01
ERR_COLL = 0x08
ERR_RF = 0x17  # BufferOvfl, CRCErr, ParityErr, ProtocolErr

REQA = 0x26
WUPA = 0x52
SEL_CODES = (0x93, 0x95, 0x97)
HLTA = with_crc(b"\x50\x00")

#: Timer: TAuto, prescaler 0x0A9 (25 us ticks), reload 200 -> 5.025 ms without an answer.
TMODE = 0x80
TPRESCALER = 0xA9
TRELOAD = 200
TIMEOUT_S = (2 * TPRESCALER + 1) * (TRELOAD + 1) / 13.56e6
#: No IRQ at all this long after a transmission means the chip is not running its timer.
BACKSTOP_S = 5 * TIMEOUT_S
BIT_S = 1 / 106_000  # one bit on the air at 106 kbit/s

#: VersionReg values of genuine chips (0x91, 0x92) and of common clones.
KNOWN_VERSIONS = {
    0x91: "MFRC522 v1.0",
    0x92: "MFRC522 v2.0",
    0x88: "FM17522",
    0x89: "FM17522E",
    0xB2: "FM17522 (clone)",
    0x12: "MFRC522 (counterfeit)",
}


class _ChipSilent(Exception):
    """No interrupt at all: the chip is not running (vanished, reset, or garbage)."""


class _Rx:
    __slots__ = ("collision", "data", "errors", "positions")

    def __init__(self, data: bytes, positions: int, errors: int, collision: int | None) -> None:
        self.data = data
        self.positions = positions  # bit positions used in the FIFO, RxAlign bits included
        self.errors = errors
        self.collision = collision  # 1-based bit position (RxAlign included) or None


class RC522Reader(CardReader):
    """The RC522 on SPI. ``open_spi()`` returns an object with ``xfer2`` (spidev.SpiDev);
    ``chip_class()`` returns ``mfrc522.MFRC522`` (whose register access is used);
    ``reset_line`` drives RST (active = chip running). Opened lazily at the first poll.

    ``presence_keep_s`` (seconds, default ``retry_s + 1``): the cards on the reader are
    remembered across an outage at most this long (from the last successful poll to the
    re-initialisation that ends the outage); after a longer one the present set is cleared,
    and the cards found on the reader then are new taps.
    """

    #: Added to ``retry_s`` for the default :attr:`presence_keep_s` (seconds).
    PRESENCE_MARGIN_S = 1.0

    def __init__(
        self,
        spec: ReaderSpec,
        *,
        open_spi: Callable[[], Any],
        chip_class: Callable[[], type],
        reset_line: OutputLine | None,
        clock: Clock,
    ) -> None:
        self.spec = spec
        self._open_spi = open_spi
        self._chip_class = chip_class
        self._reset_line = reset_line
        self._clock = clock
        self._lock = threading.RLock()
        self._spi: Any = None
        self._chip: Any = None
        self._ready = False
        self._suspect = False
        self._last_check = 0.0
        self._present: dict[bytes, int] = {}  # UID -> polls missed in a row
        self._last_ok: float | None = None  # clock time of the last successful poll
        self.presence_keep_s = spec.retry_s + self.PRESENCE_MARGIN_S
        self._healthy = True
        self._outage_kind: type[HardwareError] | None = None
        self._on_tap: TapCallback | None = None
        self._on_error: ErrorCallback | None = None
        self._on_recover: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.version: int | None = None
        self.polls = 0

    # ------------------------------------------------------------------ public API

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def present(self) -> tuple[bytes, ...]:
        """UIDs of the cards currently considered on the reader."""
        with self._lock:
            return tuple(self._present)

    def start(
        self,
        on_tap: TapCallback,
        on_error: ErrorCallback | None = None,
        on_recover: Callable[[], None] | None = None,
        *,
        thread: bool = True,
    ) -> None:
        if self._closed:
            raise ReaderError("the reader was closed; open the cabinet again")
        self._on_tap, self._on_error, self._on_recover = on_tap, on_error, on_recover
        if not thread or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rc522-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
            if thread.is_alive():  # pragma: no cover - a wedged SPI call
                logger.error("the reader thread did not stop within 5 s")

    @property
    def running(self) -> bool:
        """True while the polling thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> int:
        """Open and initialise the reader if needed, check that the chip answers sensibly,
        and return its VersionReg. Raises ReaderError / ReaderUnavailable."""
        with self._lock:
            if self._closed:
                raise ReaderError("the reader was closed; open the cabinet again")
            try:
                if self._ready:
                    self._verify_chip()
                else:
                    self._ensure_ready()
            except HardwareError:
                self._ready = False
                raise
            except OSError as exc:
                self._drop_spi()
                raise ReaderError(f"SPI transfer to the RC522 failed ({exc})") from exc
            return self.version or 0

    def poll_once(self) -> Tap | None:
        with self._lock:
            if self._closed:
                raise ReaderError("the reader was closed; open the cabinet again")
            try:
                return self._poll()
            except HardwareError:
                self._ready = False
                raise
            except OSError as exc:
                self._ready = False
                self._drop_spi()
                raise ReaderError(
                    f"SPI transfer to the RC522 failed ({exc}); check the wiring and the "
                    "3.3 V supply"
                ) from exc

    def step(self) -> Tap | None:
        try:
            tap = self.poll_once()
        except HardwareError as exc:
            self._report(exc)
            return None
        except Exception as exc:  # never let a bug kill the reader thread
            logger.exception("unexpected error while polling the reader")
            self._report(ReaderError(f"unexpected error while polling the reader: {exc!r}"))
            return None
        if not self._healthy:
            self._healthy = True
            self._outage_kind = None
            logger.info("card reader recovered")
            self._call(self._on_recover)
        if tap is not None and self._on_tap is not None:
            self._call(self._on_tap, tap)
        return tap

    def close(self) -> None:
        if self._closed:
            return
        self.stop()
        with self._lock:
            self._closed = True
            self._drop_spi()
            if self._reset_line is not None:
                try:
                    self._reset_line.close()  # RST low: the chip powers down
                except Exception:
                    logger.exception("closing the reader reset pin failed")

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        interval = self.spec.poll_s
        while not self._stop.is_set():
            started = self._clock.monotonic()
            self.step()
            if self._healthy:
                wait = max(0.0, interval - (self._clock.monotonic() - started))
            else:
                wait = max(interval, self.spec.retry_s)
            if self._stop.wait(wait):
                break

    def _report(self, exc: HardwareError) -> None:
        """Report the first error of an outage to ``on_error``; log the others (a reader
        returning garbage fails differently every time: one report, not one per retry)."""
        text = f"{type(exc).__name__}: {exc}"
        if not self._healthy:
            if type(exc) is not self._outage_kind:
                self._outage_kind = type(exc)
                logger.warning("card reader still failing, now with: %s", text)
            else:
                logger.debug("card reader still failing: %s", text)
            return
        self._healthy = False
        self._outage_kind = type(exc)
        logger.warning("card reader error: %s", text)
        self._call(self._on_error, exc)

    @staticmethod
    def _call(callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("reader callback %r failed", callback)

    # ------------------------------------------------------------------ polling

    def _poll(self) -> Tap | None:
        self._ensure_ready()
        self.polls += 1
        self._suspect = False
        if (
            self.spec.health_check_s
            and self._clock.monotonic() - self._last_check >= self.spec.health_check_s
        ):
            self._verify_chip()
        # Presence is updated on a copy, kept only if the whole poll succeeds: a card found by
        # a poll that fails later is found again (and tapped) by the next one.
        present = dict(self._present)
        try:
            tap = None
            seen: set[bytes] = set()
            atqa = self._request(REQA, read_atqa=True)
            if atqa is not None:
                found = self._read_uid()
                self._halt()  # the card read, or the cards that answered if the read failed
                if found is not None:
                    uid, sak = found
                    seen.add(uid)
                    if uid not in present:
                        tap = Tap(uid=uid, at=self._clock.monotonic(), sak=sak, atqa=atqa)
                        logger.debug("card %s arrived", tap.uid_hex)
                    present[uid] = 0
            for uid in list(present):
                if uid in seen:
                    continue
                if self._still_there(uid):
                    present[uid] = 0
                else:
                    present[uid] += 1
                    if present[uid] >= self.spec.miss_limit:
                        del present[uid]
                        logger.debug("card %s left", uid.hex().upper())
        except _ChipSilent:
            if self._verify_chip():
                self._last_ok = self._clock.monotonic()
                return None  # it had lost its settings and was reconfigured: poll again
            raise ReaderError(
                "the RC522 stopped signalling interrupts; it will be re-initialised"
            ) from None
        if self._suspect:
            self._verify_chip()
        self._present = present
        self._last_ok = self._clock.monotonic()
        return tap

    def _after_reinit(self) -> None:
        """The chip was (re)initialised: its field went off and on, so every card in it is
        back in IDLE and answers REQA. Keep the present set across a short outage; after a
        longer one forget it, so that whatever is on the reader now is a new tap."""
        if not self._present or self._last_ok is None:
            return
        down = self._clock.monotonic() - self._last_ok
        if down > self.presence_keep_s:
            logger.info(
                "the reader was down %.1f s: forgetting the %d card(s) it had seen",
                down,
                len(self._present),
            )
            self._present.clear()

    def _request(self, command: int, *, read_atqa: bool = False) -> bytes | None:
        rx = self._transceive(bytes([command]), tx_last_bits=7, read_fifo=read_atqa)
        if rx is None:
            return None
        if rx.errors & ERR_RF:
            self._suspect = True
            return None
        if rx.positions != 16 and not rx.errors & ERR_COLL:
            self._suspect = True
            return None
        return rx.data if read_atqa else b""

    def _read_uid(self) -> tuple[bytes, int] | None:
        uid = b""
        for sel in SEL_CODES:
            block = self._anticollision(sel)
            if block is None:
                return None
            sak = self._select(sel, block)
            if sak is None:
                return None
            if sak & 0x04:
                if block[0] != CASCADE_TAG:
                    self._suspect = True
                    return None
                uid += block[1:4]
                continue
            uid += block[:4]
            if len(uid) not in UID_LENGTHS:
                self._suspect = True
                return None
            return uid, sak
        self._suspect = True
        return None

    def _anticollision(self, sel: int) -> bytes | None:
        buf = bytearray(5)
        known = 0
        for _ in range(33):
            full, part = divmod(known, 8)
            frame = bytes([sel, ((2 + full) << 4) | part]) + bytes(buf[: full + (1 if part else 0)])
            rx = self._transceive(frame, tx_last_bits=part, rx_align=part)
            if rx is None:
                return None
            if rx.errors & ERR_RF:
                self._suspect = True
                return None
            for i, byte in enumerate(rx.data):
                index = full + i
                if index >= len(buf):
                    break
                if i == 0 and part:
                    low = (1 << part) - 1
                    buf[index] = (buf[index] & low) | (byte & ~low & 0xFF)
                else:
                    buf[index] = byte
            if rx.collision is None:
                if full * 8 + rx.positions != 40 or bcc(buf[:4]) != buf[4]:
                    self._suspect = True
                    return None
                return bytes(buf)
            position = full * 8 + rx.collision
            if position <= known or position > 32:
                self._suspect = True
                return None
            index, bit = divmod(position - 1, 8)
            buf[index] |= 1 << bit
            known = position
        return None

    def _select(self, sel: int, block: bytes) -> int | None:
        rx = self._transceive(with_crc(bytes([sel, 0x70]) + block))
        if rx is None:
            return None
        if rx.errors or rx.positions != 24 or crc_a(rx.data) != 0:
            self._suspect = True
            return None
        return rx.data[0]

    def _still_there(self, uid: bytes) -> bool:
        """WUPA, then SELECT ``uid`` directly. WUPA wakes every card in the field; whatever the
        SELECT found, HLTA puts the awake ones back to sleep (a card left READY ignores the
        next WUPA, and would miss its own presence check)."""
        if self._request(WUPA) is None:
            return False  # nothing answered: no card was woken
        found = True
        for sel, block in zip(SEL_CODES, cascade_levels(uid), strict=False):
            if self._select(sel, block + bytes([bcc(block)])) is None:
                found = False
                break
        self._halt()
        return found

    # ------------------------------------------------------------------ chip access

    def _write(self, register: int, value: int) -> None:
        self._chip.Write_MFRC522(register, value)

    def _read(self, register: int) -> int:
        return self._chip.Read_MFRC522(register)

    def _read_many(self, registers: list[int]) -> list[int]:
        # One SPI transfer: a read burst with several addresses (datasheet 8.1.2.1).
        answer = self._spi.xfer2([((r << 1) & 0x7E) | 0x80 for r in registers] + [0])
        return list(answer[1:])

    def _write_fifo(self, data: bytes) -> None:
        # One SPI transfer: a write burst into FIFODataReg.
        self._spi.xfer2([(FIFODataReg << 1) & 0x7E, *data])

    def _transceive(
        self,
        data: bytes,
        *,
        tx_last_bits: int = 0,
        rx_align: int = 0,
        read_fifo: bool = True,
    ) -> _Rx | None:
        framing = (rx_align << 4) | tx_last_bits
        self._write(CommandReg, CMD_IDLE)
        self._write(ComIrqReg, 0x7F)  # clear every IRQ bit (Set1 = 0)
        self._write(FIFOLevelReg, 0x80)  # flush the FIFO
        self._write_fifo(data)
        self._write(BitFramingReg, framing)
        self._write(CommandReg, CMD_TRANSCEIVE)
        self._write(BitFramingReg, framing | 0x80)  # StartSend
        sent = self._clock.monotonic()
        tx_bits = len(data) * 8
        first_wait = 0.0008 + 100 * BIT_S + tx_bits * BIT_S
        self._clock.sleep(first_wait)
        deadline = sent + tx_bits * BIT_S + TIMEOUT_S + 0.0005
        while True:
            irq = self._read(ComIrqReg)
            if irq & IRQ_RX:
                break
            if irq & IRQ_TIMER:
                return None
            now = self._clock.monotonic()
            if now - sent > BACKSTOP_S:
                raise _ChipSilent
            self._clock.sleep(max(0.001, deadline - now))
        errors, level, control, coll = self._read_many(
            [ErrorReg, FIFOLevelReg, ControlReg, CollReg]
        )
        last_bits = control & 0x07
        positions = level * 8 - ((8 - last_bits) if last_bits else 0)
        collision = None
        if errors & ERR_COLL:
            collision = (coll & 0x1F) or 32
            if coll & 0x20:  # CollPosNotValid
                collision = 33
        payload = b""
        if read_fifo and level:
            count = min(level, 64)
            payload = bytes(self._read_many([FIFODataReg] * count))
        return _Rx(payload, positions, errors & ~ERR_COLL & 0xFF, collision)

    def _halt(self) -> None:
        # HLTA with the Transmit command: the card never answers it, so do not wait for a
        # timeout; just give the transmission (4 bytes) time to leave before the next command.
        self._write(CommandReg, CMD_IDLE)
        self._write(FIFOLevelReg, 0x80)
        self._write_fifo(HLTA)
        self._write(BitFramingReg, 0x00)
        self._write(CommandReg, CMD_TRANSMIT)
        self._clock.sleep(0.0002 + len(HLTA) * 8 * BIT_S)

    # ------------------------------------------------------------------ (re)initialisation

    def _drop_spi(self) -> None:
        spi, self._spi, self._chip = self._spi, None, None
        self._ready = False
        if spi is not None:
            try:
                spi.close()
            except Exception:
                logger.debug("closing the SPI device failed", exc_info=True)

    def _open_device(self) -> Any:
        path = f"/dev/spidev{self.spec.bus}.{self.spec.device}"
        try:
            return self._open_spi()
        except FileNotFoundError as exc:
            raise ReaderUnavailable(
                f"{path} does not exist: enable SPI (raspi-config > Interface Options > SPI, "
                "or dtparam=spi=on in /boot/firmware/config.txt) and reboot"
            ) from exc
        except OSError as exc:
            raise ReaderUnavailable(f"cannot open {path}: {exc}") from exc

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        try:
            if self._spi is None:
                spi = self._open_device()
                self._chip = _platform.register_access(self._chip_class(), spi)
                self._spi = spi
            if self._reset_line is not None:
                self._reset_line.off()  # RST low: hard reset
                self._clock.sleep(0.001)
                self._reset_line.on()
                self._clock.sleep(0.05)  # oscillator start-up
            self._chip.MFRC522_Reset()  # SoftReset
            self._clock.sleep(0.05)
            self._configure()
            self._verify_chip(reconfigure=False)
        except OSError as exc:
            self._drop_spi()
            raise ReaderError(
                f"SPI transfer to the RC522 failed ({exc}); check the wiring and the 3.3 V supply"
            ) from exc
        self._ready = True
        self._after_reinit()
        logger.info(
            "RC522 ready on SPI %d.%d (%s)",
            self.spec.bus,
            self.spec.device,
            KNOWN_VERSIONS.get(self.version or 0, "unknown"),
        )

    def _configure(self) -> None:
        self._write(TModeReg, TMODE)
        self._write(TPrescalerReg, TPRESCALER)
        self._write(TReloadRegH, TRELOAD >> 8)
        self._write(TReloadRegL, TRELOAD & 0xFF)
        self._write(TxASKReg, 0x40)  # 100 % ASK
        self._write(ModeReg, 0x3D)  # CRC preset 0x6363
        self._write(TxModeReg, 0x00)  # 106 kbit/s, no hardware CRC
        self._write(RxModeReg, 0x00)
        self._write(CollReg, 0x00)  # ValuesAfterColl = 0: bits after a collision read as 0
        self._chip.SetBitMask(TxControlReg, 0x03)  # antenna on

    def _verify_chip(self, *, reconfigure: bool = True) -> bool:
        """Check that the chip answers with a known version and still holds our settings.

        Returns True if the settings had been lost and were written again. Raises
        ReaderUnavailable (no chip) or ReaderError (inconsistent answers).
        """
        self._last_check = self._clock.monotonic()
        where = f"SPI {self.spec.bus}.{self.spec.device}"
        for attempt in range(2):
            version, tmode, reload_low, txcontrol = self._read_many(
                [VersionReg, TModeReg, TReloadRegL, TxControlReg]
            )
            if version in (0x00, 0xFF):
                raise ReaderUnavailable(
                    f"no RC522 answers on {where} (VersionReg {version:#04x}): check that it "
                    "is connected and powered (3.3 V), and the SDA/SCK/MOSI/MISO/RST wiring"
                )
            if version not in KNOWN_VERSIONS:
                raise ReaderError(
                    f"the RC522 on {where} returns inconsistent data (VersionReg "
                    f"{version:#04x}); check the wiring, the SPI speed and the supply"
                )
            self.version = version
            settings_ok = (
                tmode == TMODE and reload_low == TRELOAD & 0xFF and txcontrol & 0x03 == 0x03
            )
            if settings_ok:
                return attempt == 1
            if not reconfigure or attempt:
                break
            logger.warning("the RC522 lost its settings (reset or power glitch); reconfiguring")
            self._configure()
        raise ReaderError(
            f"the RC522 on {where} does not keep its register settings; check the wiring and "
            "the 3.3 V supply"
        )


__all__ = ["KNOWN_VERSIONS", "TIMEOUT_S", "RC522Reader"]
