"""The RS-485 bus arbiter: one per serial port (RTU or ASCII), also for RTU over TCP.

pymodbus is not used here: its RTU client takes a reply that arrives after a timeout as
the answer to the next request. This module owns the line and applies one policy.

Line policy (times are the asyncio loop clock; ``c`` is one character time at the baud,
10 bits for 8N1; over a TCP gateway every wire time below is taken as 0):

1. **One frame at a time.** Callers take turns (``turns.Turns``): a priority lane first
   (writes, then priority reads; it waits for at most the transaction in flight), then
   round-robin across units. The turn is held for the whole transaction and, after a
   reply while others wait, through the inter-frame gap that follows it: the next caller
   is chosen when the line may be used again, so a write prompted by that very reply
   (a controller reacting to its grid meter) is already queued and goes first. A caller
   asleep until its next poll (``LinkBase.expect``) is woken when a request goes out that
   holds the line - reply and gap included - past that moment: it queues then, and is
   handed the line when it frees, as it would have been had it woken on its own timer.
2. **Inter-frame silence.** A request is sent only after ``frame_gap(baud)`` (3.5 c; 1.75 ms
   above 19200 Bd) of silence since the later of the last byte received and the end of
   our previous request on the wire. Bytes arriving meanwhile are dropped and restart the
   silence; if the line never falls silent within 1 s the request goes anyway (a
   babbling line is then visible as frame errors, never as values).
   Over a TCP serial gateway the gap is that of a 9600 Bd line (``gateway_baud``): a
   transparent gateway forwards bytes as they come, so it cannot add the gap itself.
3. **Timeout.** The caller's ``timeout`` starts when its request has left the wire
   (write time + ``wire_time(len(request))``), not when it began waiting for its turn.
   A reply already arriving at the deadline may finish: the arbiter waits until the
   line is silent (at most the wire time of a maximal frame beyond the deadline).
4. **What counts as the reply.** Bytes that arrive before the request could physically
   have been answered - while it is still on the wire, plus half a character - are
   dropped on arrival, and a frame whose first byte must have been sent before that
   moment (arrival of its last byte minus its own wire time) is discarded as stale.
   The reply must then carry the addressed unit, a valid CRC (LRC in ASCII mode), the
   requested function (or its exception) and the length/echo ``Request.check_reply``
   wants. A valid frame from another unit or for another function is somebody's late
   reply: dropped, counted, and the arbiter keeps listening until the deadline. Noise in
   front of or behind a valid reply is dropped and counted; the reply still counts.
   A fragment of the addressed unit's reply followed by silence (``max(3.5 c, 20 ms)``,
   50 ms over TCP) is a truncated or corrupted reply: ``FrameError`` at once.
5. **Late replies.** After a transaction to unit U ends without a valid reply (timeout,
   frame error, or its caller cancelled and it then timed out), U's *next* request is held
   back - outside the bus, other units keep their turns; priority requests too - until
   ``deadline + clamp(2 x timeout, 0.25 s, 3 s)`` (timeouts) or ``now + clamp(timeout,
   0.25 s, 3 s)`` (frame errors). Anything U sends meanwhile arrives while the line is
   idle (dropped) or during another unit's transaction (wrong unit: dropped). So a reply
   up to 2 x its timeout late (at least 0.25 s - ``late_guard_min`` -, at most 3 s) is
   never taken as the answer to a later request. Only a reply even later than that, to
   an *identical* request to the same unit, could not be told apart from a prompt
   answer - nothing on the wire distinguishes them.
6. **Cancellation.** A caller cancelled while waiting for its turn or for silence leaves
   nothing behind. A caller cancelled after its request went out abandons a transaction
   that is still open: the next turn-holder first finishes it (reads the reply or lets
   it time out, with the usual accounting and holds) and only then sends its own request.
7. **Port loss** (EOF, EIO, adapter unplugged, gateway closed the socket): the transaction
   in flight fails with ``LinkDown``; the port is reopened lazily by the next request,
   with backoff 0.5 s doubling to 10 s (reset by the first reply after a reopen); while
   backing off every request - including those already queued - fails fast with
   ``LinkDown``. Except: a serial port whose device node had vanished (adapter pulled) is
   reopened by the first request after the node exists again, with the backoff starting
   over - a returning adapter is back within one poll, not after up to 10 s of backoff. A TCP gateway that closed an idle connection is reconnected at once; if
   it closed it just as a request went out (no reply byte came back), the request is
   sent once more on a new connection.
8. **Accounting** per unit (``UnitStats``): valid replies (and exception replies) count as
   ``transactions`` with their latency (end of request on the wire -> last reply byte);
   exception replies also as ``exceptions``; timeouts as ``timeouts``; a transaction that
   saw a bad CRC/LRC, noise, a fragment, a stale frame or a frame from another unit
   counts once in ``frame_errors`` (a timeout that only saw such frames raises
   ``FrameError``, not ``ModbusTimeout``).
9. **Broadcast** (unit 0, writes only): sent without waiting for a reply; ``timeout`` is
   then the quiet time the line keeps afterwards so the units can act on it.

Nothing here grows with the number of transactions or timeouts: per-unit state is one
small object per address, the receive buffer is capped and cleared per transaction.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import time

import serial

from ..errors import FrameError, LinkDown, ModbusExceptionResponse, ModbusTimeout
from ..modbus.framing import char_time, frame_gap
from ..modbus.pdu import WRITE_MULTIPLE, WRITE_SINGLE, Request
from .base import LinkBase, UnitStats, accept_reply
from .framers import FRAME, NEED, STRAY, AsciiFramer, Framer, RtuFramer
from .serialport import open_serial
from .stream import Backoff, StreamLine
from .turns import Turns

log = logging.getLogger(__name__)

QUIET_GUARD_MAX = 1.0  # longest wait for inter-frame silence before sending anyway
SERIAL_SILENCE_FLOOR = 0.020  # a fragment is final after this much silence (USB latency)
TCP_SILENCE = 0.050
LATE_GUARD_FACTOR = 2.0
LATE_GUARD_MIN = 0.25
LATE_GUARD_MAX = 3.0
CONNECT_TIMEOUT = 3.0


def describe_open_error(device: str, exc: BaseException) -> str:
    """One line a user understands for a serial port that would not open."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return f"serial port {device} does not exist"
    if code == errno.EACCES:
        return f"no permission to open serial port {device}"
    if code in (errno.EBUSY, errno.EWOULDBLOCK) or "lock" in str(exc).lower():
        return f"serial port {device} is in use by another program"
    return f"cannot open serial port {device}: {exc}"


class _StaleConnection(LinkDown):
    """A reused gateway connection turned out closed before any reply byte came back."""


class _Unit:
    __slots__ = ("stats", "hold_until")

    def __init__(self) -> None:
        self.stats = UnitStats()
        self.hold_until = -math.inf


class RtuLink(LinkBase):
    """Arbiter for one RTU/ASCII line (serial port or TCP serial gateway); a ``Link``.

    Build it with ``RtuLink.serial(device, baud, ascii=False)`` or
    ``RtuLink.over_tcp(host, port)``. Nothing is opened until the first request (or
    ``connect()``).
    """

    def __init__(
        self,
        name: str,
        framer: Framer,
        *,
        baud: int | None,
        device: str | None = None,
        host: str | None = None,
        port: int | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        late_guard_min: float = LATE_GUARD_MIN,
        gateway_baud: int = 9600,
    ) -> None:
        super().__init__()
        self.name = name
        self._late_min = late_guard_min
        self._framer = framer
        self._device = device
        self._host = host
        self._port = port
        self._baud = baud
        self._is_serial = device is not None
        self._connect_timeout = connect_timeout
        if baud is not None:
            self._char = char_time(baud)
            self._gap = frame_gap(baud)
            self._silence = max(self._gap, SERIAL_SILENCE_FLOOR)
        else:
            # A transparent gateway puts our bytes on its RS-485 side as they arrive, so
            # keep the 3.5-character gap of its line (assumed 9600 Bd); its wire times are
            # unknown and taken as 0 (no stale-frame timing check over TCP).
            self._char = 0.0
            self._gap = frame_gap(gateway_baud)
            self._silence = TCP_SILENCE
        self._min_turn = 0.5 * self._char
        self._turns = Turns()
        self._units: dict[int, _Unit] = {}
        self._backoff = backoff or Backoff()
        self._line: StreamLine | None = None
        self._down_reason = "not connected"
        self._node_gone = False  # the serial device node was missing at the last failure
        self._tx_end = -math.inf
        # the transaction on the wire (one at a time): kept as attributes, not an object
        self._open_txn = False
        self._txn_unit = 0
        self._txn_req: Request | None = None
        self._txn_tx_end = 0.0
        self._txn_deadline = 0.0
        self._txn_timeout = 0.0
        self._txn_reused = False
        self._sent_on_line = 0  # requests sent on the current connection

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def serial(cls, device: str, baud: int, *, ascii: bool = False, **kw: object) -> RtuLink:
        framer: Framer = AsciiFramer() if ascii else RtuFramer()
        short = device.rsplit("/", 1)[-1]
        return cls(f"Modbus {framer.name} {short}", framer, baud=baud, device=device, **kw)  # type: ignore[arg-type]

    @classmethod
    def over_tcp(cls, host: str, port: int, **kw: object) -> RtuLink:
        return cls(f"Modbus RTU over TCP {host}:{port}", RtuFramer(), baud=None, host=host, port=port, **kw)  # type: ignore[arg-type]

    # -- Link API ------------------------------------------------------------------------------
    def stats(self, unit: int) -> UnitStats:
        return self._unit(unit).stats

    async def transact(self, unit: int, request: Request, *, timeout: float, priority: bool = False) -> list[int]:
        self._admit(timeout)
        if unit == 0:
            return await self._broadcast(request, timeout, priority)
        state = self._unit(unit)
        loop = asyncio.get_running_loop()
        turns = self._turns
        resent = False
        while True:
            wait = state.hold_until - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await turns.acquire(unit, priority, first=request.writes)
            handed_over = False
            try:
                line = await self._ready_line()
                if self._open_txn:
                    await self._finish_abandoned(line)
                    line = await self._ready_line()
                if state.hold_until > loop.time():
                    continue  # the abandoned transaction was ours and failed: hold, re-queue
                await self._quiet(line)
                if line.closed:
                    line = await self._ready_line()
                    await self._quiet(line)
                self._send(line, unit, request, timeout)
                if self._expected:
                    self._wake_before_free(line, state.stats.latency)
                try:
                    registers = await self._reply(line)
                except _StaleConnection as exc:
                    if resent:
                        raise LinkDown(str(exc)) from None
                    resent = True  # the gateway had closed an idle connection: once more
                else:
                    handed_over = self._release_after_gap(line)
                    return registers
            finally:
                if not handed_over:
                    turns.release()

    async def aclose(self) -> None:
        self._closed = True
        line, self._line = self._line, None
        if line is not None:
            await line.aclose()

    # -- line management -----------------------------------------------------------------------
    def _unit(self, unit: int) -> _Unit:
        state = self._units.get(unit)
        if state is None:
            if not 0 <= unit <= 255:
                raise ValueError(f"unit {unit} outside 0..255")
            state = self._units[unit] = _Unit()
        return state

    async def _ready_line(self) -> StreamLine:
        line = self._line
        if line is not None:
            if not line.closed:
                return line
            self._drop(line, in_flight=False)
        if self._closed:
            raise LinkDown(f"{self.name}: link closed")
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = self._backoff.remaining(now)
        if wait > 0 and not self._node_returned():
            raise LinkDown(f"{self.name}: {self._down_reason} (next attempt in {wait:.1f} s)")
        try:
            line = await self._open(loop)
        except LinkDown as exc:
            self._down_reason = str(exc)
            self._backoff.failed(loop.time())
            self._node_gone = self._device is not None and not os.path.exists(self._device)
            raise LinkDown(f"{self.name}: {exc}") from None
        if self._closed:
            await line.aclose()
            raise LinkDown(f"{self.name}: link closed")
        log.info("%s: opened", self.name)
        self._line = line
        self._tx_end = loop.time()
        self._open_txn = False
        self._sent_on_line = 0
        return line

    def _node_returned(self) -> bool:
        """Policy 7's exception: the vanished device node exists again (a stat, no bus time)."""
        if not self._node_gone or self._device is None or not os.path.exists(self._device):
            return False
        self._node_gone = False
        self._backoff.reset()  # a re-plugged adapter is a fresh start (udev may still be busy)
        return True

    async def _open(self, loop: asyncio.AbstractEventLoop) -> StreamLine:
        line = StreamLine(loop)
        if self._device is not None:
            try:
                assert self._baud is not None
                transport = await open_serial(loop, lambda: line, self._device, self._baud)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise LinkDown(describe_open_error(self._device, exc)) from None
        else:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(self._connect_timeout):
                    transport, _ = await loop.create_connection(lambda: line, self._host, self._port)
            except TimeoutError:
                raise LinkDown(f"cannot connect to {self._host}:{self._port}: timed out") from None
            except OSError as exc:
                raise LinkDown(f"cannot connect to {self._host}:{self._port}: {exc.strerror or exc}") from None
        line.transport = transport
        return line

    def _drop(self, line: StreamLine, *, in_flight: bool) -> None:
        """Forget a line that closed under us; arm the backoff where a loss means trouble."""
        if self._line is line:
            self._line = None
        self._open_txn = False
        err = line.error
        self._down_reason = f"port lost ({err})" if err else "connection closed"
        if self._is_serial or in_flight:
            self._backoff.failed(line.loop.time())
        if self._device is not None:
            self._node_gone = not os.path.exists(self._device)
        if not self._closed:
            log.warning("%s: %s", self.name, self._down_reason)
        if line.transport is not None and not line.transport.is_closing():
            line.transport.close()

    def _lost(self, line: StreamLine, *, in_flight: bool) -> LinkDown:
        self._drop(line, in_flight=in_flight)
        return LinkDown(f"{self.name}: {self._down_reason}")

    # -- one transaction -------------------------------------------------------------------------
    def _release_after_gap(self, line: StreamLine) -> bool:
        """Keep the turn through the inter-frame gap after a reply; choose the next caller
        when the gap has passed (policy 1). The caller has its reply at once. Whoever
        queued meanwhile competes fairly: a write the reply prompted (the controller
        reacting to a grid meter reading, a few ms) goes first instead of waiting behind a
        read that queued before it. Costs no line time: nobody may send during the gap.
        Returns False if the turn must be released now (nobody waiting, gap already over)."""
        loop = line.loop
        ready = max(line.last_rx, self._tx_end) + self._gap
        if self._expected:  # due within the gap: queue now, not wake alone during it
            self._wake_expected(time.monotonic() + (ready - loop.time()))
        if ready <= loop.time() or not self._turns.waiting():
            return False
        loop.call_at(ready, self._turns.release)
        return True

    def _wake_before_free(self, line: StreamLine, latency: float | None) -> None:
        """The request just sent holds the line until its reply is in (estimated from
        the unit's filtered latency) and the gap after it: a device task whose poll falls
        due before then queues now (``LinkBase._wake_expected``), one wakeup instead of
        two; it still goes in its turn (priority lane first)."""
        loop = line.loop
        free = self._txn_tx_end + (latency or 0.0) + self._gap
        self._wake_expected(time.monotonic() + (free - loop.time()))

    async def _quiet(self, line: StreamLine) -> None:
        """Wait for ``frame_gap`` of silence (policy 2)."""
        loop = line.loop
        gap = self._gap
        limit = loop.time() + QUIET_GUARD_MAX
        while True:
            ready = max(line.last_rx, self._tx_end) + gap
            if ready > limit:
                ready = limit
            if loop.time() >= ready:
                return
            await line.wait(ready)
            if line.closed:
                return  # the caller reopens (or reports the loss)

    def _send(self, line: StreamLine, unit: int, request: Request, timeout: float) -> None:
        frame = self._framer.encode(unit, request.pdu)
        now = line.loop.time()
        tx_end = now + self._char * len(frame)
        line.rx.clear()
        line.accept_from = tx_end + self._min_turn
        self._tx_end = tx_end
        self._txn_unit = unit
        self._txn_req = request
        self._txn_tx_end = tx_end
        self._txn_deadline = tx_end + timeout
        self._txn_timeout = timeout
        self._txn_reused = self._sent_on_line > 0
        self._sent_on_line += 1
        self._open_txn = True
        line.write(frame)

    async def _finish_abandoned(self, line: StreamLine) -> None:
        try:
            await self._reply(line)
        except (ModbusTimeout, FrameError, ModbusExceptionResponse, _StaleConnection):
            pass

    async def _reply(self, line: StreamLine) -> list[int]:
        """Read and check the reply of the open transaction (policies 3, 4 and 8)."""
        unit = self._txn_unit
        request = self._txn_req
        assert request is not None
        function = request.function
        deadline = self._txn_deadline
        framer = self._framer
        scan = framer.scan
        rx = line.rx
        loop = line.loop
        silence = self._silence
        char = self._char
        hard = deadline + char * framer.max_frame + silence
        junk: str | None = None
        while True:
            if line.closed:
                self._close_txn(line)
                if self._txn_reused and not self._is_serial and junk is None:
                    # A gateway closed the connection while it was idle and our request
                    # went into the void: no backoff, the caller's turn tries a new one.
                    self._drop(line, in_flight=False)
                    raise _StaleConnection(f"{self.name}: {self._down_reason}")
                raise self._lost(line, in_flight=True)
            if rx:
                kind, start, end = scan(rx, unit, function)
                if kind == FRAME:
                    if line.arrival(end - 1) - char * (end - start) < line.accept_from:
                        junk = junk or "a stale frame (sent before the request could be answered)"
                        del rx[:end]
                        continue
                    if start or end < len(rx):
                        junk = junk or "noise around the reply"
                    pdu = framer.pdu(rx, start, end)
                    return self._settle(line, pdu, junk)
                if kind != NEED:
                    if kind == STRAY:
                        junk = junk or f"a frame from unit {framer.unit_of(rx, start)} or for another function"
                    else:
                        junk = junk or "garbage"
                    del rx[:end]
                    continue
                now = loop.time()
                quiet = line.last_rx + silence
                if now >= quiet or now >= hard:
                    if framer.looks_like_reply(rx, unit, function):
                        raise self._fail(line, FrameError(f"unit {unit}: truncated or corrupted reply (bad CRC/LRC)"))
                    rx.clear()
                    junk = junk or "noise"
                    continue
                wake = quiet if quiet < hard else hard
            else:
                if loop.time() >= deadline:
                    if junk:
                        raise self._fail(line, FrameError(f"unit {unit}: no valid reply, only {junk}"))
                    raise self._fail(line, ModbusTimeout(f"unit {unit}: no reply within {self._txn_timeout:.3f} s"))
                wake = deadline
            await line.wait(wake)

    def _close_txn(self, line: StreamLine) -> None:
        self._open_txn = False
        line.accept_from = math.inf
        line.rx.clear()

    def _settle(self, line: StreamLine, pdu: bytes, junk: str | None) -> list[int]:
        """A checksum-valid frame from the unit: check it against the request, account."""
        state = self._units[self._txn_unit]
        stats = state.stats
        request = self._txn_req
        assert request is not None
        latency = line.last_rx - self._txn_tx_end
        self._close_txn(line)
        self._backoff.reset()
        if junk:
            stats.frame_errors += 1
        try:
            return accept_reply(request, pdu, stats, latency, self._txn_unit, count_frame_error=not junk)
        except FrameError:
            state.hold_until = line.loop.time() + self._late_guard(self._txn_timeout, 1.0)
            raise

    def _fail(self, line: StreamLine, exc: FrameError | ModbusTimeout) -> FrameError | ModbusTimeout:
        """End the open transaction without a reply: account, hold the unit (policy 5).

        Returns the exception for the caller to raise (raising it here would tie it to
        this frame in a reference cycle on every timeout)."""
        state = self._units[self._txn_unit]
        now = line.loop.time()
        timeout = self._txn_timeout
        if isinstance(exc, ModbusTimeout):
            state.stats.timeouts += 1
            state.hold_until = max(now, self._txn_deadline) + self._late_guard(timeout, LATE_GUARD_FACTOR)
        else:
            state.stats.frame_errors += 1
            state.hold_until = now + self._late_guard(timeout, 1.0)
        self._close_txn(line)
        return exc

    def _late_guard(self, timeout: float, factor: float) -> float:
        """How long a unit that did not answer properly is not asked again (policy 5)."""
        return min(max(factor * timeout, self._late_min), LATE_GUARD_MAX)

    # -- broadcast ---------------------------------------------------------------------------------
    async def _broadcast(self, request: Request, quiet: float, priority: bool) -> list[int]:
        if request.function not in (WRITE_SINGLE, WRITE_MULTIPLE):
            raise ValueError("only writes (function 6 or 16) can be broadcast to unit 0")
        await self._turns.acquire(0, priority, first=True)
        try:
            line = await self._ready_line()
            if self._open_txn:
                await self._finish_abandoned(line)
            await self._quiet(line)
            if line.closed:
                line = await self._ready_line()
                await self._quiet(line)
            frame = self._framer.encode(0, request.pdu)
            tx_end = line.loop.time() + self._char * len(frame)
            line.rx.clear()
            line.accept_from = math.inf
            line.write(frame)
            self._tx_end = tx_end + quiet  # the next request waits while the units act
            return []
        finally:
            self._turns.release()
