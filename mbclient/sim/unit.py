"""One simulated Modbus slave: register banks, write rules and live fault switches.

A ``SimUnit`` knows nothing about wires. ``respond(pdu)`` turns a request PDU into a
``Reply`` (the reply PDU plus the faults chosen for this one reply); the RTU/ASCII line
and the TCP/UDP servers frame it. Faults are switches a test flips while the bus runs,
so one unit can go to sleep, start answering exceptions or garble its CRC mid-scenario.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass

from ..errors import FrameError, ModbusExceptionResponse
from ..modbus.framing import ascii_frame, crc16, mbap_frame, rtu_frame
from ..modbus.pdu import (
    READ_HOLDING,
    READ_INPUT,
    READ_WRITE_MULTIPLE,
    WRITE_MULTIPLE,
    WRITE_SINGLE,
    Request,
    exception_response,
    parse_request,
    registers_response,
    write_response,
)

HOLDING = "holding"
INPUT = "input"

# Exception codes a slave answers (Modbus application protocol v1.1b3, section 7).
ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4

WriteHook = Callable[[int, list[int]], "int | None"]
ValueRule = Container[int] | Callable[[int], bool] | None


@dataclass(slots=True)
class UnitCounters:
    """What happened at one unit; tests assert on these instead of guessing from timing."""

    requests: int = 0  # well-formed frames addressed to this unit
    replies: int = 0  # replies put on the wire (including exception replies and faulty ones)
    exceptions: int = 0
    silent: int = 0  # requests ignored because the unit was asleep
    busy: int = 0  # requests ignored because the unit was still answering the previous one
    writes: int = 0  # accepted writes (fc 6/16/23 and broadcasts)
    bad_crc: int = 0
    noise: int = 0
    truncated: int = 0
    late: int = 0
    wrong_unit: int = 0


@dataclass(slots=True)
class Reply:
    """A reply PDU and the faults injected into it; servers turn it into bytes."""

    unit: int  # address the frame carries (``wrong_unit`` changes it)
    pdu: bytes
    delay: float  # seconds from the end of the request to the first byte of the reply
    bad_crc: bool = False
    noise_before: bytes = b""
    noise_after: bytes = b""
    truncate_to: int | None = None  # keep only this many bytes of the framed reply

    def encode(self, mode: str, tid: int = 0) -> bytes:
        """Frame for ``mode`` ("rtu", "ascii" or "mbap") with the faults applied."""
        if mode == "rtu":
            frame = bytearray(rtu_frame(self.unit, self.pdu))
            if self.bad_crc:
                # Flip a CRC bit: the length stays right, so a reader sees a CRC error,
                # not a timeout, which is what noise on a real line mostly produces.
                frame[-1] ^= 0x10
        elif mode == "ascii":
            frame = bytearray(ascii_frame(self.unit, self.pdu))
            if self.bad_crc:
                frame[-3] = ord("0") if frame[-3] != ord("0") else ord("1")  # last LRC digit
        elif mode == "mbap":
            frame = bytearray(mbap_frame(tid, self.unit, self.pdu))  # no checksum to spoil
        else:
            raise ValueError(f"unknown framing {mode!r}")
        if self.truncate_to is not None:
            del frame[self.truncate_to :]
        return self.noise_before + bytes(frame) + self.noise_after


def _table_name(table: str | int) -> str:
    if table in (HOLDING, READ_HOLDING, "h"):
        return HOLDING
    if table in (INPUT, READ_INPUT, "i"):
        return INPUT
    raise ValueError(f"unknown register table {table!r} (use 'holding' or 'input')")


class SimUnit:
    """A Modbus slave with sparse register banks and fault switches.

    Reads that touch an undefined register (or one inside ``missing``, given as
    ``(table, start, count)``) answer exception 2, as real meters and inverters do;
    ``strict=False`` reads them as 0 instead. ``max_read`` answers longer reads with
    exception 3. Writes are refused (exception 2) outside the ranges declared with
    ``allow_write``, and values a range's rule rejects answer exception 3.

    Fault switches (change them live): ``asleep`` (silent), ``exception`` (answer every
    request with that code), and per-reply probabilities ``bad_crc``, ``noise`` (1-4
    garbage bytes before or after), ``truncate``, ``wrong_unit``; ``late_by`` adds that
    many seconds to every reply. ``write_log`` holds ``(time, function, address, values)``
    of every accepted write, ``counters`` what happened.
    """

    def __init__(
        self,
        address: int,
        *,
        holding: dict[int, int] | None = None,
        input: dict[int, int] | None = None,  # noqa: A002 - the Modbus name of the table
        turnaround: float = 0.020,
        strict: bool = True,
        max_read: int | None = None,
        missing: Iterable[tuple[str, int, int]] = (),
        seed: int | None = None,
        name: str = "",
    ) -> None:
        if not 0 < address < 248:
            raise ValueError(f"unit address {address} outside 1..247")
        self.address = address
        self.name = name or f"unit {address}"
        self.holding: dict[int, int] = dict(holding or {})
        self.input: dict[int, int] = dict(input or {})
        self.turnaround = turnaround
        self.strict = strict
        self.max_read = max_read
        self.missing: list[tuple[str, range]] = []
        for table, start, count in missing:
            self.add_missing(table, start, count)
        self._writable: dict[int, ValueRule] = {}
        # -- live fault switches --------------------------------------------------------
        self.asleep = False
        self.exception: int | None = None
        self.bad_crc = 0.0
        self.noise = 0.0
        self.truncate = 0.0
        self.late_by: float | None = None
        self.wrong_unit = 0.0
        # -- hooks and records ----------------------------------------------------------
        self.on_write: WriteHook | None = None
        self.on_read: Callable[[str, int, int], None] | None = None  # refresh before a read
        self.write_log: list[tuple[float, int, int, list[int]]] = []
        self.counters = UnitCounters()
        self.rng = random.Random(address if seed is None else seed)
        self._at: float | None = None  # when the current request's last byte arrived

    def __repr__(self) -> str:
        return f"<SimUnit {self.address} {self.name!r}>"

    # -- register access ------------------------------------------------------------------
    def bank(self, table: str | int) -> dict[int, int]:
        return self.holding if _table_name(table) == HOLDING else self.input

    def set_u16(self, table: str | int, addr: int, value: int) -> None:
        self.bank(table)[addr] = int(value) & 0xFFFF

    def set_s16(self, table: str | int, addr: int, value: int) -> None:
        self.bank(table)[addr] = int(value) & 0xFFFF

    def set_u32(self, table: str | int, addr: int, value: int) -> None:
        v = int(value) & 0xFFFFFFFF
        bank = self.bank(table)
        bank[addr], bank[addr + 1] = v >> 16, v & 0xFFFF

    def set_s32(self, table: str | int, addr: int, value: int) -> None:
        self.set_u32(table, addr, int(value) & 0xFFFFFFFF)

    def set_f32(self, table: str | int, addr: int, value: float) -> None:
        hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
        bank = self.bank(table)
        bank[addr], bank[addr + 1] = hi, lo

    def set_text(self, table: str | int, addr: int, nregs: int, text: str) -> None:
        """ASCII, two characters per register, high byte first, padded with spaces."""
        raw = text.encode("ascii")[: 2 * nregs].ljust(2 * nregs, b" ")
        bank = self.bank(table)
        for i in range(nregs):
            bank[addr + i] = (raw[2 * i] << 8) | raw[2 * i + 1]

    def get_u16(self, table: str | int, addr: int) -> int:
        return self.bank(table)[addr]

    def get_u32(self, table: str | int, addr: int) -> int:
        bank = self.bank(table)
        return (bank[addr] << 16) | bank[addr + 1]

    def get_f32(self, table: str | int, addr: int) -> float:
        bank = self.bank(table)
        return struct.unpack(">f", struct.pack(">HH", bank[addr], bank[addr + 1]))[0]

    def define(self, table: str | int, start: int, count: int, value: int = 0) -> None:
        """Make ``count`` registers exist (readable) without overwriting existing values."""
        bank = self.bank(table)
        for a in range(start, start + count):
            bank.setdefault(a, value)

    def add_missing(self, table: str | int, start: int, count: int) -> None:
        """Registers that answer exception 2 even if a value is stored for them."""
        self.missing.append((_table_name(table), range(start, start + count)))

    def allow_write(self, start: int, count: int = 1, *, values: ValueRule = None) -> None:
        """Declare holding ``start..start+count-1`` writable; ``values`` is a container of
        allowed raw values or a predicate (None: any 16-bit value)."""
        for a in range(start, start + count):
            self._writable[a] = values
            self.holding.setdefault(a, 0)

    def writable(self, addr: int) -> bool:
        return addr in self._writable

    # -- request handling -----------------------------------------------------------------
    def _readable(self, table: str, address: int, count: int) -> bool:
        bank = self.holding if table == HOLDING else self.input
        for t, rng in self.missing:
            if t == table and address < rng.stop and rng.start < address + count:
                return False
        if self.strict:
            return all(a in bank for a in range(address, address + count))
        return True

    def _read(self, table: str, address: int, count: int) -> list[int] | int:
        if self.max_read is not None and count > self.max_read:
            return ILLEGAL_VALUE
        if self.on_read is not None:
            self.on_read(table, address, count)
        if not self._readable(table, address, count):
            return ILLEGAL_ADDRESS
        bank = self.holding if table == HOLDING else self.input
        return [bank.get(a, 0) for a in range(address, address + count)]

    def _write(self, function: int, address: int, values: list[int]) -> int | None:
        """Validate and apply a write; an exception code if refused."""
        for offset, value in enumerate(values):
            a = address + offset
            if a not in self._writable:
                return ILLEGAL_ADDRESS
            rule = self._writable[a]
            if rule is not None and not (rule(value) if callable(rule) else value in rule):
                return ILLEGAL_VALUE
        code = self.validate_write(address, list(values))
        if code:
            return code
        if self.on_write is not None:
            code = self.on_write(address, list(values))
            if code:
                return code
        for offset, value in enumerate(values):
            self.holding[address + offset] = value
        at = self._at if self._at is not None else time.monotonic()
        self.write_log.append((at, function, address, list(values)))
        self.counters.writes += 1
        self.applied_write(address, list(values))
        return None

    def validate_write(self, address: int, values: list[int]) -> int | None:
        """Device-model rules beyond per-register ranges (e.g. whole f32 parameters).

        Returns an exception code to refuse. Models override this; ``on_write`` stays free
        for tests.
        """
        return None

    def applied_write(self, address: int, values: list[int]) -> None:
        """Called after a write was stored (models react: a new power limit, ...)."""

    def handle(self, pdu: bytes, *, broadcast: bool = False) -> bytes | None:
        """Execute one request PDU and return the clean reply PDU (None: stay silent).

        Malformed PDUs get no answer, like a slave that drops a frame it cannot parse.
        A broadcast applies writes and never answers. Subclasses may override this (the
        signature is stable); ``respond`` and ``broadcast`` wrap it.
        """
        try:
            req = parse_request(pdu)
        except FrameError:
            return None
        except ModbusExceptionResponse as exc:
            return None if broadcast else exception_response(exc.function, exc.code)
        if broadcast:
            if req.function in (WRITE_SINGLE, WRITE_MULTIPLE) and self.exception is None:
                self._write(req.function, req.address, list(req.values))
            return None
        if self.exception is not None:
            return exception_response(req.function, self.exception)
        return self._execute(req)

    def _execute(self, req: Request) -> bytes:
        fc = req.function
        if fc in (READ_HOLDING, READ_INPUT):
            got = self._read(HOLDING if fc == READ_HOLDING else INPUT, req.address, req.count)
            return exception_response(fc, got) if isinstance(got, int) else registers_response(fc, got)
        if fc in (WRITE_SINGLE, WRITE_MULTIPLE):
            code = self._write(fc, req.address, list(req.values))
            return exception_response(fc, code) if code else write_response(req)
        if fc == READ_WRITE_MULTIPLE:  # the write happens before the read (spec 6.17)
            code = self._write(fc, req.write_address, list(req.values))
            if code:
                return exception_response(fc, code)
            got = self._read(HOLDING, req.address, req.count)
            return exception_response(fc, got) if isinstance(got, int) else registers_response(fc, got)
        return exception_response(fc, ILLEGAL_FUNCTION)

    def broadcast(self, pdu: bytes, *, at: float | None = None) -> None:
        """A request to address 0: writes applied (unless asleep), never answered."""
        if self.asleep:
            return
        self._at = at
        try:
            self.handle(pdu, broadcast=True)
        finally:
            self._at = None

    def respond(self, pdu: bytes, *, at: float | None = None) -> Reply | None:
        """``handle`` plus the fault switches: what this unit puts on the wire, if anything.

        ``at`` is when the request's last byte reached the unit on the emulated wire; it
        timestamps the write log.
        """
        c = self.counters
        c.requests += 1
        if self.asleep:
            c.silent += 1
            return None
        self._at = at
        try:
            out = self.handle(pdu)
        finally:
            self._at = None
        if out is None:
            return None
        c.replies += 1
        if out[0] & 0x80:
            c.exceptions += 1
        reply = Reply(self.address, out, self.turnaround)
        rng = self.rng
        if self.late_by:
            reply.delay += self.late_by
            c.late += 1
        if self.wrong_unit and rng.random() < self.wrong_unit:
            reply.unit = self.address % 247 + 1
            c.wrong_unit += 1
        if self.bad_crc and rng.random() < self.bad_crc:
            reply.bad_crc = True
            c.bad_crc += 1
        if self.truncate and rng.random() < self.truncate:
            reply.truncate_to = rng.randint(1, len(out) + 2)  # at least one byte short
            c.truncated += 1
        if self.noise and rng.random() < self.noise:
            garbage = rng.randbytes(rng.randint(1, 4))
            if rng.random() < 0.5:
                reply.noise_before = garbage
            else:
                reply.noise_after = garbage
            c.noise += 1
        return reply

    def clear_faults(self) -> None:
        self.asleep = False
        self.exception = None
        self.bad_crc = self.noise = self.truncate = self.wrong_unit = 0.0
        self.late_by = None


def check_frame_crc(frame: bytes) -> bool:
    """True when an RTU frame's trailing CRC matches (helper for the line and tests)."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


__all__ = [
    "HOLDING",
    "INPUT",
    "Reply",
    "SimUnit",
    "UnitCounters",
    "check_frame_crc",
]
