"""Modbus UDP: one MBAP frame per datagram, one request in flight per endpoint.

The socket is connected to the device, so the kernel already drops datagrams from other
addresses. A reply is taken only if its transaction id and unit id match the request in
flight; anything else (a late reply to an earlier request, a malformed datagram) is
ignored and the wait goes on until the caller's deadline. There is no retransmission:
the caller's retry policy decides. An ICMP "port unreachable" fails the request with
``LinkDown`` (nobody listens there); UDP has no connection to back off from.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..errors import FrameError, LinkDown, ModbusTimeout
from ..modbus.framing import mbap_frame, mbap_unframe
from ..modbus.pdu import Request
from .base import LinkBase, accept_reply
from .tcp import strip_brackets
from .turns import Turns

MAX_QUEUED = 16  # datagrams kept while nobody reads (older ones are dropped)


DATAGRAM_SIZE = 4096  # larger than any Modbus frame (and than a truncated one could hide)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.DatagramTransport | None = None
        self.inbox: deque[tuple[bytes, float]] = deque(maxlen=MAX_QUEUED)
        self.error: Exception | None = None
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # asyncio receives each datagram into a fresh 256 KiB buffer (``max_size`` of its
        # selector transports), which the C library serves with mmap/munmap on every reply;
        # a Modbus UDP frame is at most 260 bytes.
        if isinstance(getattr(transport, "max_size", None), int):
            transport.max_size = DATAGRAM_SIZE  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.inbox.append((data, self.loop.time()))
        self._poke()

    def error_received(self, exc: Exception) -> None:
        self.error = exc
        self._poke()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._poke()

    def _poke(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, until: float) -> None:
        if until <= self.loop.time():
            return
        fut = self.loop.create_future()
        self._waiter = fut
        handle = self.loop.call_at(until, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None


class UdpLink(LinkBase):
    """A ``Link`` to one Modbus UDP endpoint (see module docstring)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.name = f"Modbus UDP {host}:{port}"
        self._host = strip_brackets(host)
        self._port = port
        self._turns = Turns()
        self._proto: _Datagrams | None = None
        self._tid = 0

    async def connect(self) -> None:
        await self._endpoint()

    async def transact(self, unit: int, request: Request, *, timeout: float, priority: bool = False) -> list[int]:
        self._admit(timeout)
        stats = self.stats(unit)
        await self._turns.acquire(unit, priority, first=request.writes)
        try:
            proto = await self._endpoint()
            proto.inbox.clear()  # whatever came before this request cannot be its answer
            proto.error = None
            self._tid = tid = (self._tid + 1) & 0xFFFF
            loop = proto.loop
            sent = loop.time()
            assert proto.transport is not None
            proto.transport.sendto(mbap_frame(tid, unit, request.pdu))
            deadline = sent + timeout
            while True:
                while proto.inbox:
                    data, arrived = proto.inbox.popleft()
                    try:
                        rtid, runit, pdu = mbap_unframe(data)
                    except FrameError:
                        continue
                    if rtid != tid or runit != unit:
                        continue
                    latency = arrived - sent
                    return accept_reply(request, pdu, stats, latency, unit)
                if proto.error is not None:
                    err, proto.error = proto.error, None
                    raise LinkDown(f"{self.name}: {getattr(err, 'strerror', None) or err}")
                if proto.closed:
                    self._proto = None
                    raise LinkDown(f"{self.name}: socket closed")
                if loop.time() >= deadline:
                    stats.timeouts += 1
                    raise ModbusTimeout(f"unit {unit}: no reply within {timeout:.3f} s")
                await proto.wait(deadline)
        finally:
            self._turns.release()

    async def aclose(self) -> None:
        self._closed = True
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            await asyncio.sleep(0)  # let the transport call connection_lost

    async def _endpoint(self) -> _Datagrams:
        proto = self._proto
        if proto is not None and not proto.closed:
            return proto
        loop = asyncio.get_running_loop()
        proto = _Datagrams(loop)
        try:
            await loop.create_datagram_endpoint(lambda: proto, remote_addr=(self._host, self._port))
        except OSError as exc:
            raise LinkDown(f"{self.name}: {exc.strerror or exc}") from None
        self._proto = proto
        return proto
