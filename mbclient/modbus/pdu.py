"""Protocol data units for the functions mbclient uses: 3, 4, 6, 16 and 23.

Client side: ``Request`` builds the PDU, knows the reply length an RTU reader must wait for,
and checks a reply against itself (function, byte count, write echo) before anything is
decoded. Server side (simulator): ``parse_request`` and the ``*_response`` builders.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import FrameError, ModbusExceptionResponse

READ_HOLDING = 3
READ_INPUT = 4
WRITE_SINGLE = 6
WRITE_MULTIPLE = 16
READ_WRITE_MULTIPLE = 23

MAX_READ = 125  # registers per read (fc 3/4/23 read part)
MAX_WRITE = 123  # registers per fc 16
MAX_RW_WRITE = 121  # registers in the write part of fc 23

FUNCTIONS = (READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE, READ_WRITE_MULTIPLE)


def _check_regs(values: tuple[int, ...]) -> None:
    for v in values:
        if not 0 <= v <= 0xFFFF:
            raise ValueError(f"register value {v} does not fit 16 bits")


def _check_addr(address: int, count: int) -> None:
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError(f"address range {address}+{count} outside 0..65535")


@dataclass(frozen=True, slots=True)
class Request:
    """One Modbus request. ``values`` are the registers written (fc 6/16/23)."""

    function: int
    address: int = 0
    count: int = 0
    values: tuple[int, ...] = ()
    write_address: int = 0  # fc 23 only
    pdu: bytes = field(default=b"", compare=False, repr=False)

    @property
    def writes(self) -> bool:
        """Whether the request changes the device (function 6, 16 or 23)."""
        return self.function in (WRITE_SINGLE, WRITE_MULTIPLE, READ_WRITE_MULTIPLE)

    # -- constructors ----------------------------------------------------------------------
    @classmethod
    def read(cls, function: int, address: int, count: int) -> Request:
        if function not in (READ_HOLDING, READ_INPUT):
            raise ValueError(f"function {function} is not a register read")
        if not 1 <= count <= MAX_READ:
            raise ValueError(f"read count {count} outside 1..{MAX_READ}")
        _check_addr(address, count)
        pdu = struct.pack(">BHH", function, address, count)
        return cls(function, address, count, pdu=pdu)

    @classmethod
    def write_single(cls, address: int, value: int) -> Request:
        _check_addr(address, 1)
        _check_regs((value,))
        pdu = struct.pack(">BHH", WRITE_SINGLE, address, value)
        return cls(WRITE_SINGLE, address, 1, (value,), pdu=pdu)

    @classmethod
    def write_multiple(cls, address: int, values: list[int] | tuple[int, ...]) -> Request:
        vals = tuple(values)
        if not 1 <= len(vals) <= MAX_WRITE:
            raise ValueError(f"write count {len(vals)} outside 1..{MAX_WRITE}")
        _check_addr(address, len(vals))
        _check_regs(vals)
        pdu = struct.pack(f">BHHB{len(vals)}H", WRITE_MULTIPLE, address, len(vals), 2 * len(vals), *vals)
        return cls(WRITE_MULTIPLE, address, len(vals), vals, pdu=pdu)

    @classmethod
    def read_write(
        cls, read_address: int, read_count: int, write_address: int, values: list[int] | tuple[int, ...]
    ) -> Request:
        vals = tuple(values)
        if not 1 <= read_count <= MAX_READ:
            raise ValueError(f"read count {read_count} outside 1..{MAX_READ}")
        if not 1 <= len(vals) <= MAX_RW_WRITE:
            raise ValueError(f"write count {len(vals)} outside 1..{MAX_RW_WRITE}")
        _check_addr(read_address, read_count)
        _check_addr(write_address, len(vals))
        _check_regs(vals)
        pdu = struct.pack(
            f">BHHHHB{len(vals)}H",
            READ_WRITE_MULTIPLE, read_address, read_count, write_address, len(vals), 2 * len(vals), *vals,
        )
        return cls(READ_WRITE_MULTIPLE, read_address, read_count, vals, write_address, pdu=pdu)

    # -- reply handling --------------------------------------------------------------------
    @property
    def reply_length(self) -> int:
        """Length of a normal reply PDU (an exception reply is always 2 bytes)."""
        if self.function in (READ_HOLDING, READ_INPUT, READ_WRITE_MULTIPLE):
            return 2 + 2 * self.count
        return 5  # fc 6 and 16 echo address + value/count

    def check_reply(self, pdu: bytes) -> list[int]:
        """Validate a reply PDU against this request and return the registers read.

        Raises ModbusExceptionResponse for an exception reply, FrameError for anything
        that does not match (wrong function, byte count, echo). Writes return [].
        """
        if not pdu:
            raise FrameError("empty reply")
        fc = pdu[0]
        if fc == self.function | 0x80:
            if len(pdu) != 2:
                raise FrameError("malformed exception reply")
            raise ModbusExceptionResponse(self.function, pdu[1])
        if fc != self.function:
            raise FrameError(f"reply function {fc} does not match request {self.function}")
        if len(pdu) != self.reply_length:
            raise FrameError(f"reply length {len(pdu)}, expected {self.reply_length}")
        if self.function in (READ_HOLDING, READ_INPUT, READ_WRITE_MULTIPLE):
            if pdu[1] != 2 * self.count:
                raise FrameError(f"byte count {pdu[1]}, expected {2 * self.count}")
            return list(struct.unpack(f">{self.count}H", pdu[2:]))
        if pdu != self.pdu[:5]:
            raise FrameError("write echo does not match the request")
        return []


def reply_length_from_header(first: bytes) -> int | None:
    """Given the first bytes of a reply PDU, its total length, or None if more are needed.

    Lets a stream reader (RTU over serial or TCP) know when a frame is complete without
    relying on inter-character timing alone.
    """
    if not first:
        return None
    fc = first[0]
    if fc & 0x80:
        return 2
    if fc in (READ_HOLDING, READ_INPUT, READ_WRITE_MULTIPLE):
        if len(first) < 2:
            return None
        return 2 + first[1]
    if fc in (WRITE_SINGLE, WRITE_MULTIPLE):
        return 5
    return None  # unknown function: caller falls back to silence detection


# --- server side (simulator) -----------------------------------------------------------------


def parse_request(pdu: bytes) -> Request:
    """Decode a request PDU (server side). Raises FrameError, or ModbusExceptionResponse
    with the code a real slave would answer (1 illegal function, 3 illegal data value)."""
    if not pdu:
        raise FrameError("empty request")
    fc = pdu[0]
    try:
        if fc in (READ_HOLDING, READ_INPUT):
            if len(pdu) != 5:
                raise FrameError("bad read request length")
            address, count = struct.unpack(">HH", pdu[1:5])
            if not 1 <= count <= MAX_READ or address + count > 0x10000:
                raise ModbusExceptionResponse(fc, 3)
            return Request(fc, address, count, pdu=bytes(pdu))
        if fc == WRITE_SINGLE:
            if len(pdu) != 5:
                raise FrameError("bad write request length")
            address, value = struct.unpack(">HH", pdu[1:5])
            return Request(fc, address, 1, (value,), pdu=bytes(pdu))
        if fc == WRITE_MULTIPLE:
            if len(pdu) < 6:
                raise FrameError("bad write-multiple request length")
            address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
            if len(pdu) != 6 + nbytes:
                raise FrameError("write-multiple byte count does not match the frame")
            if not 1 <= count <= MAX_WRITE or nbytes != 2 * count or address + count > 0x10000:
                raise ModbusExceptionResponse(fc, 3)
            vals = struct.unpack(f">{count}H", pdu[6:])
            return Request(fc, address, count, vals, pdu=bytes(pdu))
        if fc == READ_WRITE_MULTIPLE:
            if len(pdu) < 10:
                raise FrameError("bad read/write-multiple request length")
            ra, rc, wa, wc, nbytes = struct.unpack(">HHHHB", pdu[1:10])
            if len(pdu) != 10 + nbytes:
                raise FrameError("read/write byte count does not match the frame")
            if not 1 <= rc <= MAX_READ or not 1 <= wc <= MAX_RW_WRITE or nbytes != 2 * wc:
                raise ModbusExceptionResponse(fc, 3)
            vals = struct.unpack(f">{wc}H", pdu[10:])
            return Request(fc, ra, rc, vals, wa, pdu=bytes(pdu))
    except struct.error:
        raise FrameError("truncated request") from None
    raise ModbusExceptionResponse(fc & 0x7F, 1)


def registers_response(function: int, registers: list[int] | tuple[int, ...]) -> bytes:
    return struct.pack(f">BB{len(registers)}H", function, 2 * len(registers), *registers)


def write_response(request: Request) -> bytes:
    return request.pdu[:5]


def exception_response(function: int, code: int) -> bytes:
    return bytes((function | 0x80, code))
