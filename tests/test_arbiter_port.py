"""The arbiter's port handling on a real pseudo-terminal: loss and recovery, a missing
port, one shared arbiter per port, and Modbus ASCII framing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from test_arbiter_rtu import BAUD, check_reply, nonce_unit

from mbclient.errors import ConfigError, FrameError, LinkDown, ModbusTimeout
from mbclient.modbus.pdu import READ_HOLDING, Request
from mbclient.sim import SimBus, SimSerialPort, serve_rtu
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool, RtuLink, UnitClient, open_link


@pytest_asyncio.fixture
async def line(tmp_path) -> AsyncIterator[tuple[SimBus, SimSerialPort, RtuLink]]:
    bus = SimBus(BAUD, units=[nonce_unit(1), nonce_unit(2)])
    async with serve_rtu(bus, directory=tmp_path) as port:
        link = RtuLink.serial(port.path, BAUD)
        try:
            yield bus, port, link
        finally:
            await link.aclose()


@pytest.mark.asyncio
async def test_unplug_gives_link_down_then_recovers(line) -> None:
    bus, port, link = line
    request = Request.read(READ_HOLDING, 0, 4)
    check_reply(1, 0, await link.transact(1, request, timeout=1.0), 4)

    bus[1].turnaround = 0.3
    in_flight = asyncio.create_task(link.transact(1, request, timeout=1.0))
    queued = asyncio.create_task(link.transact(2, request, timeout=1.0))
    await asyncio.sleep(0.05)
    port.unplug()
    with pytest.raises(LinkDown):
        await in_flight
    with pytest.raises(LinkDown):
        await queued
    with pytest.raises(LinkDown, match="next attempt"):  # backing off: fails fast
        await asyncio.wait_for(link.transact(2, request, timeout=1.0), 0.1)

    port.replug()
    bus[1].turnaround = 0.005
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while True:
        try:
            values = await link.transact(1, request, timeout=1.0)
            break
        except (LinkDown, ModbusTimeout):
            # The port reopens as soon as it is back; unit 1 may still be busy finishing
            # the reply the unplug cut off (it ignores requests meanwhile): one timeout.
            assert loop.time() < deadline, "the link did not recover after replug"
            await asyncio.sleep(0.1)
    assert bus[1].counters.busy <= 1
    check_reply(1, 0, values, 4)


@pytest.mark.asyncio
async def test_missing_port_is_link_down_with_a_clear_message(tmp_path) -> None:
    spec = parse_spec(f"rtu:{tmp_path}/ttyUSB9:9600:1")
    link = open_link(spec)
    try:
        with pytest.raises(LinkDown, match=r"serial port .*ttyUSB9 does not exist"):
            await link.transact(1, Request.read(READ_HOLDING, 0, 1), timeout=0.5)
        with pytest.raises(LinkDown, match="does not exist"):
            await link.connect()
    finally:
        await link.aclose()


@pytest.mark.asyncio
async def test_pool_shares_one_arbiter_per_port(line, tmp_path) -> None:
    bus, port, _ = line
    pool = LinkPool()
    try:
        a = pool.get(parse_spec(f"rtu:{port.path}:{BAUD}:1"))
        b = pool.get(parse_spec(f"rtu:{port.path}:{BAUD}:2"))
        assert a is b
        check_reply(2, 0, await b.transact(2, Request.read(READ_HOLDING, 0, 3), timeout=1.0), 3)
    finally:
        await pool.aclose()


@pytest.mark.asyncio
async def test_pool_refuses_one_port_used_two_ways(tmp_path) -> None:
    pool = LinkPool()
    try:
        pool.get(parse_spec(f"rtu:{tmp_path}/ttyUSB0:9600:1"))
        with pytest.raises(ConfigError, match="9600 and 19200 baud"):
            pool.get(parse_spec(f"rtu:{tmp_path}/ttyUSB0:19200:2"))
        with pytest.raises(ConfigError, match="both rtu and ascii"):
            pool.get(parse_spec(f"ascii:{tmp_path}/ttyUSB0:9600:3"))
    finally:
        await pool.aclose()


@pytest.mark.asyncio
async def test_ascii_round_trip(tmp_path) -> None:
    bus = SimBus(BAUD, units=[nonce_unit(1), nonce_unit(2)])
    async with serve_rtu(bus, mode="ascii", directory=tmp_path, link_name="ttyUSB1") as port:
        link = RtuLink.serial(port.path, BAUD, ascii=True)
        try:
            client = UnitClient(link, 2)
            check_reply(2, 20, await client.read_holding(20, 5, timeout=1.0), 5)
            await client.write_registers(100, [1, 2, 3], timeout=1.0)
            assert [bus[2].holding[a] for a in (100, 101, 102)] == [1, 2, 3]
            values = await client.read_write(30, 3, 103, [9], timeout=1.0)
            check_reply(2, 30, values, 3)
            assert bus[2].holding[103] == 9
            bus[1].bad_crc = 1.0  # a wrong LRC
            with pytest.raises(FrameError):
                await link.transact(1, Request.read(READ_HOLDING, 0, 2), timeout=0.2)
            assert link.stats(1).frame_errors == 1
        finally:
            await link.aclose()
