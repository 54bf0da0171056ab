"""Frame fuzzing, part 2: the links' reply matching, fed byte by byte as a line would.

The real ``RtuLink`` (RTU and ASCII framers, serial timing at 9600 Bd and TCP-gateway
timing), ``TcpLink`` and ``UdpLink`` run unchanged on ``VirtualClockLoop``: an asyncio
loop whose clock jumps to the next timer whenever nothing is ready, with a small in-memory
network behind ``create_connection`` / ``create_datagram_endpoint``. So a 1 s timeout
costs no wall time, runs are deterministic, and a link that waits without a deadline
is caught (the loop would idle forever: counted as an escaped exception).

For each generated transaction the fake device checks the request bytes the link wrote
and answers with a generated script: the correct reply or not, in 1-3 chunks, timed as
the wire would deliver it, behind or before decoys - frames of another unit, of another
function, with a wrong byte count, length or echo, bit-flipped or cut replies, noise,
random bytes, a stale reply that arrives before the request could have been answered
(serial timing only: a gateway hides the timing) and the reply again, late, after the
deadline. Transactions run in sequences over three units, so late and stray bytes of
one meet the next. The first register of every correct reply is a per-transaction
nonce, so a reply taken for the wrong request shows as a wrong value.

Verdict per transaction (``test_fuzz_codec.Counts``):

* accepted and equal to the correct reply: *accepted valid*;
* accepted and different: *invalid decoded* - unless the bytes delivered during the
  transaction contain a frame that is valid by every protocol rule with exactly those
  values, made by chance from random or bit-flipped bytes: *collision*;
* ``FrameError`` / ``ModbusTimeout`` / ``LinkDown``: *rejected* - but *valid rejected*
  (a liveness bug) if the line carried nothing but the intact reply, in time;
* anything else raised, or a wait without a deadline: *escaped*.

The oracle never trusts the link's own counters or framers: it compares with the
generated truth and the reference decoders of ``test_fuzz_codec``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz_codec import (
    PDU_FAULTS,
    Counts,
    Draw,
    HypothesisDraw,
    RandomDraw,
    Result,
    gen_reply,
    gen_request,
    ref_ascii,
    ref_mbap,
    ref_result,
    ref_rtu,
    spoil_ascii_text,
    spoil_pdu,
    spoil_wire,
)

from mbclient.errors import FrameError, LinkDown, ModbusExceptionResponse, ModbusTimeout
from mbclient.modbus import framing
from mbclient.modbus.framing import char_time
from mbclient.modbus.pdu import Request
from mbclient.transports.framers import AsciiFramer, RtuFramer
from mbclient.transports.rtu import RtuLink
from mbclient.transports.tcp import TcpLink
from mbclient.transports.udp import UdpLink

BAUD = 9600
MODES = ("rtu", "ascii", "gateway", "tcp", "udp")
UNITS = (1, 2, 3)  # the sequence's units; decoys of "another unit" use 100..247
HOST = "fuzz.invalid"
PORT = 502

# --- a virtual-time event loop with an in-memory network -----------------------------------------


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 1000.0


class _SkipAheadSelector(selectors.DefaultSelector):
    """Polls without blocking; when nothing is ready, moves the clock to the next timer."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise Hang("the loop would wait forever: something waits without a deadline")
        self.clock.now += timeout
        return []


class Hang(RuntimeError):
    """Nothing ready and no timer: a wait without a deadline."""


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual; ``create_connection`` / ``create_datagram_endpoint`` reach
    the ``Device`` registered under ``(host, port)`` in ``devices``."""

    def __init__(self) -> None:
        self._clock = _Clock()
        super().__init__(selector=_SkipAheadSelector(self._clock))
        self.devices: dict[tuple[str, int], Device] = {}

    def time(self) -> float:
        return self._clock.now

    async def create_connection(self, protocol_factory: Callable[[], Any], host: Any = None, port: Any = None,
                                **kw: Any) -> tuple[Any, Any]:
        device = self.devices.get((host, port))
        if device is None:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = protocol_factory()
        transport = MemoryStream(self, protocol, device)
        protocol.connection_made(transport)
        return transport, protocol

    async def create_datagram_endpoint(self, protocol_factory: Callable[[], Any], local_addr: Any = None,
                                       remote_addr: Any = None, **kw: Any) -> tuple[Any, Any]:
        device = self.devices[remote_addr]
        protocol = protocol_factory()
        transport = MemoryDatagrams(self, protocol, device)
        protocol.connection_made(transport)
        return transport, protocol


class _MemoryTransport:
    def __init__(self, loop: VirtualClockLoop, protocol: Any, device: Device) -> None:
        self.loop = loop
        self.protocol = protocol
        self.device = device
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class MemoryStream(_MemoryTransport, asyncio.Transport):
    def write(self, data: bytes) -> None:
        if not self.closing:
            self.device.on_write(self, bytes(data))

    def deliver(self, data: bytes) -> None:
        if not self.closing:
            self.protocol.data_received(data)


class MemoryDatagrams(_MemoryTransport, asyncio.DatagramTransport):
    def sendto(self, data: bytes, addr: Any = None) -> None:
        if not self.closing:
            self.device.on_write(self, bytes(data))

    def deliver(self, data: bytes) -> None:
        if not self.closing:
            self.protocol.datagram_received(data, (HOST, PORT))


@dataclass
class Delivery:
    offset: float  # seconds after the request was written
    data: bytes
    txn: int
    tag: str


@dataclass
class Arrival:
    time: float
    data: bytes
    txn: int
    tag: str


class Device:
    """Answers each request with the next transaction's script and logs every arrival."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        self.loop = loop
        self.plan: Callable[[bytes], list[Delivery]] | None = None
        self.arrivals: list[Arrival] = []
        self.unexpected: list[bytes] = []

    def on_write(self, transport: Any, data: bytes) -> None:
        plan, self.plan = self.plan, None
        if plan is None:
            self.unexpected.append(data)
            return
        for d in plan(data):
            self.loop.call_later(d.offset, self._arrive, transport, d)

    def _arrive(self, transport: Any, d: Delivery) -> None:
        if transport.is_closing():
            return
        self.arrivals.append(Arrival(self.loop.time(), d.data, d.txn, d.tag))
        transport.deliver(d.data)


# --- generating transactions -----------------------------------------------------------------


@dataclass
class Seg:
    """A piece of the reply script: bytes, what they are, silence before them, chunk cuts."""

    data: bytes
    tag: str  # "genuine", "noise", "random", "spoiled", "wrong_unit", "other", "old_id", "header", pdu faults
    gap: float = 0.0
    cuts: tuple[int, ...] = ()


@dataclass
class Txn:
    index: int
    unit: int
    request: Request
    genuine: bytes  # the correct reply PDU
    timeout: float
    turnaround: float = 0.0
    segs: list[Seg] = field(default_factory=list)
    stale: bytes | None = None  # an answer to an earlier request, arriving too early (serial)
    stale_junk: bytes = b""  # line junk that was on the wire just before the stale reply
    late: float | None = None  # the correct reply again, this long after the deadline
    written: bytes | None = None
    wrote_ok: bool = True

    @property
    def expected(self) -> Result | None:
        return ref_result(self.request, self.genuine)

    @property
    def plan_clean(self) -> bool:
        return [s.tag for s in self.segs] == ["genuine"] and self.stale is None and self.late is None

    def could_answer(self, other: Txn) -> bool:
        """Could this transaction's reply pass as the answer to ``other``?"""
        return ref_result(other.request, self.genuine) is not None and self.unit == other.unit


def _encoder(mode: str) -> Callable[[int, bytes], bytes]:
    return framing.ascii_frame if mode == "ascii" else framing.rtu_frame


def _char(mode: str) -> float:
    return 0.0 if mode in ("gateway", "tcp", "udp") else char_time(BAUD)


STREAM_SEGS = ("genuine", "genuine", "noise", "wrong_unit", "other", "pdu_fault", "spoiled", "random")
MBAP_SEGS = ("genuine", "genuine", "old_id", "wrong_unit", "pdu_fault", "header", "truncated", "random", "glued")


def gen_txn(d: Draw, mode: str, index: int) -> Txn:
    """One transaction and the reply script its device will play."""
    request = gen_request(d)
    unit = d.pick(UNITS)
    txn = Txn(index, unit, request, gen_reply(d, request, nonce=index + 1), timeout=d.pick((0.3, 0.5, 1.0)))
    c = _char(mode)
    if mode in ("rtu", "ascii", "gateway"):
        _gen_stream_script(d, mode, txn, c)
    else:
        _gen_mbap_script(d, mode, txn)
    if d.chance(10):
        txn.late = d.int(0, 100) / 100 * 0.5  # within the arbiter's late guard (>= 0.25 s... 3 s)
    return txn


def _decoy_frame(d: Draw, mode: str, txn: Txn, kind: str) -> bytes:
    """A complete frame that is not an answer to ``txn`` (nor to anything else in the run)."""
    encode = _encoder(mode)
    if kind == "wrong_unit":
        return encode(d.int(100, 247), txn.genuine)
    if kind == "other":
        other = gen_request(d)
        return encode(d.int(100, 247), gen_reply(d, other))
    # a PDU fault of the addressed unit: right address and checksum, wrong content
    pdu = spoil_pdu(d, d.pick(PDU_FAULTS), txn.request, txn.genuine)
    if ref_result(txn.request, pdu) is not None:
        pdu = bytes((0x2B,)) + pdu[1:]  # cannot be an answer: function 43
    return encode(txn.unit, pdu)


def _gen_stream_script(d: Draw, mode: str, txn: Txn, c: float) -> None:
    encode = _encoder(mode)
    genuine_frame = encode(txn.unit, txn.genuine)
    txn.turnaround = 3.5 * c + d.int(0, 100) / 100 * 0.2 * txn.timeout
    have_genuine = False
    for _ in range(d.int(0, 4)):
        kind = d.pick(STREAM_SEGS)
        if have_genuine and kind not in ("noise", "random"):
            continue  # after the reply only junk: a later valid frame could not be told apart
        if kind == "genuine":
            data, have_genuine = genuine_frame, True
        elif kind == "noise":
            data = d.bytes(1, 8)
        elif kind == "random":
            data = d.bytes(1, 300)
        elif kind == "spoiled":
            if mode == "ascii" and d.chance(50):
                data = spoil_ascii_text(d, genuine_frame)
            else:
                data = spoil_wire(d, d.pick(("bit_flip", "truncate")), genuine_frame, bytes)
        else:
            data = _decoy_frame(d, mode, txn, kind)
        if kind != "genuine" and _answers(mode, txn, data):
            if have_genuine:
                continue
            kind, have_genuine = "genuine", True  # damage that left a valid answer: it is one
        gap = d.pick((0.0, 0.0, 2 * c, 0.03))  # 30 ms: longer than the arbiter's silence
        txn.segs.append(Seg(data, kind, gap, _stream_cuts(d, len(data), c)))
    # Everything but the late copy arrives before the deadline (the late guard's premise).
    budget = 0.9 * txn.timeout
    while txn.segs and txn.turnaround + sum(s.gap + c * len(s.data) for s in txn.segs) > budget:
        txn.segs.pop()
    if c and d.chance(10):
        stale = gen_reply(d, txn.request, nonce=txn.index + 0x8000)
        if stale[0] & 0x80:
            stale = txn.genuine  # an exception carries no nonce: reuse the write echo / reply
        txn.stale = encode(txn.unit, stale)
        if d.chance(50):  # junk in front, perhaps looking like the start of our reply
            head = encode(txn.unit, txn.genuine)[:3] if mode != "ascii" else b":"
            txn.stale_junk = d.pick((head, d.bytes(1, 8), head[:2] + bytes((d.int(0, 255),))))


def _answers(mode: str, txn: Txn, data: bytes) -> bool:
    """Does ``data`` hold a valid answer to ``txn`` (damage that left or made one, e.g. a
    doubled ':' in front of an intact ASCII frame)?"""
    if mode == "ascii":
        starts = [i for i, b in enumerate(data) if b == ord(":")]
        return any(ref_ascii(data[i : j + 2], txn.unit, txn.request) is not None
                   for i in starts for j in range(i, len(data) - 1) if data[j : j + 2] == b"\r\n")
    lengths = {5, 3 + txn.request.reply_length}
    return any(ref_rtu(data[i : i + n], txn.unit, txn.request) is not None
               for i in range(len(data)) if data[i] == txn.unit for n in lengths)


def _gen_mbap_script(d: Draw, mode: str, txn: Txn) -> None:
    """MBAP segments hold PDUs (or raw bytes); ids and units are filled in at send time."""
    for _ in range(d.int(0, 4)):
        kind = d.pick(MBAP_SEGS)
        gap = d.int(0, 100) / 100 * 0.2 * txn.timeout
        if kind == "random":
            data = d.bytes(1, 40)
        elif kind == "header":
            data = d.bytes(7, 7) + txn.genuine  # a garbled header (protocol id / length)
        elif kind == "old_id":  # the answer to an earlier request (another nonce)
            data = gen_reply(d, txn.request, nonce=txn.index + 0x8000)
        elif kind == "pdu_fault":
            data = spoil_pdu(d, d.pick(PDU_FAULTS), txn.request, txn.genuine)
            if ref_result(txn.request, data) is not None:
                data = bytes((0x2B,)) + data[1:]
        else:  # genuine, wrong_unit, truncated, glued: the correct PDU
            data = txn.genuine
        size = len(data) if kind in ("random", "header") else 7 + len(data)
        cuts = (d.int(1, size - 1),) if kind == "truncated" else _cuts(d, size)
        txn.segs.append(Seg(data, kind, gap, cuts))
    budget = 0.9 * txn.timeout
    while txn.segs and sum(s.gap for s in txn.segs) > budget:
        txn.segs.pop()


#: A serial driver hands over what the UART received at least this often (a USB adapter's
#: latency timer is 16 ms at most by default); the arbiter's premise is that a frame's
#: bytes never pause for its fragment silence (20 ms).
MAX_CHUNK_SECONDS = 0.015


def _stream_cuts(d: Draw, n: int, c: float) -> tuple[int, ...]:
    """Where the driver splits a frame of ``n`` bytes: at random, and at least every 15 ms."""
    cuts = set(_cuts(d, n))
    if c:
        step = max(1, int(MAX_CHUNK_SECONDS / c))
        cuts.update(range(step, n, step))
    return tuple(sorted(cuts))


def _cuts(d: Draw, n: int) -> tuple[int, ...]:
    if n < 2 or d.chance(60):
        return ()
    return tuple(sorted({d.int(1, n - 1) for _ in range(d.int(1, 2))}))


def gen_sequence(d: Draw, mode: str, length: int) -> list[Txn]:
    txns = [gen_txn(d, mode, i) for i in range(length)]
    if mode in ("rtu", "ascii", "gateway"):
        # A late copy can only be told apart from the answer to a *later* identical
        # request by the arbiter's late guard if that request waits for it; ours always
        # does (the copy arrives within the guard), except a request of the same unit and
        # shape, which would be a legitimate victim of a reply later than documented.
        for j, t in enumerate(txns):
            if t.late is not None and any(t.could_answer(u) for u in txns[j + 1 :]):
                t.late = None
    return txns


# --- scripts: what the device sends, given the request the link wrote ----------------------------


def stream_plan(mode: str, txn: Txn) -> Callable[[bytes], list[Delivery]]:
    c = _char(mode)
    encode = _encoder(mode)

    def plan(written: bytes) -> list[Delivery]:
        txn.written = written
        txn.wrote_ok = written == encode(txn.unit, txn.request.pdu)
        tx = c * len(written)
        out: list[Delivery] = []
        t = tx + txn.turnaround
        eps = 1e-6  # keeps chunks in order when the gateway's wire time is 0
        for seg in txn.segs:
            t += seg.gap
            start = t
            for a, b in zip((0, *seg.cuts), (*seg.cuts, len(seg.data)), strict=True):
                t = max(start + c * b, t + eps)
                if seg.data[a:b]:
                    out.append(Delivery(t, seg.data[a:b], txn.index, seg.tag))
        if txn.stale is not None:
            # It was on the wire before a reply to this request could have been: its last
            # byte arrives less than its own wire time after the request ended, and (a
            # serial line is FIFO) before anything the unit sent after the request.
            latest = tx + 0.5 * c + c * (len(txn.stale) - 1)
            at = max(0.0, min([latest * 0.9] + [o.offset - 2 * eps for o in out]))
            if txn.stale_junk:
                out.append(Delivery(max(0.0, at - eps), txn.stale_junk, txn.index, "noise"))
            out.append(Delivery(at, txn.stale, txn.index, "stale"))
        if txn.late is not None:
            late = tx + txn.timeout + txn.late + c * len(encode(txn.unit, txn.genuine))
            out.append(Delivery(late, encode(txn.unit, txn.genuine), txn.index, "late"))
        return out

    return plan


def mbap_plan(mode: str, txn: Txn) -> Callable[[bytes], list[Delivery]]:
    def plan(written: bytes) -> list[Delivery]:
        txn.written = written
        tid = int.from_bytes(written[:2], "big")
        txn.wrote_ok = written == framing.mbap_frame(tid, txn.unit, txn.request.pdu)
        out: list[Delivery] = []
        t = 0.0
        for seg in txn.segs:
            t += seg.gap + 1e-6
            data = _mbap_seg(seg, tid, txn)
            if mode == "udp":
                if seg.tag == "truncated":
                    data = data[: seg.cuts[0]]
                out.append(Delivery(t, data, txn.index, seg.tag))
                continue
            for a, b in zip((0, *seg.cuts), (*seg.cuts, len(data)), strict=True):
                if seg.tag == "truncated" and a > 0:
                    break  # the rest of a truncated frame never comes
                if data[a:b]:
                    t += 1e-6
                    out.append(Delivery(t, data[a:b], txn.index, seg.tag))
        if txn.late is not None:
            out.append(Delivery(txn.timeout + txn.late, framing.mbap_frame(tid, txn.unit, txn.genuine),
                                txn.index, "late"))
        return out

    return plan


def _mbap_seg(seg: Seg, tid: int, txn: Txn) -> bytes:
    if seg.tag in ("genuine", "pdu_fault", "truncated"):
        return framing.mbap_frame(tid, txn.unit, seg.data)
    if seg.tag == "old_id":
        return framing.mbap_frame((tid - 1 - txn.index) & 0xFFFF, txn.unit, seg.data)
    if seg.tag == "wrong_unit":
        return framing.mbap_frame(tid, txn.unit + 100, seg.data)
    if seg.tag == "header":
        head = bytearray(seg.data[:7])
        head[0:2] = tid.to_bytes(2, "big")
        if head[2:4] == b"\x00\x00" and 2 <= int.from_bytes(head[4:6], "big") <= 254:
            head[2] = 0x01  # make sure it is garbled: a protocol id other than Modbus
        return bytes(head) + seg.data[7:]
    if seg.tag == "glued":
        return framing.mbap_frame(tid, txn.unit, seg.data) * 2
    return seg.data  # random


# --- running a sequence and judging it -------------------------------------------------------------


def make_link(mode: str) -> RtuLink | TcpLink | UdpLink:
    if mode == "rtu":
        return RtuLink("fuzz RTU", RtuFramer(), baud=BAUD, host=HOST, port=PORT)
    if mode == "ascii":
        return RtuLink("fuzz ASCII", AsciiFramer(), baud=BAUD, host=HOST, port=PORT)
    if mode == "gateway":
        return RtuLink.over_tcp(HOST, PORT)
    if mode == "tcp":
        return TcpLink(HOST, PORT)
    return UdpLink(HOST, PORT)


@dataclass
class Outcome:
    txn: Txn
    result: Result | None = None
    error: str | None = None  # the ModbusError class name
    escaped: str | None = None
    start: float = 0.0
    end: float = 0.0


async def _run(mode: str, txns: list[Txn], device: Device) -> list[Outcome]:
    link = make_link(mode)
    loop = asyncio.get_running_loop()
    outcomes: list[Outcome] = []
    try:
        for txn in txns:
            out = Outcome(txn, start=loop.time())
            device.plan = stream_plan(mode, txn) if mode in ("rtu", "ascii", "gateway") else mbap_plan(mode, txn)
            try:
                values = await link.transact(txn.unit, txn.request, timeout=txn.timeout)
                out.result = ("values", tuple(values))
            except ModbusExceptionResponse as exc:
                out.result = ("exception", (exc.code,))
            except (FrameError, ModbusTimeout, LinkDown) as exc:
                out.error = type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - counted as escaped
                out.escaped = f"{type(exc).__name__}: {exc}"
            out.end = loop.time()
            device.plan = None
            outcomes.append(out)
    finally:
        await link.aclose()
    return outcomes


def run_sequence(mode: str, txns: list[Txn]) -> tuple[list[Outcome], Device]:
    loop = VirtualClockLoop()
    device = Device(loop)
    loop.devices[(HOST, PORT)] = device
    try:
        outcomes = loop.run_until_complete(_run(mode, txns, device))
    except Hang as exc:
        outcomes = [Outcome(t, escaped=f"Hang: {exc}") for t in txns]
    finally:
        loop.close()
    return outcomes, device


#: Segments that can leave part of a frame in a TCP link's receive buffer for the next
#: transaction (the link keeps the stream after a timeout so a late reply can be skipped).
DESYNC_TAGS = frozenset({"truncated", "random", "header"})


def judge(mode: str, outcomes: list[Outcome], device: Device, counts: Counts) -> None:
    collided: list[Txn] = []  # transactions that took a chance frame: their reply came later
    desynced = False
    for out in outcomes:
        txn = out.txn
        counts.frames += 1
        counts.by_kind.update(s.tag for s in txn.segs)
        counts.by_kind.update(k for k, v in (("stale", txn.stale), ("late", txn.late)) if v is not None)
        window = [a for a in device.arrivals if out.start <= a.time <= out.end]
        label = f"{mode} txn {txn.index} unit {txn.unit} fc {txn.request.function}"
        if not txn.wrote_ok:
            counts.escaped += 1
            counts.problem(f"{label}: the link wrote {txn.written!r}, not the framed request")
        if out.escaped is not None:
            counts.escaped += 1
            counts.problem(f"{label}: {out.escaped}; script {_describe(txn)}")
        elif out.result is not None:
            if out.result == txn.expected:
                counts.accepted_valid += 1
            elif _chance_frame(mode, txn, out.result, window):
                counts.collisions += 1
                collided.append(txn)
            elif any(out.result == t.expected and t.unit == txn.unit for t in collided):
                # The reply of a transaction that ended on a chance frame arrived after it
                # ended: on the wire an unsolicited reply, a consequence of the collision.
                counts.collisions += 1
            else:
                counts.invalid_decoded += 1
                counts.problem(f"{label}: returned {out.result}, the reply was {txn.expected}; script "
                               f"{_describe(txn)}; arrivals {[(a.txn, a.tag, a.data.hex()) for a in window]}")
        else:
            clean = txn.plan_clean and all(a.txn == txn.index and a.tag == "genuine" for a in window)
            if clean and not (mode == "tcp" and desynced):
                counts.valid_rejected += 1
                counts.problem(f"{label}: {out.error} although only the intact reply arrived: {_describe(txn)}")
            else:
                counts.rejected += 1
        desynced = desynced or any(s.tag in DESYNC_TAGS for s in txn.segs)


def _describe(txn: Txn) -> str:
    parts = [f"{s.tag}({len(s.data)}B gap {s.gap:.3f} cuts {s.cuts})" for s in txn.segs]
    return f"turnaround {txn.turnaround:.3f} timeout {txn.timeout} [{', '.join(parts)}] stale {txn.stale is not None} late {txn.late}"


def _chance_frame(mode: str, txn: Txn, result: Result, window: list[Arrival]) -> bool:
    """Do the bytes of this transaction's window hold a frame, made by chance from random
    or damaged bytes, that every protocol rule accepts with exactly ``result``?"""
    # Everything but whole replies of other requests (stale, late, other transactions):
    # a chance frame may straddle a decoy and the next bytes (a frame whose CRC ends in
    # 0x00 followed by a 0x00 byte is a valid frame one byte longer).
    data = b"".join(a.data for a in window
                    if a.tag not in ("stale", "late") and (a.tag != "genuine" or a.txn == txn.index))
    if mode in ("rtu", "gateway"):
        return any(ref_rtu(data[i:j], txn.unit, txn.request) == result
                   for i in range(len(data)) for j in range(i + 4, min(len(data), i + 260) + 1)
                   if data[i] == txn.unit)
    if mode == "ascii":
        starts = [i for i, b in enumerate(data) if b == ord(":")]
        return any(ref_ascii(data[i : j + 2], txn.unit, txn.request) == result
                   for i in starts for j in range(i, len(data) - 1) if data[j : j + 2] == b"\r\n")
    # MBAP has no checksum: a frame is valid when its header says so. Any offset will do
    # (a truncated frame followed by another is one longer, valid-looking frame).
    if txn.written is None:
        return False
    tid = int.from_bytes(txn.written[:2], "big")
    data = b"".join(a.data for a in window)
    chunks = [a.data for a in window] if mode == "udp" else [data[i:] for i in range(len(data))]
    for chunk in chunks:
        if len(chunk) >= 8:
            length = int.from_bytes(chunk[4:6], "big")
            if ref_mbap(chunk[: 6 + length], tid, txn.unit, txn.request) == result:
                return True
    return False


def link_campaign(mode: str, transactions: int, seed: int = 1, per_sequence: int = 6) -> Counts:
    """``transactions`` fuzzed transactions on ``mode``'s link (the script's volume run)."""
    counts = Counts()
    d = RandomDraw(seed)
    done = 0
    while done < transactions:
        txns = gen_sequence(d, mode, min(per_sequence, transactions - done))
        outcomes, device = run_sequence(mode, txns)
        judge(mode, outcomes, device, counts)
        done += len(txns)
    return counts


# --- the suite -----------------------------------------------------------------------------------

SUITE = settings(max_examples=200, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("mode", MODES)
@SUITE
@given(data=st.data())
def test_links_take_only_the_right_reply(mode: str, data: Any) -> None:
    d = HypothesisDraw(data)
    txns = gen_sequence(d, mode, d.int(1, 4))
    outcomes, device = run_sequence(mode, txns)
    counts = Counts()
    judge(mode, outcomes, device, counts)
    assert counts.clean, "\n".join(counts.problems)
    assert not device.unexpected


@pytest.mark.parametrize("mode", MODES)
def test_seeded_volume_run_is_clean(mode: str) -> None:
    counts = link_campaign(mode, 300, seed=11)
    assert counts.clean, "\n".join(counts.problems)
    assert counts.accepted_valid > 0 and counts.rejected > 0


def test_a_stale_reply_behind_junk_stays_stale() -> None:
    """Found by this fuzzer: junk that looks like the start of our reply, then a stale
    reply (both on the wire before the request could be answered), then the real reply.
    The junk's byte count keeps the scan waiting until the real reply has arrived; the
    stale frame must still be judged by the arrival of its own last byte."""
    request = Request.read(4, 0, 2)
    genuine = bytes((4, 4, 0x00, 0x01, 0x11, 0x11))
    txn = Txn(0, 1, request, genuine, timeout=0.5, turnaround=0.010,
              segs=[Seg(framing.rtu_frame(1, genuine), "genuine")],
              stale=framing.rtu_frame(1, bytes((4, 4, 0x80, 0x01, 0x22, 0x22))),
              stale_junk=bytes((1, 4, 16)))  # "unit 1, fc 4, 16 bytes follow": 21 bytes in all
    outcomes, _ = run_sequence("rtu", [txn])
    assert outcomes[0].result == ("values", (1, 0x1111))


def test_the_virtual_loop_reports_a_wait_without_deadline() -> None:
    loop = VirtualClockLoop()
    try:
        with pytest.raises(Hang):
            loop.run_until_complete(loop.create_future())
    finally:
        loop.close()
