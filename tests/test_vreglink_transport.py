"""VregLink over a real Modbus UDP socket to the simulator.

A small UDP relay sits between the client link and the simulated unit and records every
datagram, so the seed's worked examples are checked byte for byte as they cross the wire
(MBAP header + PDU), not only as the codec builds them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from mbclient.sim import serve_udp
from mbclient.sim.vreg import Vreg, VregUnit
from mbclient.transports.base import UnitClient
from mbclient.transports.udp import UdpLink
from mbclient.vreglink import VregLink, VregReply, VregStatus

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

READ_REQUEST = "17 4000 0005 4000 0001 02 0100"
READ_REPLY = "17 0A 0100 0000 0004 0012 34FE"
WRITE_REQUEST = "17 4000 0002 4000 0008 10 010C 000B 4D79 2050 7265 6369 6F75 7300"
WRITE_REPLY = "17 04 010C 0000"
PRODUCT_ID = bytes.fromhex("001234FE")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


class Relay(asyncio.DatagramProtocol):
    """Forwards datagrams client <-> server and records them as (direction, bytes)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.seen: list[tuple[str, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.server:
            self.seen.append(("reply", data))
            if self.client is not None:
                self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.seen.append(("request", data))
            self.transport.sendto(data, self.server)

    def pdus(self) -> list[tuple[str, int, bytes]]:
        """(direction, unit, PDU) of every datagram: MBAP is 7 bytes, unit id last."""
        return [(d, data[6], data[7:]) for d, data in self.seen]


def seed_unit() -> VregUnit:
    return VregUnit(
        1,
        vregs={
            0x0100: Vreg(PRODUCT_ID),
            0x010C: Vreg(b"", writable=True, valid=lambda d: len(d) <= 32),
            0x0004: Vreg(readable=False, writable=True),
        },
        turnaround=0.0,
    )


@asynccontextmanager
async def vreg_over_udp(unit: VregUnit, size: int = 2, timeout: float = 1.0) -> AsyncIterator[tuple[VregLink, Relay]]:
    loop = asyncio.get_running_loop()
    async with serve_udp(unit) as server:
        relay = Relay((server.host, server.port))
        transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        link = UdpLink("127.0.0.1", port)
        try:
            yield VregLink(UnitClient(link, unit.address), 0x4000, size, timeout=timeout), relay
        finally:
            await link.aclose()
            transport.close()


async def test_seed_read_example_crosses_the_wire_byte_for_byte() -> None:
    async with vreg_over_udp(seed_unit()) as (vreg, relay):
        assert await vreg.get(0x0100) == VregReply(VregStatus.SUCCESS, PRODUCT_ID)
    assert relay.pdus() == [("request", 1, h(READ_REQUEST)), ("reply", 1, h(READ_REPLY))]


async def test_seed_write_example_crosses_the_wire_byte_for_byte() -> None:
    unit = seed_unit()
    async with vreg_over_udp(unit, size=32) as (vreg, relay):
        assert await vreg.set(0x010C, b"My Precious") == VregReply(VregStatus.SUCCESS)
        assert await vreg.get(0x010C) == VregReply(VregStatus.SUCCESS, b"My Precious")
    assert relay.pdus()[:2] == [("request", 1, h(WRITE_REQUEST)), ("reply", 1, h(WRITE_REPLY))]
    assert unit.vregs[0x010C].value == b"My Precious"


async def test_every_device_status_reaches_the_caller() -> None:
    async with vreg_over_udp(seed_unit(), size=32) as (vreg, _):
        assert await vreg.get(0x0999) == VregReply(VregStatus.READ_NOT_FOUND)
        assert await vreg.get(0x0004) == VregReply(VregStatus.READ_WRITE_ONLY)
        assert await vreg.set(0x0999, b"\1") == VregReply(VregStatus.WRITE_NOT_FOUND)
        assert await vreg.set(0x0100, b"\0\0\0\0") == VregReply(VregStatus.WRITE_READ_ONLY)
        assert await vreg.set(0x010C, b"x" * 33) == VregReply(VregStatus.WRITE_INVALID)
        assert await vreg.set(0x0004, b"\1") == VregReply(VregStatus.SUCCESS)


async def test_odd_length_value_round_trips_without_its_padding() -> None:
    async with vreg_over_udp(seed_unit(), size=32) as (vreg, relay):
        assert await vreg.set(0x010C, b"odd") == VregReply(0)
        assert await vreg.get(0x010C) == VregReply(0, b"odd")
    request = relay.pdus()[0][2]
    assert request[-8:] == h("010C 0003 6F64 6400")  # id, size 3, "od", "d" + pad


async def test_data_longer_than_the_block_is_refused_without_a_transaction() -> None:
    async with vreg_over_udp(seed_unit(), size=4) as (vreg, relay):
        assert await vreg.set(0x010C, b"123456789") == VregReply(VregStatus.WRITE_INVALID)
    assert relay.seen == []


async def test_modbus_failures_become_error_statuses_never_exceptions() -> None:
    unit = seed_unit()
    async with vreg_over_udp(unit, size=32, timeout=0.3) as (vreg, _):
        unit.exception = 4  # device failure: exception reply
        assert await vreg.get(0x0100) == VregReply(VregStatus.READ_ERROR)
        assert await vreg.set(0x010C, b"x") == VregReply(VregStatus.WRITE_ERROR)
        unit.exception = None
        unit.asleep = True  # silence: timeout, one retry, then the error status
        assert await vreg.get(0x0100) == VregReply(VregStatus.READ_ERROR)
        assert await vreg.set(0x010C, b"x") == VregReply(VregStatus.WRITE_ERROR)
        assert unit.counters.silent == 4
        unit.asleep = False
        unit.vreg_wrong_id = True  # an answer for another VREG
        assert await vreg.get(0x0100) == VregReply(VregStatus.READ_ERROR)
        assert await vreg.set(0x010C, b"x") == VregReply(VregStatus.WRITE_ERROR)
        unit.vreg_wrong_id = False
        assert await vreg.get(0x0100) == VregReply(0, PRODUCT_ID)


async def test_truncated_replies() -> None:
    unit = seed_unit()
    unit.vregs[0x010C].value = b"a value longer than the block"
    async with vreg_over_udp(unit, size=4, timeout=0.3) as (vreg, _):
        # the device reports the real size; the caller gets what the block carried
        assert await vreg.get(0x010C) == VregReply(0, b"a value ")
        unit.vreg_short_reply = 1  # a well-framed reply one register short: frame error
        assert await vreg.get(0x0100) == VregReply(VregStatus.READ_ERROR)
        unit.vreg_short_reply = 0
        unit.truncate = 1.0  # datagrams cut short on the wire: dropped, then a timeout
        assert await vreg.get(0x0100) == VregReply(VregStatus.READ_ERROR)
        assert await vreg.set(0x010C, b"x") == VregReply(VregStatus.WRITE_ERROR)
        unit.truncate = 0.0
        assert await vreg.get(0x0100) == VregReply(0, PRODUCT_ID)


async def test_pymodbus_client_sees_the_same_vreglink_answers() -> None:
    """A second, independent Modbus implementation (the one upstream uses for VregLink)
    against the simulated unit: the seed's read and write, as register lists."""
    from pymodbus.client import AsyncModbusUdpClient

    unit = seed_unit()
    async with serve_udp(unit) as server:
        client = AsyncModbusUdpClient(server.host, port=server.port, timeout=2, retries=1)
        await client.connect()
        try:
            read = await client.readwrite_registers(read_address=0x4000, read_count=5, write_address=0x4000,
                                                    values=[0x0100], device_id=1)
            write = await client.readwrite_registers(
                read_address=0x4000, read_count=2, write_address=0x4000,
                values=[0x010C, 11, 0x4D79, 0x2050, 0x7265, 0x6369, 0x6F75, 0x7300], device_id=1)
        finally:
            client.close()
    assert read.registers == [0x0100, 0, 4, 0x0012, 0x34FE]
    assert write.registers == [0x010C, 0]
    assert unit.vregs[0x010C].value == b"My Precious"
