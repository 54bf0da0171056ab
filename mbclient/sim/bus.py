"""The simulated RS-485 line: units by address, and what happened on the wire.

``SimBus`` is the one object every server shares. It routes request PDUs to units
(broadcasts to all, unknown addresses to nobody: a real line stays silent, it never
answers exception 4 on a missing slave's behalf) and, for serial lines, keeps the
timeline of frames so tests can assert that the master never talked over anyone:

* a **collision** is a request that starts while a reply is on the wire, while a unit is
  in its turnaround (it has heard a request and is about to answer), or less than 3.5
  characters (``frame_gap``) after the previous frame ended; frames that overlap in time
  are garbled, exactly as two drivers fighting on RS-485 would garble them (two late
  replies that overlap each other count as a collision too: the master did not wait);
* ``min_gap`` is the smallest silence seen between the end of one frame and the start of
  the next (any frames), ``min_request_gap`` the smallest silence before a request.

Times are ``time.monotonic()`` seconds (the asyncio loop clock on Linux).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..modbus.framing import BITS_PER_CHAR, char_time, frame_gap, wire_time
from .unit import Reply, SimUnit, UnitCounters

# Frames older than this cannot collide with a new one; only their gap could be noted,
# and a gap this long never matters to the 3.5-character rule.
RECENT = 0.5

REQUEST = "request"
REPLY = "reply"
BROADCAST = "broadcast"
GARBAGE = "garbage"


@dataclass(slots=True, eq=False)
class WireFrame:
    """One frame's occupation of the line. Unpacks as ``(start, end, unit, kind)``."""

    start: float
    end: float
    unit: int | None
    kind: str
    collided: bool = False
    data: bytes = field(default=b"", repr=False)
    turn_start: float = 0.0  # replies: the unit's turnaround window [turn_start, turn_end)
    turn_end: float = 0.0
    delivered: bool = False
    sink: Callable[[bytes], None] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[object]:
        return iter((self.start, self.end, self.unit, self.kind))

    def overlaps(self, other: WireFrame) -> bool:
        return self.start < other.end and other.start < self.end


class SimBus:
    """Units sharing one line (or one TCP/UDP endpoint), and the line's statistics."""

    def __init__(
        self,
        baud: int = 9600,
        bits_per_char: int = BITS_PER_CHAR,
        *,
        units: list[SimUnit] | tuple[SimUnit, ...] = (),
        log_size: int = 4096,
    ) -> None:
        if baud <= 0:
            raise ValueError(f"baud {baud} must be positive")
        self.baud = baud
        self.bits_per_char = bits_per_char
        self.units: dict[int, SimUnit] = {}
        self.frames: deque[WireFrame] = deque(maxlen=log_size)
        self._recent: list[WireFrame] = []
        self._unit_busy_until: dict[int, float] = {}
        self.gap_rule = True  # ASCII lines have no 3.5-character rule (':' ... CRLF frames)
        self.reset_stats()
        for u in units:
            self.add(u)

    # -- units ------------------------------------------------------------------------------
    def add(self, unit: SimUnit) -> SimUnit:
        if unit.address in self.units:
            raise ValueError(f"unit {unit.address} is already on this bus")
        self.units[unit.address] = unit
        return unit

    def remove(self, address: int) -> None:
        self.units.pop(address, None)

    def __getitem__(self, address: int) -> SimUnit:
        return self.units[address]

    def __contains__(self, address: object) -> bool:
        return address in self.units

    # -- timing -----------------------------------------------------------------------------
    @property
    def char_time(self) -> float:
        return char_time(self.baud, self.bits_per_char)

    @property
    def frame_gap(self) -> float:
        return frame_gap(self.baud, self.bits_per_char)

    def wire_time(self, nbytes: int) -> float:
        return wire_time(nbytes, self.baud, self.bits_per_char)

    # -- statistics -------------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero the bus counters and the frame log (unit counters are the units' own)."""
        self.transactions = 0  # well-formed requests seen (any address, broadcast included)
        self.unknown_unit = 0  # requests to addresses nobody answers
        self.broadcasts = 0
        self.garbage = 0  # frames dropped unread: bad CRC/LRC, noise, fragments
        self.collisions = 0
        self.collision_kinds: Counter[str] = Counter()  # "overlap", "turnaround", "gap"
        self.min_gap: float | None = None
        self.min_request_gap: float | None = None
        self.busy_time = 0.0  # seconds of wire occupied by frames
        # What a perfect master would have spent: per request, its wire time + one
        # 3.5-character gap, plus turnaround + reply wire time when answered.
        self.ideal_time = 0.0
        self.frames.clear()

    def unit_counts(self) -> dict[int, UnitCounters]:
        return {a: u.counters for a, u in self.units.items()}

    def collided_frames(self) -> list[WireFrame]:
        return [f for f in self.frames if f.collided]

    # -- routing (all transports) -------------------------------------------------------------
    def dispatch(self, address: int, pdu: bytes, *, now: float | None = None) -> Reply | None:
        """Route one well-formed request PDU; the reply the addressed unit sends, if any.

        ``now`` is when the request's last byte arrived; a unit still busy answering an
        earlier request (a late reply pending) does not hear a new one.
        """
        self.transactions += 1
        if address == 0:
            self.broadcasts += 1
            for unit in self.units.values():
                unit.broadcast(pdu, at=now)
            return None
        unit = self.units.get(address)
        if unit is None:
            self.unknown_unit += 1
            return None
        if now is not None and now < self._unit_busy_until.get(address, 0.0):
            unit.counters.requests += 1
            unit.counters.busy += 1
            return None
        return unit.respond(pdu, at=now)

    # -- the serial timeline ----------------------------------------------------------------
    def mark_busy(self, address: int, until: float) -> None:
        self._unit_busy_until[address] = until

    def place(self, frame: WireFrame) -> bool:
        """Put a frame on the timeline; True when it collided (a colliding request is lost)."""
        now = time.monotonic()
        if self._recent and self._recent[0].end < now - RECENT:
            self._recent = [f for f in self._recent if f.end > now - RECENT]
        gap = self.frame_gap
        reasons: set[str] = set()
        prev: WireFrame | None = None
        nxt: WireFrame | None = None
        for other in self._recent:
            if frame.overlaps(other):
                reasons.add("overlap")
                other.collided = True
                continue
            if other.end <= frame.start and (prev is None or other.end > prev.end):
                prev = other
            if other.start >= frame.end and (nxt is None or other.start < nxt.start):
                nxt = other
            if frame.kind != REPLY and other.kind == REPLY and other.turn_start <= frame.start < other.turn_end:
                reasons.add("turnaround")
        if prev is not None:
            before = frame.start - prev.end
            self._note_gap(before)
            if frame.kind != REPLY:
                self.min_request_gap = before if self.min_request_gap is None else min(self.min_request_gap, before)
                if before < gap - 1e-9 and self.gap_rule:
                    reasons.add("gap")
        if nxt is not None:
            self._note_gap(nxt.start - frame.end)
        self._recent.append(frame)
        self.frames.append(frame)
        self.busy_time += frame.end - frame.start
        if reasons:
            frame.collided = True
            self.collisions += 1
            self.collision_kinds.update(reasons)
        return "overlap" in reasons

    def _note_gap(self, gap: float) -> None:
        self.min_gap = gap if self.min_gap is None else min(self.min_gap, gap)

    def efficiency(self, elapsed: float) -> float:
        """Bus efficiency as issue 2 defines it: ``ideal_time / elapsed`` (1.0 = the master
        added no dead time of its own)."""
        return self.ideal_time / elapsed if elapsed > 0 else 0.0
