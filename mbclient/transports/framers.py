"""Finding a reply in the bytes a serial line (or an RTU-over-TCP gateway) delivered.

A framer looks at the receive buffer and says what is at its front:

* ``FRAME`` – ``buf[start:end]`` is a complete, checksum-valid frame from the addressed
  unit carrying the requested function (or its exception): the candidate answer;
* ``STRAY`` – ``buf[:end]`` ends with a complete, valid frame that is *not* the answer
  (another unit, another function: somebody's late reply): drop it, keep listening;
* ``JUNK`` – ``buf[:end]`` can be recognised as garbage without waiting (ASCII only:
  bytes outside ':' … CRLF, a bad LRC): drop it;
* ``NEED`` – nothing decidable yet: wait for more bytes, or for silence, after which
  whatever is there is a fragment (see ``looks_like_reply``).

RTU frames are delimited by the length the header announces (``reply_length_from_header``:
function, byte count; exceptions are 2-byte PDUs) and verified by CRC-16; offsets are scanned so that noise in front of a reply cannot hide it,
but the scan stops at the first place where the addressed unit's reply has started and is
still incomplete, so a partial reply is never cut short by a chance match inside it.
"""

from __future__ import annotations

from ..errors import FrameError
from ..modbus.framing import ascii_frame, ascii_unframe, crc16, rtu_frame
from ..modbus.pdu import reply_length_from_header

NEED, FRAME, STRAY, JUNK = range(4)

MAX_RTU_FRAME = 256
MAX_ASCII_FRAME = 513


class RtuFramer:
    """Binary RTU: unit, PDU, CRC-16 (low byte first)."""

    name = "RTU"
    max_frame = MAX_RTU_FRAME

    @staticmethod
    def encode(unit: int, pdu: bytes) -> bytes:
        return rtu_frame(unit, pdu)

    @staticmethod
    def scan(buf: bytearray, unit: int, function: int) -> tuple[int, int, int]:
        """Classify the front of ``buf`` as (kind, start, end); see the module docstring."""
        n = len(buf)
        exc = function | 0x80
        for i in range(n - 1):
            u = buf[i]
            fc = buf[i + 1]
            mine = u == unit and (fc == function or fc == exc)
            if not mine and not 1 <= u <= 247:
                continue
            pdu_len = reply_length_from_header(buf[i + 1 : i + 3])
            if pdu_len is None:  # byte count not here yet, or not a reply we know
                if mine:
                    return NEED, i, 0
                continue
            end = i + pdu_len + 3
            if end > n:
                if mine:
                    return NEED, i, 0  # our reply is on its way: wait for the rest
                continue
            if crc16(buf[i : end - 2]) == buf[end - 2] | (buf[end - 1] << 8):
                return (FRAME if mine else STRAY), i, end
        return NEED, 0, 0

    @staticmethod
    def pdu(buf: bytearray, start: int, end: int) -> bytes:
        return bytes(buf[start + 1 : end - 2])

    @staticmethod
    def unit_of(buf: bytearray, start: int) -> int:
        return buf[start]

    @staticmethod
    def looks_like_reply(buf: bytearray, unit: int, function: int) -> bool:
        """After silence: does the fragment contain the start of the addressed unit's reply?"""
        n = len(buf)
        exc = function | 0x80
        for i in range(n):
            if buf[i] == unit and (i == n - 1 or buf[i + 1] == function or buf[i + 1] == exc):
                return True
        return False


class AsciiFramer:
    """Modbus ASCII: ':' + hex(unit, PDU, LRC) + CRLF."""

    name = "ASCII"
    max_frame = MAX_ASCII_FRAME

    @staticmethod
    def encode(unit: int, pdu: bytes) -> bytes:
        return ascii_frame(unit, pdu)

    @staticmethod
    def scan(buf: bytearray, unit: int, function: int) -> tuple[int, int, int]:
        colon = buf.find(b":")
        if colon < 0:
            return (JUNK, 0, len(buf)) if buf else (NEED, 0, 0)
        if colon > 0:
            return JUNK, 0, colon
        crlf = buf.find(b"\r\n", 1)
        restart = buf.find(b":", 1)
        if 0 < restart and (crlf < 0 or restart < crlf):
            return JUNK, 0, restart  # a new frame began before this one ended
        if crlf < 0:
            return NEED, 0, 0
        end = crlf + 2
        try:
            u, pdu = ascii_unframe(bytes(buf[:end]))
        except FrameError:
            return JUNK, 0, end
        if u == unit and pdu and (pdu[0] == function or pdu[0] == function | 0x80):
            return FRAME, 0, end
        return STRAY, 0, end

    @staticmethod
    def pdu(buf: bytearray, start: int, end: int) -> bytes:
        return ascii_unframe(bytes(buf[start:end]))[1]

    @staticmethod
    def unit_of(buf: bytearray, start: int) -> int:
        try:
            return int(buf[start + 1 : start + 3], 16)
        except ValueError:
            return -1

    @staticmethod
    def looks_like_reply(buf: bytearray, unit: int, function: int) -> bool:
        """After silence: does the fragment contain the start of the addressed unit's reply?"""
        head = b":%02X" % unit
        i = buf.find(b":")
        while i >= 0:
            if head.startswith(bytes(buf[i : i + 3]).upper()):
                return True
            i = buf.find(b":", i + 1)
        return False


Framer = RtuFramer | AsciiFramer
