"""The arbiter's serial port (``transports.serialport``) on a real pseudo-terminal.

What the arbiter depends on when it reads and writes the descriptor itself instead of
through pyserial's select-based calls: a frame written arrives whole on the other side, a
reply is read as it came, and a port that the loop reports readable whose other side is gone (an adapter pulled out) raises ``SerialException`` - which
is how the transport learns the port is lost. And an RTU link on such a port still
completes transactions against a simulated unit.
"""

from __future__ import annotations

import asyncio
import os
import select
import termios
import tty

import pytest
import serial

from mbclient.modbus.framing import rtu_frame
from mbclient.modbus.pdu import READ_INPUT, Request
from mbclient.sim import INPUT, SimBus, serve_rtu
from mbclient.sim.models import sdm230
from mbclient.transports import RtuLink
from mbclient.transports.serialport import LoopSerial, open_serial


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def test_reads_and_writes_whole_frames(pty_pair):
    master, path = pty_pair
    port = LoopSerial(path, baudrate=9600, exclusive=True, timeout=0, write_timeout=0)
    try:
        assert termios.tcgetattr(port.fd)[5] == termios.B9600  # pyserial configured the port
        request = rtu_frame(2, bytes.fromhex("0300000002"))
        assert port.write(request) == len(request)
        assert select.select([master], [], [], 1.0)[0]
        assert os.read(master, 256) == request
        reply = rtu_frame(2, bytes.fromhex("030443660000"))
        os.write(master, reply)
        assert select.select([port.fd], [], [], 1.0)[0]
        assert port.read(1024) == reply
    finally:
        port.close()


def test_other_side_gone_is_a_serial_exception(pty_pair):
    master, path = pty_pair
    port = LoopSerial(path, baudrate=9600, exclusive=True, timeout=0, write_timeout=0)
    try:
        os.close(master)  # the adapter is pulled: the tty hangs up
        assert select.select([port.fd], [], [], 1.0)[0]  # "readable", as the loop would say
        with pytest.raises(serial.SerialException):
            port.read(1024)
    finally:
        port.close()


def test_closed_port_is_refused(pty_pair):
    _, path = pty_pair
    port = LoopSerial(path, baudrate=9600, timeout=0, write_timeout=0)
    port.close()
    with pytest.raises(serial.PortNotOpenError):
        port.read(1)
    with pytest.raises(serial.PortNotOpenError):
        port.write(b"\x01")


@pytest.mark.asyncio
async def test_open_serial_attaches_a_protocol(pty_pair):
    master, path = pty_pair
    got: asyncio.Queue[bytes] = asyncio.Queue()
    lost = asyncio.get_running_loop().create_future()

    class Proto(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.put_nowait(data)

        def connection_lost(self, exc: BaseException | None) -> None:
            if not lost.done():
                lost.set_result(exc)

    loop = asyncio.get_running_loop()
    transport = await open_serial(loop, Proto, path, 19200)
    try:
        assert termios.tcgetattr(transport.serial.fd)[5] == termios.B19200
        transport.write(b"\x01\x02")
        await asyncio.sleep(0.05)
        assert os.read(master, 16) == b"\x01\x02"
        os.write(master, b"\x03\x04\x05")
        assert await asyncio.wait_for(got.get(), 2.0) == b"\x03\x04\x05"
        os.close(master)  # pulled out: the transport closes with an error
        exc = await asyncio.wait_for(lost, 2.0)
        assert isinstance(exc, serial.SerialException)
    finally:
        transport.close()


@pytest.mark.asyncio
async def test_rtu_link_reads_a_unit_through_it():
    bus = SimBus(9600)
    meter = bus.add(sdm230(2))
    async with serve_rtu(bus) as port:
        link = RtuLink.serial(port.path, 9600)
        try:
            regs = await link.transact(2, Request.read(READ_INPUT, 0, 2), timeout=1.0)
        finally:
            await link.aclose()
    # the SDM230's voltage (input registers 0-1, float32) as the simulated meter holds it
    assert regs == [meter.get_u16(INPUT, 0), meter.get_u16(INPUT, 1)]
    assert meter.counters.requests == 1
