"""Frame wrappers: RTU (unit + PDU + CRC-16), ASCII (':' hex LRC CRLF), MBAP (TCP/UDP).

Also the RS-485 timing rules that the arbiter and the simulator must agree on.
"""

from __future__ import annotations

import struct

from ..errors import FrameError

BITS_PER_CHAR = 10  # 8N1: start + 8 data + stop (an 8E1/8N2 line has 11; see char_time)


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF). Sent low byte first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def char_time(baud: int, bits: int = BITS_PER_CHAR) -> float:
    """Seconds one character occupies on the wire."""
    return bits / baud


def frame_gap(baud: int, bits: int = BITS_PER_CHAR) -> float:
    """Minimum silence between frames: 3.5 characters, fixed 1.75 ms above 19200 Bd (spec)."""
    if baud > 19200:
        return 0.00175
    return 3.5 * char_time(baud, bits)


def wire_time(nbytes: int, baud: int, bits: int = BITS_PER_CHAR) -> float:
    """Seconds ``nbytes`` take on the wire."""
    return nbytes * char_time(baud, bits)


# --- RTU -----------------------------------------------------------------------------------


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return body + struct.pack("<H", crc16(body))


def rtu_unframe(frame: bytes) -> tuple[int, bytes]:
    """Check the CRC and split into (unit, pdu). Raises FrameError."""
    if len(frame) < 4:
        raise FrameError(f"RTU frame too short ({len(frame)} bytes)")
    body, crc = frame[:-2], struct.unpack("<H", frame[-2:])[0]
    if crc16(body) != crc:
        raise FrameError("RTU CRC mismatch")
    return body[0], bytes(body[1:])


# --- ASCII ---------------------------------------------------------------------------------


def lrc(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def ascii_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return b":" + (body + bytes((lrc(body),))).hex().upper().encode() + b"\r\n"


_HEX_DIGITS = b"0123456789ABCDEFabcdef"


def ascii_unframe(frame: bytes) -> tuple[int, bytes]:
    """Parse ':' + hex + CRLF, check the LRC, return (unit, pdu). Raises FrameError.

    Strict about the characters: ``bytes.fromhex`` alone would skip whitespace, so a line
    hit that turned digits into spaces could still decode (found by tests/test_fuzz_codec).
    """
    if not frame.startswith(b":") or not frame.endswith(b"\r\n"):
        raise FrameError("malformed ASCII frame")
    digits = frame[1:-2]
    if len(digits) < 6 or len(digits) % 2:
        raise FrameError("malformed ASCII frame")
    if digits.translate(None, _HEX_DIGITS):
        raise FrameError("non-hex character in ASCII frame")
    raw = bytes.fromhex(digits.decode("ascii"))
    body, check = raw[:-1], raw[-1]
    if lrc(body) != check:
        raise FrameError("ASCII LRC mismatch")
    return body[0], bytes(body[1:])


# --- MBAP (Modbus TCP / UDP) ----------------------------------------------------------------

MBAP_HEADER = struct.Struct(">HHHB")  # transaction id, protocol id (0), length, unit


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return MBAP_HEADER.pack(tid & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


def mbap_header(header: bytes) -> tuple[int, int, int]:
    """Parse the 7-byte header: (transaction id, pdu length, unit). Raises FrameError."""
    tid, proto, length, unit = MBAP_HEADER.unpack(header)
    if proto != 0:
        raise FrameError(f"MBAP protocol id {proto} is not Modbus")
    if not 2 <= length <= 254:
        raise FrameError(f"MBAP length {length} out of range")
    return tid, length - 1, unit


def mbap_unframe(frame: bytes) -> tuple[int, int, bytes]:
    """Whole datagram/frame -> (transaction id, unit, pdu). Raises FrameError."""
    if len(frame) < MBAP_HEADER.size + 1:
        raise FrameError("MBAP frame too short")
    tid, pdu_len, unit = mbap_header(frame[: MBAP_HEADER.size])
    pdu = frame[MBAP_HEADER.size :]
    if len(pdu) != pdu_len:
        raise FrameError(f"MBAP length says {pdu_len}, frame carries {len(pdu)}")
    return tid, unit, bytes(pdu)
