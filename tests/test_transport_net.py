"""Modbus TCP, Modbus UDP and RTU over TCP against the simulator on real sockets."""

from __future__ import annotations

import socket

import pytest
from test_arbiter_rtu import BAUD, check_reply, nonce_unit

from mbclient.errors import LinkDown, ModbusExceptionResponse, ModbusTimeout
from mbclient.modbus.pdu import READ_HOLDING, Request
from mbclient.sim import SimBus
from mbclient.sim.net import serve_rtu_over_tcp, serve_tcp, serve_udp
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool, RtuLink, TcpLink, UdpLink, UnitClient, open_link


def two_units() -> SimBus:
    return SimBus(BAUD, units=[nonce_unit(1), nonce_unit(2)])


async def round_trip(link, bus: SimBus) -> None:
    client = UnitClient(link, 2)
    check_reply(2, 10, await client.read_holding(10, 6, timeout=1.0), 6)
    await client.write_register(100, 42, timeout=1.0)
    await client.write_registers(101, [7, 8], timeout=1.0, priority=True)
    assert [bus[2].holding[a] for a in (100, 101, 102)] == [42, 7, 8]
    check_reply(2, 20, await client.read_write(20, 3, 103, [5], timeout=1.0), 3)
    assert bus[2].holding[103] == 5
    bus[1].exception = 2
    with pytest.raises(ModbusExceptionResponse):
        await link.transact(1, Request.read(READ_HOLDING, 0, 2), timeout=1.0)
    with pytest.raises(ModbusTimeout):  # nobody at unit 9: silence, not exception 4
        await link.transact(9, Request.read(READ_HOLDING, 0, 2), timeout=0.1)
    assert link.stats(2).transactions == 4
    assert link.stats(1).exceptions == 1
    assert link.stats(9).timeouts == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("method, serve, link_type", [
    ("tcp", serve_tcp, TcpLink),
    ("udp", serve_udp, UdpLink),
    ("rtuovertcp", serve_rtu_over_tcp, RtuLink),
])
async def test_round_trip(method: str, serve, link_type: type) -> None:  # noqa: ANN001
    bus = two_units()
    async with serve(bus) as server:
        link = open_link(parse_spec(f"{method}:{server.host}:{server.port}:2"))
        assert isinstance(link, link_type)
        try:
            await round_trip(link, bus)
            if method == "rtuovertcp":  # frames on a (simulated) serial line behind the gateway
                assert bus.collisions == 0
        finally:
            await link.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", [serve_tcp, serve_udp], ids=["tcp", "udp"])
async def test_late_reply_is_discarded_by_transaction_id(serve) -> None:
    bus = two_units()
    request = Request.read(READ_HOLDING, 0, 4)
    async with serve(bus) as server:
        link = TcpLink(server.host, server.port) if serve is serve_tcp else UdpLink(server.host, server.port)
        try:
            bus[1].late_by = 0.15
            with pytest.raises(ModbusTimeout):
                await link.transact(1, request, timeout=0.05)
            stale = bus[1].holding[0]
            bus[1].late_by = None
            values = await link.transact(1, request, timeout=1.0)
            assert check_reply(1, 0, values, 4) != stale
            assert values[0] == bus[1].holding[0]
        finally:
            await link.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("serve", [serve_tcp, serve_rtu_over_tcp], ids=["tcp", "rtuovertcp"])
async def test_reconnects_after_the_device_drops_the_connection(serve) -> None:
    bus = two_units()
    async with serve(bus) as server:
        link = TcpLink(server.host, server.port) if serve is serve_tcp else RtuLink.over_tcp(server.host, server.port)
        try:
            check_reply(1, 0, await link.transact(1, Request.read(READ_HOLDING, 0, 2), timeout=1.0), 2)
            server.disconnect_all()
            check_reply(1, 0, await link.transact(1, Request.read(READ_HOLDING, 0, 2), timeout=1.0), 2)
            assert server.connections == 2
        finally:
            await link.aclose()


@pytest.mark.asyncio
async def test_refused_connection_is_link_down_and_backs_off() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = LinkPool()
    link = pool.get(parse_spec(f"tcp:127.0.0.1:{port}:1"))
    try:
        with pytest.raises(LinkDown, match="cannot connect"):
            await link.transact(1, Request.read(READ_HOLDING, 0, 1), timeout=0.5)
        with pytest.raises(LinkDown, match="next attempt"):
            await link.transact(1, Request.read(READ_HOLDING, 0, 1), timeout=0.5)
    finally:
        await pool.aclose()
