"""Reply framers: what the serial arbiter accepts as a reply from a receive buffer."""

from __future__ import annotations

from mbclient.modbus.framing import ascii_frame, rtu_frame
from mbclient.modbus.pdu import exception_response, registers_response
from mbclient.transports.framers import FRAME, JUNK, NEED, STRAY, AsciiFramer, RtuFramer

READ = 3
REPLY = registers_response(READ, [0x1234, 0xABCD])


def scan(buf: bytes, unit: int = 1, function: int = READ, framer=RtuFramer) -> tuple[int, int, int]:
    return framer.scan(bytearray(buf), unit, function)


def test_rtu_complete_reply_is_found_at_the_front() -> None:
    frame = rtu_frame(1, REPLY)
    assert scan(frame) == (FRAME, 0, len(frame))
    assert RtuFramer.pdu(bytearray(frame), 0, len(frame)) == REPLY


def test_rtu_every_prefix_of_a_reply_asks_for_more() -> None:
    frame = rtu_frame(1, REPLY)
    for n in range(1, len(frame)):
        assert scan(frame[:n])[0] == NEED, n


def test_rtu_exception_reply_is_five_bytes() -> None:
    frame = rtu_frame(1, exception_response(READ, 2))
    assert scan(frame + b"\x00\x00") == (FRAME, 0, 5)


def test_rtu_bad_crc_is_never_a_frame() -> None:
    frame = bytearray(rtu_frame(1, REPLY))
    frame[-1] ^= 0x10
    assert scan(bytes(frame))[0] == NEED  # only silence can end it, as a corrupted reply
    assert RtuFramer.looks_like_reply(frame, 1, READ)


def test_rtu_noise_in_front_does_not_hide_the_reply() -> None:
    frame = rtu_frame(1, REPLY)
    kind, start, end = scan(b"\xff\x07\x83" + frame)
    assert (kind, start, end) == (FRAME, 3, 3 + len(frame))


def test_rtu_reply_from_another_unit_is_stray() -> None:
    frame = rtu_frame(2, REPLY)
    assert scan(frame) == (STRAY, 0, len(frame))


def test_rtu_reply_for_another_function_is_stray() -> None:
    frame = rtu_frame(1, registers_response(4, [1, 2]))
    assert scan(frame)[0] == STRAY


def test_rtu_partial_reply_is_not_cut_short_by_a_chance_match_inside() -> None:
    # A reply whose data contains a complete, valid exception frame of another unit.
    inner = rtu_frame(9, exception_response(3, 2))
    values = inner + b"\x00" * 3  # 8 bytes of register data
    reply = rtu_frame(1, bytes((READ, len(values))) + values)
    for n in range(2, len(reply)):
        assert scan(reply[:n])[0] == NEED, n
    assert scan(reply)[0] == FRAME


def test_rtu_fragment_of_another_unit_does_not_look_like_ours() -> None:
    assert not RtuFramer.looks_like_reply(bytearray(b"\x05\x03\x04\x00"), 1, READ)
    assert RtuFramer.looks_like_reply(bytearray(b"\x01"), 1, READ)


def test_ascii_reply_and_junk() -> None:
    frame = ascii_frame(1, REPLY)
    assert scan(frame, framer=AsciiFramer) == (FRAME, 0, len(frame))
    assert AsciiFramer.pdu(bytearray(frame), 0, len(frame)) == REPLY
    assert scan(b"xy" + frame, framer=AsciiFramer) == (JUNK, 0, 2)
    assert scan(frame[:-2], framer=AsciiFramer)[0] == NEED
    bad = bytearray(frame)
    bad[-3] = ord("0") if bad[-3] != ord("0") else ord("1")
    assert scan(bytes(bad), framer=AsciiFramer) == (JUNK, 0, len(frame))
    assert scan(ascii_frame(2, REPLY), framer=AsciiFramer)[0] == STRAY
    assert AsciiFramer.looks_like_reply(bytearray(b":01030"), 1, READ)
    assert not AsciiFramer.looks_like_reply(bytearray(b":02030"), 1, READ)
