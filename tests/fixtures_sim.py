"""Fixtures for the simulated Modbus bus (owned by the simulator room).

Function-scoped and fast. The seed installation: ``sim_bus`` is a 9600 Bd ``SimBus`` with a
Growatt MIN (unit 1) and an SDM230 grid meter (unit 2); ``sim_site`` is the ``Site`` tying
them together (sun 3000 W, load 800 W, so the meter reads -2200 W).

Also here: ``RawSerial`` (fixture ``raw_serial``), a byte-level client of the simulated
serial port for tests that must not depend on the client transports.
"""

from __future__ import annotations

import asyncio
import os
import time
import tty
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from mbclient.sim import SimBus, SimSerialPort, SimServer, Site, seed_site, serve_rtu
from mbclient.sim.net import serve_rtu_over_tcp, serve_tcp, serve_udp


@pytest.fixture
def sim_site() -> Site:
    """The seed site, not running (step it, or use ``running_site``)."""
    return seed_site()


@pytest.fixture
def sim_bus(sim_site: Site) -> SimBus:
    """SimBus 9600 Bd: Growatt MIN on unit 1, SDM230 on unit 2 (``sim_bus.units``)."""
    assert sim_site.bus is not None
    return sim_site.bus


@pytest_asyncio.fixture
async def running_site(sim_site: Site) -> AsyncIterator[Site]:
    """The seed site with its physics task stepping every 50 ms."""
    async with sim_site.running(0.05):
        yield sim_site


@pytest_asyncio.fixture
async def rtu_port(sim_bus: SimBus, tmp_path) -> AsyncIterator[SimSerialPort]:
    """``sim_bus`` served as RTU on a pty; open ``rtu_port.path`` (``<tmp>/ttyUSB0``)."""
    async with serve_rtu(sim_bus, directory=tmp_path) as port:
        yield port


@pytest_asyncio.fixture
async def ascii_port(sim_bus: SimBus, tmp_path) -> AsyncIterator[SimSerialPort]:
    """``sim_bus`` served as Modbus ASCII on a pty (``<tmp>/ttyUSB1``)."""
    async with serve_rtu(sim_bus, mode="ascii", directory=tmp_path, link_name="ttyUSB1") as port:
        yield port


@pytest_asyncio.fixture
async def tcp_sim(sim_bus: SimBus) -> AsyncIterator[SimServer]:
    """``sim_bus`` as a Modbus TCP server on 127.0.0.1 (``.host``, ``.port``)."""
    async with serve_tcp(sim_bus) as server:
        yield server


@pytest_asyncio.fixture
async def udp_sim(sim_bus: SimBus) -> AsyncIterator[SimServer]:
    """``sim_bus`` as a Modbus UDP server on 127.0.0.1."""
    async with serve_udp(sim_bus) as server:
        yield server


@pytest_asyncio.fixture
async def rtu_tcp_sim(sim_bus: SimBus) -> AsyncIterator[SimServer]:
    """``sim_bus`` behind a transparent serial server: RTU frames over TCP, wire-timed."""
    async with serve_rtu_over_tcp(sim_bus) as server:
        yield server


class RawSerial:
    """The client end of a simulated serial port, at the byte level (no transports)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.buf = bytearray()
        self.last_rx = 0.0
        self.hangup = False
        self._event = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EIO / hang-up: the port went away
            self.hangup = True
            asyncio.get_running_loop().remove_reader(self.fd)
        else:
            self.buf += data
            self.last_rx = time.monotonic()
        self._event.set()

    def send(self, frame: bytes) -> float:
        """Write ``frame``; returns the monotonic time just before the write."""
        t = time.monotonic()
        os.write(self.fd, frame)
        return t

    async def recv(self, n: int, timeout: float = 2.0) -> bytes:
        """Up to ``n`` bytes: returns early with what arrived if the timeout expires."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < n and not self.hangup:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except TimeoutError:
                break
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def quiet(self, seconds: float) -> bytes:
        """Wait ``seconds`` and return everything that arrived meanwhile."""
        await asyncio.sleep(seconds)
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def close(self) -> None:
        if not self.hangup:
            asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@pytest_asyncio.fixture
async def raw_serial(rtu_port: SimSerialPort) -> AsyncIterator[RawSerial]:
    """A ``RawSerial`` opened on ``rtu_port``."""
    raw = RawSerial(rtu_port.path)
    try:
        yield raw
    finally:
        raw.close()
