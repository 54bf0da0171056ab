"""The simulator behind sockets: Modbus TCP, UDP and RTU over TCP, at the byte level,
plus pymodbus's own client as an independent opinion on our framing."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from mbclient.modbus.framing import MBAP_HEADER, mbap_frame, mbap_header, mbap_unframe, rtu_frame, rtu_unframe
from mbclient.modbus.pdu import Request
from mbclient.sim import SimBus, SimServer


async def tcp_transact(reader, writer, tid: int, unit: int, pdu: bytes, timeout: float = 2.0):
    writer.write(mbap_frame(tid, unit, pdu))
    await writer.drain()
    header = await asyncio.wait_for(reader.readexactly(MBAP_HEADER.size), timeout)
    rtid, n, runit = mbap_header(header)
    body = await asyncio.wait_for(reader.readexactly(n), timeout)
    return rtid, runit, body


@pytest.mark.asyncio
async def test_tcp_echoes_transaction_ids_and_answers_in_order(sim_bus: SimBus, tcp_sim: SimServer):
    reader, writer = await asyncio.open_connection(tcp_sim.host, tcp_sim.port)
    try:
        for tid in (1, 0x1234, 0xFFFF):
            rtid, unit, pdu = await tcp_transact(reader, writer, tid, 2, Request.read(4, 0, 2).pdu)
            assert (rtid, unit) == (tid, 2)
            assert Request.read(4, 0, 2).check_reply(pdu)
        # Pipelined: two requests written at once come back in order with their own ids.
        writer.write(mbap_frame(7, 1, Request.read(3, 43, 2).pdu) + mbap_frame(8, 2, Request.read(3, 0xFC00, 2).pdu))
        first = await tcp_transact_read(reader)
        second = await tcp_transact_read(reader)
        assert first[0] == 7 and Request.read(3, 43, 2).check_reply(first[2]) == [5100, 0x0201]
        assert second[0] == 8 and second[1] == 2
    finally:
        writer.close()


async def tcp_transact_read(reader):
    rtid, n, unit = mbap_header(await asyncio.wait_for(reader.readexactly(MBAP_HEADER.size), 2.0))
    return rtid, unit, await reader.readexactly(n)


@pytest.mark.asyncio
async def test_tcp_unknown_unit_is_silent_not_exception_4(sim_bus: SimBus, tcp_sim: SimServer):
    reader, writer = await asyncio.open_connection(tcp_sim.host, tcp_sim.port)
    try:
        writer.write(mbap_frame(5, 99, Request.read(4, 0, 2).pdu))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(1), 0.2)
        # The connection still works afterwards.
        rtid, unit, pdu = await tcp_transact(reader, writer, 6, 2, Request.read(4, 0, 2).pdu)
        assert (rtid, unit) == (6, 2)
        sim_bus[2].exception = 4
        _, _, pdu = await tcp_transact(reader, writer, 7, 2, Request.read(4, 0, 2).pdu)
        assert pdu == bytes((0x84, 4))
    finally:
        writer.close()
    assert sim_bus.unknown_unit == 1


@pytest.mark.asyncio
async def test_tcp_turnaround_and_late_reply(sim_bus: SimBus, tcp_sim: SimServer):
    reader, writer = await asyncio.open_connection(tcp_sim.host, tcp_sim.port)
    try:
        sim_bus[1].late_by = 0.2
        t0 = time.monotonic()
        await tcp_transact(reader, writer, 1, 1, Request.read(3, 3, 1).pdu)
        assert time.monotonic() - t0 >= 0.2 + sim_bus[1].turnaround - 0.002
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_udp_echoes_transaction_id_per_datagram(sim_bus: SimBus, udp_sim: SimServer):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (udp_sim.host, udp_sim.port))
        for tid in (3, 40000):
            await loop.sock_sendall(sock, mbap_frame(tid, 1, Request.read(4, 35, 2).pdu))
            data = await asyncio.wait_for(loop.sock_recv(sock, 512), 2.0)
            rtid, unit, pdu = mbap_unframe(data)
            assert (rtid, unit) == (tid, 1)
            (raw,) = struct.unpack(">I", pdu[2:6])
            assert raw == round(sim_bus[1].output_w * 10)
        await loop.sock_sendall(sock, mbap_frame(9, 42, Request.read(4, 0, 2).pdu))  # nobody
        await loop.sock_sendall(sock, b"\x00\x01garbage")  # not MBAP
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(sock, 512), 0.2)
    finally:
        sock.close()


@pytest.mark.asyncio
async def test_rtu_over_tcp_keeps_the_wire_timing(sim_bus: SimBus, rtu_tcp_sim: SimServer):
    reader, writer = await asyncio.open_connection(rtu_tcp_sim.host, rtu_tcp_sim.port)
    try:
        t0 = time.monotonic()
        writer.write(rtu_frame(2, Request.read(4, 0x46, 6).pdu))
        data = await asyncio.wait_for(reader.readexactly(17), 2.0)
        elapsed = time.monotonic() - t0
        unit, pdu = rtu_unframe(data)
        assert unit == 2 and struct.unpack(">f", pdu[2:6])[0] == pytest.approx(50.0)
        assert elapsed >= sim_bus.wire_time(8) + sim_bus[2].turnaround + sim_bus.wire_time(17) - 0.001
    finally:
        writer.close()
    assert sim_bus.collisions == 0


@pytest.mark.asyncio
async def test_pymodbus_client_reads_the_tcp_simulator(sim_bus: SimBus, tcp_sim: SimServer):
    client = AsyncModbusTcpClient(tcp_sim.host, port=tcp_sim.port, timeout=2, retries=0)
    await client.connect()
    try:
        rr = await client.read_input_registers(0x0000, count=2, device_id=2)
        volts = client.convert_from_registers(rr.registers, client.DATATYPE.FLOAT32)
        assert volts == pytest.approx(230.0)
        rr = await client.read_holding_registers(0xFC00, count=2, device_id=2)
        assert client.convert_from_registers(rr.registers, client.DATATYPE.UINT32) == sim_bus[2].serial
        rr = await client.read_holding_registers(209, count=15, device_id=1)
        serial = client.convert_from_registers(rr.registers, client.DATATYPE.STRING).strip()
        assert serial == sim_bus[1].serial
        wr = await client.write_register(3, 60, device_id=1)
        assert not wr.isError() and sim_bus[1].holding[3] == 60
        rr = await client.read_input_registers(0x0002, count=2, device_id=2)  # not on an SDM230
        assert rr.isError() and rr.exception_code == 2
    finally:
        client.close()


@pytest.mark.asyncio
async def test_pymodbus_rtu_framer_reads_through_rtu_over_tcp(sim_bus: SimBus, rtu_tcp_sim: SimServer):
    client = AsyncModbusTcpClient(
        rtu_tcp_sim.host, port=rtu_tcp_sim.port, framer=FramerType.RTU, timeout=2, retries=0
    )
    await client.connect()
    try:
        rr = await client.read_holding_registers(43, count=2, device_id=1)
        assert rr.registers == [5100, 0x0201]
        await asyncio.sleep(0.01)
        rr = await client.read_input_registers(0x0048, count=4, device_id=2)
        imp, exp = (client.convert_from_registers(rr.registers[i : i + 2], client.DATATYPE.FLOAT32) for i in (0, 2))
        assert imp == pytest.approx(sum(sim_bus[2].import_kwh), rel=1e-6)
        assert exp == pytest.approx(sum(sim_bus[2].export_kwh), rel=1e-6)
    finally:
        client.close()
    assert sim_bus.garbage == 0
