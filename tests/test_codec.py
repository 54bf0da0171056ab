"""Wire codec: frames that real devices and pymodbus agree on."""

import pytest

from mbclient.errors import FrameError, ModbusExceptionResponse
from mbclient.modbus import framing
from mbclient.modbus.pdu import Request, exception_response, parse_request, registers_response


def test_rtu_frame_matches_known_bytes():
    # Read input registers 0..1 of unit 1: the classic example frame with CRC 71 CB.
    assert framing.rtu_frame(1, Request.read(4, 0, 2).pdu) == bytes.fromhex("01040000000271cb")


def test_rtu_unframe_rejects_corrupted_crc():
    frame = bytearray(framing.rtu_frame(1, registers_response(4, [1, 2])))
    frame[3] ^= 0x01
    with pytest.raises(FrameError):
        framing.rtu_unframe(bytes(frame))


def test_ascii_roundtrip_and_lrc():
    frame = framing.ascii_frame(1, Request.read(4, 0, 2).pdu)
    assert frame == b":010400000002F9\r\n"
    assert framing.ascii_unframe(frame) == (1, bytes.fromhex("0400000002"))
    with pytest.raises(FrameError):
        framing.ascii_unframe(b":010400000002F8\r\n")


def test_reply_checked_against_request():
    req = Request.read(3, 0x10, 2)
    assert req.check_reply(registers_response(3, [0xABCD, 1])) == [0xABCD, 1]
    with pytest.raises(FrameError):
        req.check_reply(registers_response(4, [0xABCD, 1]))  # wrong function
    with pytest.raises(FrameError):
        req.check_reply(registers_response(3, [1]))  # wrong length
    with pytest.raises(ModbusExceptionResponse) as exc:
        req.check_reply(exception_response(3, 2))
    assert exc.value.code == 2


def test_write_echo_must_match():
    req = Request.write_single(3, 50)
    assert req.check_reply(req.pdu) == []
    with pytest.raises(FrameError):
        req.check_reply(Request.write_single(3, 51).pdu)


def test_server_side_parse_of_fc23():
    req = Request.read_write(0x4000, 5, 0x4000, [0x0100])
    parsed = parse_request(req.pdu)
    assert (parsed.function, parsed.address, parsed.count, parsed.write_address, parsed.values) == (
        23, 0x4000, 5, 0x4000, (0x0100,))


@pytest.mark.parametrize("baud,gap_ms", [(9600, 3.646), (19200, 1.823), (38400, 1.75), (115200, 1.75)])
def test_interframe_gap(baud, gap_ms):
    assert framing.frame_gap(baud) * 1000 == pytest.approx(gap_ms, abs=0.001)
