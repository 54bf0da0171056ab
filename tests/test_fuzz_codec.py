"""Frame fuzzing, part 1: the wire decoders (RTU, ASCII, MBAP) and ``Request.check_reply``.

Every generated frame is the reply to a generated request, either intact or spoiled in one
of the ways a line or a device spoils replies: another unit, another function, a wrong byte
count or length, an oversized frame, a bad write echo, 1-3 flipped bits, a cut, noise in
front or behind, two frames glued together, or random bytes. Each frame goes through the
decoder under test (``rtu_unframe`` / ``ascii_unframe`` / ``mbap_unframe`` + unit / id
check + ``check_reply``) and through an independent reference written here from the
protocol rules (bitwise CRC, strict ':' hex CRLF, header fields), and the two must agree:

* nothing but ``FrameError`` / ``ModbusExceptionResponse`` may escape the decoder;
* the decoder accepts a frame only if the reference says it is a valid reply to the
  request, and then with the reference's values (else: *invalid decoded*);
* the decoder never rejects a frame the reference accepts (else: *valid rejected*).

A frame the reference accepts although it is not the intact reply is a checksum
collision: valid by every rule of the protocol, so no decoder can tell (ASCII's 8-bit
LRC lets about 1 in 256 two-byte corruptions through; RTU's CRC-16 catches every 1-3 bit
error). Those are counted apart as ``collisions``.

The generators take a ``Draw`` so that the suite drives them with hypothesis (shrinking,
edge cases) and ``scripts/fuzz-frames`` with a seeded PRNG (volume). The link-level fuzzing
(the arbiter's reply matching) is in ``test_fuzz_links.py`` and reuses them.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbclient.errors import FrameError, ModbusExceptionResponse
from mbclient.modbus import framing
from mbclient.modbus.pdu import (
    MAX_READ,
    MAX_RW_WRITE,
    MAX_WRITE,
    READ_HOLDING,
    READ_INPUT,
    READ_WRITE_MULTIPLE,
    WRITE_MULTIPLE,
    WRITE_SINGLE,
    Request,
    parse_request,
)
from mbclient.transports.framers import FRAME, JUNK, NEED, STRAY, AsciiFramer, RtuFramer

T = TypeVar("T")

# --- drawing: one generator, two drivers (hypothesis in the suite, a PRNG in the script) -------


class Draw(Protocol):
    def int(self, lo: int, hi: int) -> int: ...
    def bytes(self, lo: int, hi: int) -> bytes: ...
    def pick(self, seq: Sequence[T]) -> T: ...
    def chance(self, percent: int) -> bool: ...


class HypothesisDraw:
    """Draws from a hypothesis ``data`` object: failures shrink to small, readable cases."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def bytes(self, lo: int, hi: int) -> bytes:
        return self.data.draw(st.binary(min_size=lo, max_size=hi))

    def pick(self, seq: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(seq))

    def chance(self, percent: int) -> bool:
        return self.data.draw(st.integers(0, 99)) >= 100 - percent  # shrinks towards False


class RandomDraw:
    """Seeded PRNG draws with a hypothesis-like taste for boundary values."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        r = self.rng.random()
        if r < 0.05:
            return lo
        if r < 0.10:
            return hi
        return self.rng.randint(lo, hi)

    def bytes(self, lo: int, hi: int) -> bytes:
        n = self.int(lo, hi)
        if self.rng.random() < 0.05:
            return bytes((self.rng.choice((0x00, 0xFF)),)) * n
        return self.rng.randbytes(n)

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.rng.randrange(len(seq))]

    def chance(self, percent: int) -> bool:
        return self.rng.random() * 100 < percent


# --- the reference: the protocol rules, written independently of mbclient.modbus ------------------


def crc_ref(data: bytes) -> int:
    """CRC-16/MODBUS bit by bit (the implementation under test uses a table)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")

Result = tuple[str, tuple[int, ...]]  # ("values", registers) or ("exception", (code,))


def ref_result(request: Request, pdu: bytes) -> Result | None:
    """What a correct client takes from ``pdu`` as the answer to ``request``; None: not an answer."""
    fc = request.function
    if len(pdu) == 2 and pdu[0] == fc | 0x80:
        return ("exception", (pdu[1],))
    if fc in (READ_HOLDING, READ_INPUT, READ_WRITE_MULTIPLE):
        n = request.count
        if len(pdu) == 2 + 2 * n and pdu[0] == fc and pdu[1] == 2 * n:
            return ("values", tuple(int.from_bytes(pdu[2 + 2 * i : 4 + 2 * i], "big") for i in range(n)))
        return None
    if fc == WRITE_SINGLE:
        echo = bytes((fc,)) + request.address.to_bytes(2, "big") + request.values[0].to_bytes(2, "big")
    else:
        echo = bytes((fc,)) + request.address.to_bytes(2, "big") + request.count.to_bytes(2, "big")
    return ("values", ()) if pdu == echo else None


def ref_rtu(frame: bytes, unit: int, request: Request) -> Result | None:
    if len(frame) < 4 or frame[0] != unit:
        return None
    if crc_ref(frame[:-2]) != frame[-2] | frame[-1] << 8:
        return None
    return ref_result(request, frame[1:-2])


def ref_ascii(frame: bytes, unit: int, request: Request) -> Result | None:
    """Strict Modbus ASCII: ':' + an even number of hex digits + CRLF, LRC over the bytes."""
    if not (frame.startswith(b":") and frame.endswith(b"\r\n")):
        return None
    digits = frame[1:-2]
    if len(digits) < 6 or len(digits) % 2 or not set(digits) <= HEX_DIGITS:
        return None
    raw = bytes(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2))
    if (sum(raw) & 0xFF) != 0 or raw[0] != unit:  # LRC: all bytes incl. the LRC sum to 0
        return None
    return ref_result(request, raw[1:-1])


def ref_mbap(frame: bytes, tid: int, unit: int, request: Request) -> Result | None:
    if len(frame) < 8:
        return None
    rtid, proto, length, runit = struct.unpack(">HHHB", frame[:7])
    if rtid != tid or proto != 0 or runit != unit or length != len(frame) - 6 or not 2 <= length <= 254:
        return None
    return ref_result(request, frame[7:])


# --- the decoders under test, used the way a client uses them -----------------------------------


def dut_rtu(frame: bytes, unit: int, request: Request) -> Result | None:
    u, pdu = framing.rtu_unframe(frame)
    return _check(request, pdu) if u == unit else None


def dut_ascii(frame: bytes, unit: int, request: Request) -> Result | None:
    u, pdu = framing.ascii_unframe(frame)
    return _check(request, pdu) if u == unit else None


def dut_mbap(frame: bytes, tid: int, unit: int, request: Request) -> Result | None:
    rtid, u, pdu = framing.mbap_unframe(frame)
    return _check(request, pdu) if (rtid, u) == (tid, unit) else None


def _check(request: Request, pdu: bytes) -> Result:
    try:
        return ("values", tuple(request.check_reply(pdu)))
    except ModbusExceptionResponse as exc:
        return ("exception", (exc.code,))


# --- generators -------------------------------------------------------------------------------


def gen_request(d: Draw) -> Request:
    fc = d.pick((READ_HOLDING, READ_INPUT, READ_HOLDING, READ_INPUT, WRITE_SINGLE, WRITE_MULTIPLE, READ_WRITE_MULTIPLE))
    if fc in (READ_HOLDING, READ_INPUT):
        count = d.int(1, MAX_READ)
        return Request.read(fc, d.int(0, 0x10000 - count), count)
    if fc == WRITE_SINGLE:
        return Request.write_single(d.int(0, 0xFFFF), d.int(0, 0xFFFF))
    if fc == WRITE_MULTIPLE:
        n = d.int(1, MAX_WRITE)
        return Request.write_multiple(d.int(0, 0x10000 - n), _regs(d.bytes(2 * n, 2 * n)))
    count, n = d.int(1, MAX_READ), d.int(1, MAX_RW_WRITE)
    return Request.read_write(d.int(0, 0x10000 - count), count, d.int(0, 0x10000 - n), _regs(d.bytes(2 * n, 2 * n)))


def _regs(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def gen_reply(d: Draw, request: Request, nonce: int | None = None) -> bytes:
    """The correct reply PDU: registers (the first one ``nonce`` when given), an echo, or
    now and then an exception."""
    fc = request.function
    if d.chance(8):
        return bytes((fc | 0x80, d.pick((1, 2, 3, 4, 6, 11, d.int(0, 255)))))
    if fc in (READ_HOLDING, READ_INPUT, READ_WRITE_MULTIPLE):
        data = bytearray(d.bytes(2 * request.count, 2 * request.count))
        if nonce is not None:
            data[0:2] = (nonce & 0xFFFF).to_bytes(2, "big")
        return bytes((fc, 2 * request.count)) + bytes(data)
    return request.pdu[:5]


#: Ways to spoil a reply PDU that keep a correct checksum (the device got it wrong).
PDU_FAULTS = ("wrong_function", "byte_count", "length", "oversized", "echo", "exception_length")
#: Ways the line spoils a framed reply (the checksum no longer matches, or junk is added).
WIRE_FAULTS = ("bit_flip", "truncate", "noise_after", "noise_before", "glued", "random", "empty")
KINDS = ("valid", "wrong_unit", *PDU_FAULTS, *WIRE_FAULTS)


def spoil_pdu(d: Draw, kind: str, request: Request, pdu: bytes) -> bytes:
    """A reply PDU that is wrong for ``request`` in the way ``kind`` says."""
    fc = request.function
    if pdu[0] & 0x80 and kind in ("byte_count", "echo"):
        kind = "exception_length"  # an exception reply's second byte is its code: any is valid
    if kind == "wrong_function":
        other = d.pick([f for f in (1, 2, 3, 4, 5, 6, 15, 16, 23, 43, d.int(0, 255)) if f not in (fc, fc | 0x80)] or [0])
        if d.chance(30):
            return bytes((other | 0x80, d.int(0, 255)))
        return bytes((other,)) + pdu[1:]
    if kind == "byte_count" and len(pdu) >= 2:
        return pdu[:1] + bytes(((pdu[1] + d.int(1, 255)) & 0xFF,)) + pdu[2:]
    if kind == "length":
        if d.chance(50) and len(pdu) > 1:
            return pdu[: d.int(1, len(pdu) - 1)]
        return pdu + d.bytes(1, 8)
    if kind == "oversized":
        return pdu + d.bytes(max(1, 253 - len(pdu)), 300)
    if kind == "echo" and len(pdu) == 5:
        i = d.int(1, 4)
        return pdu[:i] + bytes(((pdu[i] + d.int(1, 255)) & 0xFF,)) + pdu[i + 1 :]
    if kind == "exception_length":  # an exception reply is exactly 2 bytes
        return bytes((fc | 0x80,)) + (d.bytes(2, 4) if d.chance(50) else b"")
    # the fault does not apply to this reply's shape: change the function instead
    return spoil_pdu(d, "wrong_function", request, pdu)


def spoil_wire(d: Draw, kind: str, frame: bytes, other: Callable[[], bytes]) -> bytes:
    """A framed reply as a noisy line delivers it; ``other`` makes another valid frame."""
    if kind == "bit_flip":
        out = bytearray(frame)
        for _ in range(d.int(1, 3)):  # CRC-16 detects any 1-3 bit error in a Modbus frame
            bit = d.int(0, 8 * len(out) - 1)
            out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if kind == "truncate":
        return frame[: d.int(0, len(frame) - 1)]
    if kind == "noise_after":
        return frame + d.bytes(1, 8)
    if kind == "noise_before":
        return d.bytes(1, 8) + frame
    if kind == "glued":
        return frame + other() if d.chance(50) else other() + frame
    if kind == "random":
        return d.bytes(0, 300)
    if kind == "empty":
        return b""
    raise ValueError(kind)


@dataclass
class Case:
    """One generated reply frame and what it is."""

    kind: str
    unit: int
    request: Request
    genuine: bytes  # the correct reply PDU
    frame: bytes
    tid: int = 0


def gen_case(d: Draw, mode: str) -> Case:
    """A request, its correct reply, and the frame a decoder in ``mode`` gets to see."""
    unit = d.int(1, 247)
    request = gen_request(d)
    genuine = gen_reply(d, request)
    tid = d.int(0, 0xFFFF)
    kind = d.pick(KINDS)

    def encode(u: int, pdu: bytes, t: int = tid) -> bytes:
        if mode == "rtu":
            return framing.rtu_frame(u, pdu)
        if mode == "ascii":
            return framing.ascii_frame(u, pdu)
        return _mbap_raw(t, u, pdu)

    if kind == "valid":
        frame = encode(unit, genuine)
    elif kind == "wrong_unit":
        if mode == "mbap" and d.chance(50):
            frame = encode(unit, genuine, (tid + d.int(1, 0xFFFF)) & 0xFFFF)  # an earlier request's id
        else:
            frame = encode((unit + d.int(1, 254)) % 256, genuine)
    elif kind in PDU_FAULTS:
        frame = encode(unit, spoil_pdu(d, kind, request, genuine))
    else:
        frame = encode(unit, genuine)
        if mode == "ascii" and kind == "bit_flip" and d.chance(50):
            frame = spoil_ascii_text(d, frame)
        elif mode == "mbap" and kind == "bit_flip":
            # MBAP has no checksum (TCP/UDP carry one below it): only header damage is
            # detectable, so only the header is damaged here.
            frame = spoil_wire(d, kind, frame[:7], bytes) + frame[7:]
        else:
            frame = spoil_wire(d, kind, frame, lambda: encode(d.int(0, 255), gen_reply(d, gen_request(d))))
    return Case(kind, unit, request, genuine, frame, tid)


def spoil_ascii_text(d: Draw, frame: bytes) -> bytes:
    """Character-level ASCII damage: a changed digit, lower case, a space, a lost CR or LF,
    a second colon."""
    out = bytearray(frame)
    how = d.pick(("digit", "lower", "space", "crlf", "colon"))
    i = d.int(1, max(1, len(out) - 3))
    if how == "digit":
        out[i] = d.pick([c for c in b"0123456789ABCDEF" if c != out[i]])
    elif how == "lower":
        return bytes(frame).lower()
    elif how == "space":
        out[i : i] = d.pick((b" ", b"  ", b"\t", b" \t"))
    elif how == "crlf":
        del out[d.pick((-2, -1))]
    else:
        out[i : i] = b":"
    return bytes(out)


def _mbap_raw(tid: int, unit: int, pdu: bytes) -> bytes:
    """An MBAP frame without mbap_frame's masking (unit 256+ wraps like a byte would)."""
    return struct.pack(">HHHB", tid & 0xFFFF, 0, (len(pdu) + 1) & 0xFFFF, unit & 0xFF) + pdu


# --- counting ---------------------------------------------------------------------------------


@dataclass
class Counts:
    """The outcome of a fuzzing run; ``problems`` keeps the first few bad cases verbatim."""

    frames: int = 0
    rejected: int = 0
    accepted_valid: int = 0
    collisions: int = 0  # accepted, valid by every protocol rule, but not the intact reply
    escaped: int = 0  # exceptions other than FrameError / ModbusExceptionResponse
    invalid_decoded: int = 0
    valid_rejected: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(text)

    def merge(self, other: Counts) -> None:
        for name in ("frames", "rejected", "accepted_valid", "collisions", "escaped", "invalid_decoded",
                     "valid_rejected"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.by_kind.update(other.by_kind)
        for p in other.problems:
            self.problem(p)

    @property
    def clean(self) -> bool:
        return not (self.escaped or self.invalid_decoded or self.valid_rejected)


def check_case(case: Case, mode: str, counts: Counts) -> None:
    """Run one frame through the decoder under test and the reference; count the verdict."""
    counts.frames += 1
    counts.by_kind[case.kind] += 1
    args: tuple[Any, ...] = (case.tid, case.unit, case.request) if mode == "mbap" else (case.unit, case.request)
    ref = {"rtu": ref_rtu, "ascii": ref_ascii, "mbap": ref_mbap}[mode](case.frame, *args)
    dut_fn = {"rtu": dut_rtu, "ascii": dut_ascii, "mbap": dut_mbap}[mode]
    try:
        got = dut_fn(case.frame, *args)
    except FrameError:
        got = None
    except Exception as exc:  # noqa: BLE001 - exactly what we are counting
        counts.escaped += 1
        counts.problem(f"{mode} {case.kind}: {type(exc).__name__}: {exc} for {case.frame.hex()}")
        return
    if got is None:
        if ref is None:
            counts.rejected += 1
        else:
            counts.valid_rejected += 1
            counts.problem(f"{mode} {case.kind}: valid frame rejected: {case.frame.hex()}")
    elif got != ref:
        counts.invalid_decoded += 1
        counts.problem(f"{mode} {case.kind}: decoded {got} but the reference says {ref}: {case.frame.hex()}")
    elif ref == ref_result(case.request, case.genuine):
        counts.accepted_valid += 1
    else:
        counts.collisions += 1


def codec_campaign(mode: str, frames: int, seed: int = 1) -> Counts:
    """``frames`` generated frames through one decoder (the script's volume run)."""
    counts = Counts()
    d = RandomDraw(seed)
    for _ in range(frames):
        check_case(gen_case(d, mode), mode, counts)
    return counts


# --- the suite ----------------------------------------------------------------------------------

SUITE = settings(max_examples=800, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _assert_clean(counts: Counts) -> None:
    assert counts.clean, "\n".join(counts.problems)


@pytest.mark.parametrize("mode", ["rtu", "ascii", "mbap"])
@SUITE
@given(data=st.data())
def test_decoders_never_decode_an_invalid_frame(mode: str, data: Any) -> None:
    counts = Counts()
    check_case(gen_case(HypothesisDraw(data), mode), mode, counts)
    _assert_clean(counts)


def test_seeded_volume_run_is_clean_and_covers_every_fault() -> None:
    """A few thousand PRNG frames per decoder: the script's run in small."""
    for mode in ("rtu", "ascii", "mbap"):
        counts = codec_campaign(mode, 3000, seed=7)
        _assert_clean(counts)
        assert set(counts.by_kind) == set(KINDS)
        assert counts.accepted_valid > 0 and counts.rejected > 0
        if mode == "rtu":
            assert counts.collisions == 0  # CRC-16 catches every 1-3 bit error


def test_request_parser_of_the_simulator_never_crashes() -> None:
    """The simulator's ``parse_request`` on random PDUs: a Request or a Modbus error, and
    a Request it returns rebuilds byte for byte."""
    d = RandomDraw(3)
    for _ in range(3000):
        pdu = d.bytes(0, 20) if d.chance(50) else gen_request(d).pdu[: d.int(0, 260)]
        try:
            req = parse_request(pdu)
        except (FrameError, ModbusExceptionResponse):
            continue
        assert req.pdu == pdu


# --- the reply framers the arbiter scans its receive buffer with ----------------------------------


@SUITE
@given(data=st.data())
def test_rtu_framer_verdicts_are_true(data: Any) -> None:
    """Whatever bytes are in the buffer, a FRAME is a CRC-valid frame of the addressed unit
    with the requested function, a STRAY a valid frame of someone else, and nothing else
    (and no exception) comes out."""
    d = HypothesisDraw(data)
    unit, request = d.int(1, 247), gen_request(d)
    fc = request.function
    buf = bytearray()
    for _ in range(d.int(0, 4)):
        part = d.pick(("noise", "ours", "other", "spoiled"))
        if part == "noise":
            buf += d.bytes(1, 10)
        else:
            u = unit if part != "other" else d.int(0, 255)
            frame = framing.rtu_frame(u, gen_reply(d, request) if part != "other" else gen_reply(d, gen_request(d)))
            buf += spoil_wire(d, d.pick(("bit_flip", "truncate")), frame, bytes) if part == "spoiled" else frame
    kind, start, end = RtuFramer.scan(buf, unit, fc)
    RtuFramer.looks_like_reply(buf, unit, fc)
    assert kind in (NEED, FRAME, STRAY)
    if kind in (FRAME, STRAY):
        assert 0 <= start < end <= len(buf)
        frame = bytes(buf[start:end])
        assert crc_ref(frame[:-2]) == frame[-2] | frame[-1] << 8
        mine = frame[0] == unit and frame[1] in (fc, fc | 0x80)
        assert mine == (kind == FRAME)
        assert RtuFramer.pdu(buf, start, end) == frame[1:-2]


@SUITE
@given(data=st.data())
def test_ascii_framer_verdicts_are_true(data: Any) -> None:
    d = HypothesisDraw(data)
    unit, request = d.int(1, 247), gen_request(d)
    fc = request.function
    buf = bytearray()
    for _ in range(d.int(0, 4)):
        part = d.pick(("noise", "ours", "other", "spoiled"))
        if part == "noise":
            buf += d.bytes(1, 10)
        else:
            u = unit if part != "other" else d.int(0, 255)
            frame = framing.ascii_frame(u, gen_reply(d, request))
            buf += spoil_ascii_text(d, frame) if part == "spoiled" else frame
    kind, start, end = AsciiFramer.scan(buf, unit, fc)
    AsciiFramer.looks_like_reply(buf, unit, fc)
    assert kind in (NEED, FRAME, STRAY, JUNK)
    if kind != NEED:
        assert 0 <= start < end <= len(buf)
    if kind in (FRAME, STRAY):
        frame = bytes(buf[start:end])
        assert ref_ascii_frame_ok(frame), frame
        pdu = AsciiFramer.pdu(buf, start, end)
        mine = int(frame[1:3], 16) == unit and pdu[:1] in (bytes((fc,)), bytes((fc | 0x80,)))
        assert mine == (kind == FRAME)


def ref_ascii_frame_ok(frame: bytes) -> bool:
    """Strict syntax and LRC, whatever the content."""
    if not (frame.startswith(b":") and frame.endswith(b"\r\n")):
        return False
    digits = frame[1:-2]
    if len(digits) < 6 or len(digits) % 2 or not set(digits) <= HEX_DIGITS:
        return False
    return sum(bytes.fromhex(digits.decode())) & 0xFF == 0
