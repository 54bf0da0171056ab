"""VregLink codec and the simulated VregLink unit, without any transport.

The two worked examples of the seed README are checked byte for byte here (request PDU
built by the codec, reply PDU produced by the simulator); tests/test_vreglink_transport.py
repeats them over a real UDP socket.
"""

from __future__ import annotations

import pytest

from mbclient.modbus.pdu import Request
from mbclient.sim.vreg import Vreg, VregUnit
from mbclient.vreglink import (
    VregReply,
    VregStatus,
    decode_get,
    decode_set,
    get_request,
    pack_bytes,
    set_request,
    unpack_registers,
)

# The seed README's examples (section VregLink), as hex strings of the PDUs.
READ_REQUEST = "17 4000 0005 4000 0001 02 0100"
READ_REPLY = "17 0A 0100 0000 0004 0012 34FE"
WRITE_REQUEST = "17 4000 0002 4000 0008 10 010C 000B 4D79 2050 7265 6369 6F75 7300"
WRITE_REPLY = "17 04 010C 0000"
PRODUCT_ID = bytes.fromhex("001234FE")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def seed_unit(**kwargs) -> VregUnit:
    """The device of the seed's examples: block at 0x4000, product id 0x100 read-only,
    description 0x10C read/write, 0x0004 write-only, nothing else."""
    return VregUnit(
        1,
        vregs={
            0x0100: Vreg(PRODUCT_ID),
            0x010C: Vreg(b"", writable=True, valid=lambda d: len(d) <= 32),
            0x0004: Vreg(readable=False, writable=True),
        },
        **kwargs,
    )


# -- packing ---------------------------------------------------------------------------------------


def test_bytes_are_packed_msb_first_and_odd_lengths_padded() -> None:
    assert pack_bytes(b"") == []
    assert pack_bytes(b"\x12\x34") == [0x1234]
    assert pack_bytes(b"abc") == [0x6162, 0x6300]
    assert unpack_registers([0x6162, 0x6300]) == b"abc\0"


# -- the seed's worked examples, codec level -------------------------------------------------------


def test_read_example_request_and_reply_byte_for_byte() -> None:
    request = get_request(0x4000, 0x0100, size=2)
    assert request.pdu == h(READ_REQUEST)
    registers = request.check_reply(h(READ_REPLY))
    assert decode_get(0x0100, registers) == VregReply(VregStatus.SUCCESS, PRODUCT_ID)


def test_write_example_request_and_reply_byte_for_byte() -> None:
    request = set_request(0x4000, 0x010C, b"My Precious")
    assert request.pdu == h(WRITE_REQUEST)
    registers = request.check_reply(h(WRITE_REPLY))
    assert decode_set(0x010C, registers) == VregReply(VregStatus.SUCCESS, b"")


def test_simulator_answers_the_seed_examples_byte_for_byte() -> None:
    unit = seed_unit()
    assert unit.handle(h(READ_REQUEST)) == h(READ_REPLY)
    assert unit.handle(h(WRITE_REQUEST)) == h(WRITE_REPLY)
    assert unit.vregs[0x010C].value == b"My Precious"
    assert unit.vreg_log == [(0x0100, None), (0x010C, b"My Precious")]


# -- the size field, both ways ---------------------------------------------------------------------


def test_size_field_trims_the_padding_of_an_odd_length_value() -> None:
    unit = seed_unit()
    unit.handle(set_request(0x4000, 0x010C, b"abc").pdu)
    request = get_request(0x4000, 0x010C, size=4)
    reply = unit.handle(request.pdu)
    # id, status, size 3, "ab", "c" + pad, then zero registers up to the requested count
    assert reply == h("17 0E 010C 0000 0003 6162 6300 0000 0000")
    assert decode_get(0x010C, request.check_reply(reply)) == VregReply(0, b"abc")


def test_a_value_longer_than_the_block_is_truncated_to_what_arrived() -> None:
    unit = seed_unit()
    unit.vregs[0x010C].value = b"0123456789"
    request = get_request(0x4000, 0x010C, size=2)
    registers = request.check_reply(unit.handle(request.pdu))
    assert registers[2] == 10  # the device reports the real size
    assert decode_get(0x010C, registers) == VregReply(0, b"0123")


def test_simulator_refuses_a_size_field_that_contradicts_the_data() -> None:
    unit = seed_unit()
    # size 5 with 2 data registers (4 bytes): neither 2N nor 2N-1
    pdu = Request.read_write(0x4000, 2, 0x4000, [0x010C, 5, 0x4142, 0x4344]).pdu
    assert unit.handle(pdu) == h("17 04 010C 8104")
    assert unit.vregs[0x010C].value == b""


# -- every status code -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vreg", "status"),
    [(0x0100, VregStatus.SUCCESS), (0x0999, VregStatus.READ_NOT_FOUND), (0x0004, VregStatus.READ_WRITE_ONLY)],
)
def test_read_status_codes_from_the_device(vreg: int, status: int) -> None:
    request = get_request(0x4000, vreg, size=4)
    reply = decode_get(vreg, request.check_reply(seed_unit().handle(request.pdu)))
    assert reply.status == status
    assert reply.data == (PRODUCT_ID if status == 0 else b"")


@pytest.mark.parametrize(
    ("vreg", "data", "status"),
    [
        (0x010C, b"ok", VregStatus.SUCCESS),
        (0x0004, b"\x01", VregStatus.SUCCESS),
        (0x0999, b"\x01", VregStatus.WRITE_NOT_FOUND),
        (0x0100, b"\x00\x00\x00\x00", VregStatus.WRITE_READ_ONLY),
        (0x010C, b"x" * 33, VregStatus.WRITE_INVALID),
    ],
)
def test_write_status_codes_from_the_device(vreg: int, data: bytes, status: int) -> None:
    unit = seed_unit()
    request = set_request(0x4000, vreg, data)
    assert decode_set(vreg, request.check_reply(unit.handle(request.pdu))) == VregReply(status)
    assert (unit.vregs.get(vreg, Vreg()).value == data) == (status == 0)


def test_reply_for_another_vreg_is_an_error_status_not_data() -> None:
    unit = seed_unit()
    unit.vreg_wrong_id = True
    get = get_request(0x4000, 0x0100, size=2)
    assert decode_get(0x0100, get.check_reply(unit.handle(get.pdu))) == VregReply(VregStatus.READ_ERROR)
    put = set_request(0x4000, 0x010C, b"x")
    assert decode_set(0x010C, put.check_reply(unit.handle(put.pdu))) == VregReply(VregStatus.WRITE_ERROR)


def test_request_outside_the_block_is_a_modbus_exception() -> None:
    unit = seed_unit(vreg_size=2)
    assert unit.handle(get_request(0x4000, 0x0100, size=3).pdu) == h("97 02")
    # fc 23 elsewhere keeps SimUnit's ordinary semantics
    unit.allow_write(0x10, 1)
    assert unit.handle(Request.read_write(0x10, 1, 0x10, [7]).pdu) == h("17 02 0007")
