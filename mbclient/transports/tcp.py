"""Modbus TCP: MBAP frames over one TCP connection, one request in flight.

Many TCP devices and gateways serve one request at a time per connection and some allow
only one connection, so a link keeps one connection per endpoint and takes turns exactly
like the serial arbiter (priority lane, round-robin across units).

Policy:

* every request carries a fresh transaction id; a reply with another id is a late answer
  to an earlier (timed-out) request and is discarded - the stream is parsed frame by
  frame, so such a reply never desynchronises it;
* the reply must carry the addressed unit id and pass ``Request.check_reply``; an MBAP
  header that makes no sense (protocol id, length) means the stream is lost: the
  connection is closed and the request fails with ``FrameError``;
* a timeout keeps the connection (the late reply will be discarded by its id), but two
  timeouts in a row with no reply in between reconnect before the next request (a device
  that rebooted silently would otherwise never be reached again);
* a connection that fails while a request is in flight, or cannot be made, fails the
  request with ``LinkDown`` and arms a backoff (0.5 s doubling to 10 s) during which
  requests fail fast; a connection the device closed while idle is reopened at once,
  and a request that went out on a connection the device had just closed (it closed
  before any reply byte) is sent once more on a new connection.
"""

from __future__ import annotations

import asyncio
import logging
import math

from ..errors import FrameError, LinkDown, ModbusTimeout
from ..modbus.framing import MBAP_HEADER, mbap_frame, mbap_header
from ..modbus.pdu import Request
from .base import LinkBase, UnitStats, accept_reply
from .stream import Backoff, StreamLine
from .turns import Turns

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0
RECONNECT_AFTER_TIMEOUTS = 2


def strip_brackets(host: str) -> str:
    """``[::1]`` (spec notation) -> ``::1`` (what sockets want)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class TcpLink(LinkBase):
    """A ``Link`` to one Modbus TCP endpoint (see module docstring)."""

    def __init__(
        self, host: str, port: int, *, backoff: Backoff | None = None, connect_timeout: float = CONNECT_TIMEOUT
    ) -> None:
        super().__init__()
        self.name = f"Modbus TCP {host}:{port}"
        self._host = strip_brackets(host)
        self._port = port
        self._connect_timeout = connect_timeout
        self._turns = Turns()
        self._backoff = backoff or Backoff()
        self._line: StreamLine | None = None
        self._down_reason = "not connected"
        self._tid = 0
        self._silent = 0  # consecutive timeouts on this connection
        self._sent_on_line = 0  # requests sent on the current connection

    async def transact(self, unit: int, request: Request, *, timeout: float, priority: bool = False) -> list[int]:
        self._admit(timeout)
        stats = self.stats(unit)
        await self._turns.acquire(unit, priority, first=request.writes)
        try:
            for attempt in (1, 2):
                line = await self._ready_line()
                reused = self._sent_on_line > 0
                self._sent_on_line += 1
                self._tid = tid = (self._tid + 1) & 0xFFFF
                sent = line.loop.time()
                line.write(mbap_frame(tid, unit, request.pdu))
                pdu = await self._read(line, tid, unit, stats, sent + timeout, timeout)
                if pdu is not None:
                    break
                if attempt == 1 and reused and not line.rx:
                    # The device had closed the idle connection as the request went out.
                    self._lost(line, in_flight=False)
                    continue
                raise self._lost(line, in_flight=True)
            assert pdu is not None
            latency = line.last_rx - sent
            return accept_reply(request, pdu, stats, latency, unit)
        finally:
            self._turns.release()

    async def aclose(self) -> None:
        self._closed = True
        line, self._line = self._line, None
        if line is not None:
            await line.aclose()

    # -- internals -------------------------------------------------------------------------------
    async def _read(
        self, line: StreamLine, tid: int, unit: int, stats: UnitStats, deadline: float, timeout: float
    ) -> bytes | None:
        """The reply PDU for ``tid``; None if the connection closed first."""
        rx = line.rx
        loop = line.loop
        while True:
            while len(rx) >= MBAP_HEADER.size:
                try:
                    rtid, pdu_len, runit = mbap_header(bytes(rx[: MBAP_HEADER.size]))
                except FrameError as exc:
                    stats.frame_errors += 1
                    self._discard(line)
                    raise FrameError(f"{self.name}: {exc}; reconnecting") from None
                total = MBAP_HEADER.size + pdu_len
                if len(rx) < total:
                    break
                pdu = bytes(rx[MBAP_HEADER.size : total])
                del rx[:total]
                if rtid != tid:
                    continue  # the late answer to an earlier request
                self._silent = 0
                self._backoff.reset()
                if runit != unit:
                    stats.frame_errors += 1
                    raise FrameError(f"unit {unit}: reply carries unit id {runit}")
                return pdu
            if line.closed:
                return None
            if loop.time() >= deadline:
                stats.timeouts += 1
                self._silent += 1
                raise ModbusTimeout(f"unit {unit}: no reply within {timeout:.3f} s")
            await line.wait(deadline)

    async def _ready_line(self) -> StreamLine:
        line = self._line
        if line is not None:
            if not line.closed and self._silent < RECONNECT_AFTER_TIMEOUTS:
                return line
            if line.closed:
                self._lost(line, in_flight=False)
            else:
                self._discard(line)
        if self._closed:
            raise LinkDown(f"{self.name}: link closed")
        loop = asyncio.get_running_loop()
        wait = self._backoff.remaining(loop.time())
        if wait > 0:
            raise LinkDown(f"{self.name}: {self._down_reason} (next attempt in {wait:.1f} s)")
        line = StreamLine(loop)
        line.accept_from = -math.inf  # a stream: every byte counts, ids sort them out
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            async with asyncio.timeout(self._connect_timeout):
                transport, _ = await loop.create_connection(lambda: line, self._host, self._port)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            self._down_reason = f"cannot connect: {reason}"
            self._backoff.failed(loop.time())
            raise LinkDown(f"{self.name}: {self._down_reason}") from None
        line.transport = transport
        if self._closed:
            await line.aclose()
            raise LinkDown(f"{self.name}: link closed")
        self._line = line
        self._silent = 0
        self._sent_on_line = 0
        return line

    def _discard(self, line: StreamLine) -> None:
        """Close a connection we no longer trust (no backoff: reconnect on the next request)."""
        if self._line is line:
            self._line = None
        if line.transport is not None and not line.transport.is_closing():
            line.transport.close()

    def _lost(self, line: StreamLine, *, in_flight: bool) -> LinkDown:
        self._discard(line)
        err = line.error
        self._down_reason = f"connection lost ({err})" if err else "connection closed by the device"
        if in_flight:
            self._backoff.failed(line.loop.time())
            log.warning("%s: %s", self.name, self._down_reason)
        return LinkDown(f"{self.name}: {self._down_reason}")
