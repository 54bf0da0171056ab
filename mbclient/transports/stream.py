"""The receive side of a byte stream (serial port or TCP socket), and reconnect backoff.

``StreamLine`` is an asyncio protocol that keeps what arrived in one buffer together with
the loop time of the last arrival. Readers parse the buffer instead of awaiting
``read(n)``, so a reader that is cancelled halfway loses nothing and the next reader sees
the line exactly as it is. Bytes that arrive before ``accept_from`` (while the line is
idle, or while our own request is still on the wire) are dropped on arrival: they cannot
be the answer to anything we asked.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

MAX_BUFFER = 2048  # a Modbus ADU is at most 256 bytes (RTU) / 513 characters (ASCII)
RECV_SIZE = 4096  # one socket read (asyncio's default of 256 KiB costs an mmap per read)
ARRIVALS_KEPT = 64  # chunks whose arrival time ``arrival()`` can tell (older: ``last_rx``)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class StreamLine(asyncio.BufferedProtocol):
    """Buffered, timestamped receiver (see module docstring).

    A ``BufferedProtocol`` for sockets: asyncio then receives into one reused buffer
    (``get_buffer``/``buffer_updated``) instead of allocating 256 KiB per read, which the C
    library serves with mmap/mremap/munmap - three system calls per reply on Modbus TCP.
    Serial transports call ``data_received`` as for any protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.BaseTransport | None = None
        self.rx = bytearray()
        self.last_rx = -math.inf  # loop time of the last arrival (accepted or dropped)
        self.accept_from = math.inf  # arrivals before this loop time are dropped
        self.dropped = 0  # bytes dropped on arrival (late replies, chatter while idle)
        self.accepted = 0  # bytes ever appended to rx (rx is always a suffix of them)
        self._chunks: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)  # (accepted, time)
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed_fut: asyncio.Future[None] = loop.create_future()
        self._inbuf = memoryview(bytearray(RECV_SIZE))

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes | memoryview) -> None:
        now = self.loop.time()
        self.last_rx = now
        if now < self.accept_from:
            self.dropped += len(data)
            return
        rx = self.rx
        rx += data
        self.accepted += len(data)
        self._chunks.append((self.accepted, now))
        if len(rx) > MAX_BUFFER:  # a babbling line cannot grow memory
            del rx[: len(rx) - MAX_BUFFER]
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._inbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._inbuf[:nbytes])

    def eof_received(self) -> bool:
        return False  # half-closed is closed: let the transport shut down

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)

    # -- reader side -------------------------------------------------------------------------
    def arrival(self, index: int) -> float:
        """Loop time at which ``rx[index]`` arrived (``last_rx`` once that is forgotten).

        Readers only ever delete from the front of ``rx``, so it is the tail of all the
        bytes accepted and ``index`` maps onto that count. A frame's age must come from its
        own last byte, not from whatever arrived after it (tests/test_fuzz_links.py).
        """
        absolute = self.accepted - len(self.rx) + index
        # The chunk holding it is the oldest one ending after it. A reply's last byte is in
        # one of the newest chunks: walk back from the newest, not up from the oldest of 64.
        found = None
        for end, when in reversed(self._chunks):
            if absolute >= end:
                break
            found = when
        return self.last_rx if found is None else found

    async def wait(self, until: float) -> None:
        """Return when bytes are accepted, the line closes, or the loop clock reaches ``until``."""
        if self.closed:
            return
        loop = self.loop
        if until <= loop.time():
            return
        fut = loop.create_future()
        self._waiter = fut
        handle = loop.call_at(until, _wake, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._waiter = None

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        transport.write(data)  # type: ignore[attr-defined]

    async def aclose(self, wait: float = 2.0) -> None:
        """Close the transport and wait (bounded) until it reports the connection lost."""
        transport = self.transport
        if transport is not None and not self.closed:
            transport.close()
        if not self._closed_fut.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._closed_fut), wait)
            except asyncio.TimeoutError:
                if transport is not None:
                    abort = getattr(transport, "abort", None)
                    if abort is not None:
                        abort()


class Backoff:
    """Exponential reconnect delay: ``first`` doubling up to ``maximum``.

    ``failed(now)`` arms the window; until ``retry_at`` a link refuses fast with LinkDown
    instead of hammering a missing port or refused host.
    """

    __slots__ = ("first", "maximum", "delay", "retry_at")

    def __init__(self, first: float = 0.5, maximum: float = 10.0) -> None:
        self.first = first
        self.maximum = maximum
        self.delay = first
        self.retry_at = -math.inf

    def failed(self, now: float) -> None:
        self.retry_at = now + self.delay
        self.delay = min(self.delay * 2, self.maximum)

    def reset(self) -> None:
        self.delay = self.first
        self.retry_at = -math.inf

    def remaining(self, now: float) -> float:
        return max(0.0, self.retry_at - now)
