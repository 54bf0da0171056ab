"""The simulated units behind sockets: Modbus TCP, Modbus UDP and RTU over TCP.

TCP and UDP have no wire timing (a LAN is fast); a unit's ``turnaround`` and ``late_by``
still delay its reply, and its fault switches still apply (``bad_crc`` has nothing to
spoil in an MBAP frame and is ignored there). A TCP connection is served in order, one
request at a time, as Modbus TCP devices and gateways do. RTU over TCP is a serial line
behind a socket (a "transparent" serial server): the same ``SerialLine`` wire model as the
pseudo-terminal, so timing and collisions are those of the RS-485 side.

An unknown unit id is answered with silence, never with exception 4 or 11.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from ..errors import FrameError
from ..modbus.framing import MBAP_HEADER, mbap_header, mbap_unframe
from .bus import SimBus
from .line import SerialLine
from .unit import Reply, SimUnit


def as_bus(bus_or_units: SimBus | SimUnit | Iterable[SimUnit]) -> SimBus:
    """Accept a bus, one unit or several units (a fresh bus is made for units)."""
    if isinstance(bus_or_units, SimBus):
        return bus_or_units
    if isinstance(bus_or_units, SimUnit):
        return SimBus(units=[bus_or_units])
    return SimBus(units=list(bus_or_units))


@dataclass(eq=False)
class SimServer:
    """A running socket server: where it listens, and a way to drop its clients."""

    host: str
    port: int
    bus: SimBus
    kind: str
    line: SerialLine | None = None
    connections: int = 0  # accepted so far
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)

    def disconnect_all(self) -> None:
        """Close every client connection (a gateway reboot); the listener stays up."""
        for w in list(self._writers):
            w.close()

    @property
    def spec_target(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def serve_tcp(
    bus_or_units: SimBus | SimUnit | Iterable[SimUnit],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    turnaround: bool = True,
) -> AsyncIterator[SimServer]:
    """Modbus TCP (MBAP) server for the units; ``turnaround=False`` answers at once
    (``late_by`` still applies)."""
    bus = as_bus(bus_or_units)
    info = SimServer(host, 0, bus, "tcp")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.connections += 1
        info._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(MBAP_HEADER.size)
                try:
                    tid, pdu_len, unit = mbap_header(header)
                except FrameError:
                    return  # not Modbus: a real server drops the connection
                pdu = await reader.readexactly(pdu_len)
                reply = bus.dispatch(unit, pdu, now=time.monotonic())
                if reply is None:
                    continue
                await asyncio.sleep(_delay(bus, unit, reply, turnaround))
                writer.write(reply.encode("mbap", tid))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            info._writers.discard(writer)
            writer.close()

    async with _stream_server(info, serve, host, port):
        yield info


@contextlib.asynccontextmanager
async def _stream_server(info: SimServer, serve: Callable[..., Awaitable[None]], host: str, port: int):  # noqa: ANN202
    """A TCP server for ``serve`` that, on the way out, drops every client and stops listening."""
    server = await asyncio.start_server(serve, host, port)
    info.port = server.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        server.close()
        info.disconnect_all()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await server.wait_closed()


def _delay(bus: SimBus, unit: int, reply: Reply, turnaround: bool) -> float:
    """Seconds before answering: the unit's turnaround (optional) plus any ``late_by``."""
    if turnaround:
        return max(0.0, reply.delay)
    sim_unit = bus.units.get(unit)
    base = sim_unit.turnaround if sim_unit is not None else 0.0
    return max(0.0, reply.delay - base)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, bus: SimBus, turnaround: bool) -> None:
        self.bus = bus
        self.turnaround = turnaround
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams += 1
        try:
            tid, unit, pdu = mbap_unframe(data)
        except FrameError:
            return  # a malformed datagram is dropped
        reply = self.bus.dispatch(unit, pdu, now=time.monotonic())
        if reply is None:
            return
        out = reply.encode("mbap", tid)
        delay = _delay(self.bus, unit, reply, self.turnaround)
        asyncio.get_running_loop().call_later(delay, self._send, out, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def serve_udp(
    bus_or_units: SimBus | SimUnit | Iterable[SimUnit],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    turnaround: bool = True,
) -> AsyncIterator[SimServer]:
    """Modbus UDP: one MBAP frame per datagram, the transaction id echoed."""
    bus = as_bus(bus_or_units)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UdpProtocol(bus, turnaround), local_addr=(host, port)
    )
    info = SimServer(host, transport.get_extra_info("sockname")[1], bus, "udp")
    try:
        yield info
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def serve_rtu_over_tcp(
    bus: SimBus,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    mode: str = "rtu",
) -> AsyncIterator[SimServer]:
    """Raw RTU (or ASCII) frames over TCP, timed by the same wire model as the pty.

    All connections share one serial line, as a serial-to-Ethernet converter does; each
    reply goes back to the connection whose request it answers.
    """
    line = SerialLine(bus, mode)
    info = SimServer(host, 0, bus, "rtu-over-tcp", line=line)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info.connections += 1
        info._writers.add(writer)

        def sink(data: bytes) -> None:
            if not writer.is_closing():
                writer.write(data)

        try:
            while data := await reader.read(4096):
                line.feed(data, sink)
        except ConnectionError:
            pass
        finally:
            info._writers.discard(writer)
            writer.close()

    try:
        async with _stream_server(info, serve, host, port):
            yield info
    finally:
        line.close()


@contextlib.asynccontextmanager
async def serve_silent(hosts: Iterable[str], port: int) -> AsyncIterator[int]:
    """Hosts that take a Modbus TCP connection and a UDP datagram on ``port`` and never
    answer (a PC, a printer, a device busy elsewhere): the worst case for a network scan,
    which must wait out its timeout for each. Yields how many hosts listen."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    transports: list[asyncio.BaseTransport] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    try:
        for host in hosts:
            servers.append(await asyncio.start_server(swallow, host, port))
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(host, port))
            transports.append(transport)
        yield len(servers)
    finally:
        for t in transports:
            t.close()
        for s in servers:
            s.close()
        for s in servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await s.wait_closed()


@contextlib.asynccontextmanager
async def serve_absent(hosts: Iterable[str], port: int) -> AsyncIterator[int]:
    """Addresses where nobody is home, as on a LAN: a TCP connection attempt gets no
    answer at all (it times out, like a SYN to a host that does not exist) and a UDP
    datagram vanishes (no ICMP). On loopback this takes a listener that never accepts,
    whose backlog is filled first (the kernel then drops further SYNs), and a UDP socket
    that never reads. Yields how many addresses are served."""
    socks: list[socket.socket] = []
    try:
        for host in hosts:
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((host, port))
            ls.listen(0)
            socks.append(ls)
            for _ in range(2):  # fill the accept queue
                c = socket.socket()
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect((host, port))
                socks.append(c)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind((host, port))
            socks.append(u)
        await asyncio.sleep(0.05)  # let the fillers' handshakes complete
        yield len(socks)
    finally:
        for s in socks:
            s.close()
