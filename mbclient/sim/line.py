"""Wire-time emulation of a serial line carrying RTU or ASCII frames.

A client writes a request to a pseudo-terminal (or a TCP socket) instantly; on RS-485 the
same bytes take ``wire_time(len)``. ``SerialLine`` replays what the real line would do:

1. bytes occupy the wire from their arrival, one character time each, back to back
   behind anything the master sent before (its UART serialises them);
2. a request frame is complete when its length, known from the header (fc 3/4/6: 8 bytes,
   fc 16/23 from the byte count), is reached; anything else ends at 3.5 characters of
   silence and is garbage unless its CRC happens to be right;
3. a frame with a bad CRC makes the slaves ignore the line until the next silence;
4. the addressed unit waits its turnaround (never less than 3.5 characters), then its
   reply occupies the wire; the reply bytes are handed to the client at the moment the
   real last byte would arrive.

Every frame goes on the ``SimBus`` timeline, which counts collisions and gaps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..errors import FrameError
from ..modbus.framing import ascii_unframe
from .bus import BROADCAST, GARBAGE, REPLY, REQUEST, SimBus, WireFrame
from .unit import check_frame_crc

Sink = Callable[[bytes], None]

ASCII_SILENCE = 1.0  # Modbus ASCII allows up to 1 s between characters of one frame


def request_length(buf: bytes | bytearray) -> int | None:
    """Total RTU request length from its first bytes; None if unknown yet (or unknowable)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    if fc == 23:
        return 13 + buf[10] if len(buf) >= 11 else None
    return None  # unknown function: delimited by silence


class SerialLine:
    """One RS-485 line: turns a byte stream from the master into timed frames and replies."""

    def __init__(self, bus: SimBus, mode: str = "rtu") -> None:
        if mode not in ("rtu", "ascii"):
            raise ValueError(f"serial mode {mode!r} is not 'rtu' or 'ascii'")
        self.bus = bus
        self.mode = mode
        bus.gap_rule = mode == "rtu"
        self._buf = bytearray()
        self._times: list[float] = []  # emulated end time of each buffered byte
        self._rx_end = 0.0  # emulated end of the last byte received from the master
        self._discarding = False
        self._silence_timer: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        self._sink: Sink | None = None

    @property
    def silence(self) -> float:
        return self.bus.frame_gap if self.mode == "rtu" else ASCII_SILENCE

    # -- input ------------------------------------------------------------------------------
    def feed(self, data: bytes, sink: Sink) -> None:
        """Bytes from the master, just read; ``sink`` receives the replies."""
        if not data:
            return
        now = time.monotonic()
        start = max(now, self._rx_end)
        if self._buf and start - self._rx_end >= self.silence:
            self._flush()
        elif self._discarding and start - self._rx_end >= self.silence:
            self._discarding = False
        ct = self.bus.char_time
        self._times.extend(start + (i + 1) * ct for i in range(len(data)))
        self._buf += data
        self._rx_end = self._times[-1]
        self._sink = sink
        self._extract()
        self._arm_silence()

    def reset(self) -> None:
        """Forget partial input and pending replies (the port went away)."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None
        self._buf.clear()
        self._times.clear()
        self._discarding = False

    close = reset

    def _arm_silence(self) -> None:
        if self._silence_timer is not None:
            self._silence_timer.cancel()
            self._silence_timer = None
        if self._buf:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._rx_end + self.silence - time.monotonic())
            self._silence_timer = loop.call_later(delay, self._on_silence)

    def _on_silence(self) -> None:
        self._silence_timer = None
        if time.monotonic() < self._rx_end + self.silence:
            self._arm_silence()
            return
        self._flush()

    def _take(self, n: int) -> tuple[bytes, float, float]:
        frame = bytes(self._buf[:n])
        start = self._times[0] - self.bus.char_time
        end = self._times[n - 1]
        del self._buf[:n]
        del self._times[:n]
        return frame, start, end

    def _flush(self) -> None:
        """Silence ended whatever is buffered: a frame if it checks out, else garbage."""
        if not self._buf:
            self._discarding = False
            return
        frame, start, end = self._take(len(self._buf))
        if not self._discarding and self.mode == "rtu" and check_frame_crc(frame):
            self._request(frame[0], frame[1:-2], start, end)
        else:
            self._garbage(start, end, frame)
        self._discarding = False

    def _garbage(self, start: float, end: float, data: bytes) -> None:
        self.bus.garbage += 1
        self.bus.place(WireFrame(start, end, None, GARBAGE, data=data))

    def _extract(self) -> None:
        if self.mode == "ascii":
            self._extract_ascii()
            return
        while self._buf and not self._discarding:
            n = request_length(self._buf)
            if n is None or len(self._buf) < n:
                return
            if check_frame_crc(self._buf[:n]):
                frame, start, end = self._take(n)
                self._request(frame[0], frame[1:-2], start, end)
            else:
                self._discarding = True  # slaves ignore the line until the next silence

    def _extract_ascii(self) -> None:
        while self._buf:
            colon = self._buf.find(b":")
            if colon < 0:
                frame, start, end = self._take(len(self._buf))
                self._garbage(start, end, frame)
                return
            if colon > 0:
                frame, start, end = self._take(colon)
                self._garbage(start, end, frame)
                continue
            crlf = self._buf.find(b"\r\n")
            if crlf < 0:
                return
            frame, start, end = self._take(crlf + 2)
            try:
                unit, pdu = ascii_unframe(frame)
            except FrameError:
                self._garbage(start, end, frame)
                continue
            self._request(unit, pdu, start, end)

    # -- requests and replies -----------------------------------------------------------------
    def _request(self, unit: int, pdu: bytes, start: float, end: float) -> None:
        bus = self.bus
        kind = BROADCAST if unit == 0 else REQUEST
        frame = WireFrame(start, end, unit, kind)
        if bus.place(frame):
            return  # talked over another frame: nobody could read it
        reply = bus.dispatch(unit, pdu, now=end)
        bus.ideal_time += (end - start) + bus.frame_gap
        if reply is None:
            return
        turnaround = bus.units[unit].turnaround if unit in bus.units else 0.0
        data = reply.encode(self.mode)
        rstart = end + max(reply.delay, bus.frame_gap)
        rframe = WireFrame(
            rstart,
            rstart + bus.wire_time(len(data)),
            unit,
            REPLY,
            data=data,
            turn_start=end,
            turn_end=end + max(turnaround, bus.frame_gap),
            sink=self._sink,
        )
        bus.place(rframe)
        bus.ideal_time += max(turnaround, bus.frame_gap) + (rframe.end - rframe.start)
        bus.mark_busy(unit, rframe.end)
        self._schedule(rframe)

    def _schedule(self, rframe: WireFrame) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, rframe.end - time.monotonic())
        handle: asyncio.TimerHandle

        def deliver() -> None:
            self._pending.discard(handle)
            rframe.delivered = True
            data = rframe.data
            if rframe.collided:
                data = garble(data)
            if rframe.sink is not None:
                rframe.sink(data)

        handle = loop.call_later(delay, deliver)
        self._pending.add(handle)


def garble(data: bytes) -> bytes:
    """What a receiver makes of two drivers fighting: same length, wrong bits."""
    return bytes(b ^ 0x5A for b in data)
