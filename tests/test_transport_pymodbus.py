"""Interoperability: our Modbus TCP client against pymodbus's own server (a second,
independent implementation of the protocol)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from mbclient.errors import ModbusExceptionResponse
from mbclient.modbus.pdu import READ_HOLDING, Request
from mbclient.transports import TcpLink, UnitClient

UNIT = 7


def bits() -> list[SimData]:
    return [SimData(0, values=[False] * 16, datatype=DataType.BITS)]


@pytest_asyncio.fixture
async def pymodbus_server() -> AsyncIterator[tuple[str, int]]:
    holding = SimData(0, values=[100 + i for i in range(64)], datatype=DataType.REGISTERS)
    inputs = SimData(0, values=[200 + i for i in range(64)], datatype=DataType.REGISTERS)
    device = SimDevice(id=UNIT, simdata=(bits(), bits(), [holding], [inputs]))
    server = ModbusTcpServer([device], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield "127.0.0.1", server.transport.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()


@pytest.mark.asyncio
async def test_tcp_client_against_pymodbus_server(pymodbus_server) -> None:
    host, port = pymodbus_server
    link = TcpLink(host, port)
    client = UnitClient(link, UNIT)
    try:
        assert await client.read_holding(0, 4, timeout=2.0) == [100, 101, 102, 103]
        assert await client.read_input(10, 3, timeout=2.0) == [210, 211, 212]
        await client.write_register(3, 555, timeout=2.0)
        await client.write_registers(5, [1, 2, 3], timeout=2.0)
        # fc 23: the write happens before the read
        assert await client.read_write(0, 8, 6, [9], timeout=2.0) == [100, 101, 102, 555, 104, 1, 9, 3]
        with pytest.raises(ModbusExceptionResponse) as info:
            await link.transact(UNIT, Request.read(READ_HOLDING, 1000, 4), timeout=2.0)
        assert info.value.code == 2
        assert link.stats(UNIT).transactions == 6 and link.stats(UNIT).exceptions == 1
    finally:
        await link.aclose()
