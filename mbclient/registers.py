"""Typed register definitions, decoding, refresh classes and block planning.

A device model is a table of ``Register`` rows: where a value lives (table + address),
how it is coded (``DataType``), how it is scaled and shown, which D-Bus path(s) it feeds
and how often it must be refreshed. Everything a driver does generically - planning block
reads, decoding replies, defining D-Bus items, going offline - is driven by these rows, so
adding a meter of a known family is a table, not code.

Block planning packs the registers of one table and refresh class into as few reads as
possible. On an RS-485 line a transaction has a fixed cost (request frame, reply framing,
two silent gaps and the slave's turnaround) while a register read through costs two bytes,
so a hole between two wanted registers is worth reading through when it is cheaper than a
new transaction (``bridge_limit``). Per-driver ``BlockRules`` add what the device demands:
a register limit per read, alignment (Eastron: even address and count), fixed windows a
read must not cross (Growatt: 0-124, 125-249, 3000-3124 ...) and ranges that answer
exception 2 if touched.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from .modbus.framing import char_time, frame_gap
from .modbus.pdu import MAX_READ, READ_HOLDING, READ_INPUT

Value = int | float | str | None


class Table(IntEnum):
    """Which Modbus table a register lives in; the value is the read function code."""

    HOLDING = READ_HOLDING
    INPUT = READ_INPUT


HOLDING = Table.HOLDING
INPUT = Table.INPUT


class Refresh(IntEnum):
    """How often a register is read. Intervals are per device (``DeviceOptions.refresh``)."""

    FAST = 0  # what control loops and the GUI's live view need (power, current, voltage)
    NORMAL = 1  # slowly varying live values (power factor, frequency, status)
    SLOW = 2  # counters and configuration read-backs (energies, temperatures)
    ONCE = 3  # read once after connecting (ratings, tracker count, persistence flags)


FAST, NORMAL, SLOW, ONCE = Refresh.FAST, Refresh.NORMAL, Refresh.SLOW, Refresh.ONCE

#: Default seconds between reads per refresh class. FAST at 0.25 s keeps the grid meter's
#: power fresh for ESS and the zero-export controller; a 9600 Bd line carries one small
#: read in ~50-70 ms, so two devices' FAST blocks use well under half of it.
DEFAULT_INTERVALS: Mapping[Refresh, float] = {FAST: 0.25, NORMAL: 2.0, SLOW: 10.0, ONCE: math.inf}


# --- data types ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataType:
    """How a value is coded in ``words`` consecutive registers.

    Numbers use ``fmt`` (a struct code) over the registers in big-endian word order;
    ``swapped`` types store the low word first (the "CDAB"/little-word order many
    inverters use). ``text`` types are ASCII, two characters per register, high byte first.
    """

    name: str
    words: int
    fmt: str = ""  # struct code of the value; "" for text
    swapped: bool = False
    # compiled once: decoding runs for every value of every reply
    _words_struct: struct.Struct = field(init=False, repr=False, compare=False)
    _value_struct: struct.Struct | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_words_struct", struct.Struct(f">{self.words}H"))
        object.__setattr__(self, "_value_struct", struct.Struct(f">{self.fmt}") if self.fmt else None)

    @property
    def is_text(self) -> bool:
        return not self.fmt

    @property
    def is_float(self) -> bool:
        return self.fmt in ("f", "d")

    def decode(self, regs: Sequence[int]) -> int | float | str:
        if len(regs) != self.words:
            raise ValueError(f"{self.name} needs {self.words} registers, got {len(regs)}")
        value_struct = self._value_struct
        if value_struct is None:
            raw = self._words_struct.pack(*regs)
            # Devices pad with NUL or spaces; keep printable ASCII only so a stray control
            # byte never ends up in a service name.
            return "".join(chr(b) for b in raw if 32 <= b < 127).strip()
        if self.swapped:
            regs = regs[::-1]
        return value_struct.unpack(self._words_struct.pack(*regs))[0]

    def encode(self, value: int | float | str) -> list[int]:
        if self.is_text:
            raw = str(value).encode("ascii")[: 2 * self.words].ljust(2 * self.words, b"\0")
            return list(struct.unpack(f">{self.words}H", raw))
        if not self.is_float:
            value = int(value)
        words = list(struct.unpack(f">{self.words}H", struct.pack(f">{self.fmt}", value)))
        return list(reversed(words)) if self.swapped else words


U16 = DataType("u16", 1, "H")
S16 = DataType("s16", 1, "h")
U32 = DataType("u32", 2, "I")
S32 = DataType("s32", 2, "i")
U64 = DataType("u64", 4, "Q")
S64 = DataType("s64", 4, "q")
F32 = DataType("f32", 2, "f")
U32LE = DataType("u32le", 2, "I", swapped=True)
S32LE = DataType("s32le", 2, "i", swapped=True)
U64LE = DataType("u64le", 4, "Q", swapped=True)
S64LE = DataType("s64le", 4, "q", swapped=True)
F32LE = DataType("f32le", 2, "f", swapped=True)


#: Number types by the name a definition file uses.
TYPES: Mapping[str, DataType] = {t.name: t for t in (U16, S16, U32, S32, U64, S64, F32, U32LE, S32LE, U64LE, S64LE, F32LE)}


def text(words: int) -> DataType:
    """An ASCII text of ``words`` registers (2 characters each)."""
    if words < 1:
        raise ValueError("text needs at least one register")
    return DataType(f"text{words}", words)


# --- write permission --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteRule:
    """Values (in published units) a writable register accepts: a range and/or a set."""

    min: float | None = None
    max: float | None = None
    choices: tuple[Value, ...] | None = None
    #: Register the value is written to when it is not the one it is read from (a set
    #: point read back elsewhere); None: the register itself.
    address: int | None = None
    #: Re-read the register's block right after a write, so the published value is the
    #: device's answer rather than what was asked for.
    readback: bool = True

    def check(self, value: Value) -> None:
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} not one of {self.choices}")
        if isinstance(value, (int, float)):
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise ValueError(f"{value} outside {self.min}..{self.max}")


# --- registers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Register:
    """One value of a device.

    ``name`` identifies it inside the driver; a name starting with '/' is also the D-Bus
    path it is published on (``also`` adds more paths fed by the same value, e.g.
    ``/Ac/Power`` and ``/Ac/L1/Power`` from one register of a single-phase meter).
    Decoding order: raw integer (``bits`` field extracted) -> ``invalid`` sentinels ->
    enum ``values`` map (unknown raw -> invalid) or ``scale`` (divisor, as register docs
    write "÷10") -> NaN/inf become invalid.

    ``cumulative`` values (lifetime energy) are kept while the device is offline;
    ``asleep`` is what is published instead of invalid while offline when the device's
    ``zero_when_asleep`` option is set (0.0 for power/current). ``optional`` registers
    may be missing on some units of the model: exception 2 then just leaves them invalid.

    Compared and hashed by identity (a row of a table), so it can key decoded values.
    """

    name: str
    address: int
    type: DataType = U16
    table: Table = INPUT
    scale: float = 1
    unit: str = ""
    precision: int | None = None
    refresh: Refresh = NORMAL
    invalid: tuple[int | float, ...] = ()
    values: Mapping[int, Value] | None = None
    text: Mapping[Value, str] | None = None  # D-Bus text per published value (enums)
    bits: tuple[int, int] | None = None  # (shift, width) of a field inside the raw integer
    write: WriteRule | None = None
    kind: type | None = None  # published Python type; derived when None
    also: tuple[str, ...] = ()
    cumulative: bool = False
    asleep: Value = None
    optional: bool = False
    #: Name of another register holding a power-of-ten exponent (SunSpec ``*_SF``): the
    #: published value is raw x 10**exponent / scale. Applied by the driver, which knows
    #: the other register's value; ``decode`` alone returns the unscaled number.
    scale_ref: str | None = None
    # derived once from the fields above (a register is decoded on every reply)
    _paths: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _to_float: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.address or self.address + self.type.words > 0x10000:
            raise ValueError(f"{self.name}: address {self.address} out of range")
        if self.scale == 0:
            raise ValueError(f"{self.name}: scale 0")
        if (self.bits is not None or self.values is not None) and (self.type.is_text or self.type.is_float):
            raise ValueError(f"{self.name}: bits/values need an integer type")
        paths = ((self.name,) if self.name.startswith("/") else ()) + self.also
        object.__setattr__(self, "_paths", paths)
        object.__setattr__(self, "_keys", tuple(dict.fromkeys((self.name, *paths))))
        object.__setattr__(self, "_to_float", self.value_kind is float)

    # -- derived properties ------------------------------------------------------------------
    @property
    def words(self) -> int:
        return self.type.words

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.type.words

    @property
    def paths(self) -> tuple[str, ...]:
        """D-Bus paths this value is published on (empty for internal registers)."""
        return self._paths

    @property
    def keys(self) -> tuple[str, ...]:
        """The names the driver remembers this value under: its name and its paths."""
        return self._keys

    @property
    def value_kind(self) -> type:
        """Python type of the published value: str for text, the map's type for enums,
        float for floats and scaled numbers, int otherwise."""
        if self.kind is not None:
            return self.kind
        if self.type.is_text:
            return str
        if self.values is not None:
            sample = next((v for v in self.values.values() if v is not None), 0)
            return type(sample)
        if self.type.is_float or self.scale != 1 or self.scale_ref is not None:
            return float
        return int

    def formatter(self) -> Callable[[Any], str] | None:
        """D-Bus text: the enum text if any, else '<value rounded to precision> <unit>'."""
        if self.text is not None:
            table = self.text
            return lambda v: table.get(v, str(v))
        if self.unit or self.precision is not None:
            return make_formatter(self.unit, self.precision)
        return None

    # -- codec -----------------------------------------------------------------------------
    def decode(self, regs: Sequence[int]) -> Value:
        raw = self.type.decode(regs)
        if isinstance(raw, str):
            return raw or None
        if self.bits is not None:
            shift, width = self.bits
            raw = (int(raw) >> shift) & ((1 << width) - 1)
        if raw in self.invalid:
            return None
        if isinstance(raw, float) and not math.isfinite(raw):
            return None
        if self.values is not None:
            return self.values.get(int(raw))
        if self.scale != 1:
            return raw / self.scale
        return float(raw) if self._to_float else raw

    def rescale(self, value: Value, exponent: Value) -> Value:
        """A decoded value of a ``scale_ref`` register times 10**exponent (invalid when the
        exponent is; SunSpec allows -10..10)."""
        if value is None or not isinstance(exponent, int) or not -10 <= exponent <= 10:
            return None
        return float(value) * 10.0**exponent

    def encode(self, value: Value, exponent: int | None = None) -> list[int]:
        """Registers to write for a published value; raises ValueError if not allowed."""
        if self.write is None:
            raise ValueError(f"{self.name} is not writable")
        if value is None:
            raise ValueError(f"{self.name}: cannot write an invalid value")
        self.write.check(value)
        if self.values is not None:
            for raw, published in self.values.items():
                if published == value:
                    return self.type.encode(raw)
            raise ValueError(f"{self.name}: {value!r} has no raw code")
        if self.bits is not None:
            raise ValueError(f"{self.name}: bit fields are read-only")
        if self.type.is_text:
            return self.type.encode(str(value))
        raw = value * self.scale if self.scale != 1 else value
        if self.scale_ref is not None:
            if exponent is None:
                raise ValueError(f"{self.name}: scale factor {self.scale_ref} not read yet")
            raw = raw / 10.0**exponent
        return self.type.encode(raw if self.type.is_float else round(raw))


def make_formatter(unit: str, precision: int | None) -> Callable[[Any], str]:
    """'230.1 V' style text (unit after a space, as Victron's own services show it)."""

    def fmt(value: Any) -> str:
        if isinstance(value, float) and precision is not None:
            body = f"{value:.{precision}f}"
        else:
            body = str(value)
        return f"{body} {unit}" if unit else body

    return fmt


@dataclass(frozen=True, slots=True)
class Derived:
    """A published value computed from other values (e.g. net energy = import - export).

    ``fn`` gets the current values of ``inputs`` (names of registers or other derived
    values) and returns the value; it is only called when all inputs are valid.
    """

    name: str  # the D-Bus path
    inputs: tuple[str, ...]
    fn: Callable[..., Value]
    unit: str = ""
    precision: int | None = None
    kind: type = float
    cumulative: bool = False
    asleep: Value = None
    #: Call ``fn`` even when some inputs are invalid (``None``), e.g. "first valid".
    partial: bool = False

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.name,)

    def formatter(self) -> Callable[[Any], str] | None:
        return make_formatter(self.unit, self.precision) if (self.unit or self.precision is not None) else None


def difference(a: float, b: float) -> float:
    return a - b


def total(*parts: float) -> float:
    return float(sum(parts))


def negate(a: float) -> float:
    return -a


def absolute(a: float) -> float:
    return abs(a)


def first_valid(*values: Value) -> Value:
    return next((v for v in values if v is not None), None)


def mean(*values: float) -> float:
    return float(sum(values)) / len(values)


def maximum(*values: float) -> float:
    return max(values)


def minimum(*values: float) -> float:
    return min(values)


def product(*values: float) -> float:
    return math.prod(values)


#: The closed set of functions a definition file may name for a derived path:
#: name -> (function, called with invalid inputs too, (min, max) number of inputs).
FUNCTIONS: Mapping[str, tuple[Callable[..., Value], bool, tuple[int, int]]] = {
    "sum": (total, False, (1, 64)),
    "difference": (difference, False, (2, 2)),
    "negate": (negate, False, (1, 1)),
    "abs": (absolute, False, (1, 1)),
    "first_valid": (first_valid, True, (1, 64)),
    "mean": (mean, False, (1, 64)),
    "max": (maximum, False, (1, 64)),
    "min": (minimum, False, (1, 64)),
    "product": (product, False, (2, 64)),
}


# --- block planning ---------------------------------------------------------------------------

#: Assumed slave turnaround when the driver does not know better (seconds). Eastron and
#: Growatt units answer in 10-50 ms; the simulator defaults to 20 ms.
DEFAULT_TURNAROUND = 0.020
#: Request frame of a read (unit, function, address, count, CRC) and the reply's framing
#: (unit, function, byte count, CRC) in bytes - what a merged read saves besides gaps.
READ_REQUEST_BYTES = 8
READ_REPLY_OVERHEAD = 5
#: Hole bridging on TCP/UDP: the cost of a transaction is a network round trip, which
#: dwarfs a few hundred extra payload bytes, so bridge generously.
NETWORK_BRIDGE = 60


def bridge_limit(baud: int | None, turnaround: float = DEFAULT_TURNAROUND) -> int:
    """Largest hole (registers) worth reading through instead of starting a new read.

    A new transaction on a serial line costs the read request (8 bytes), the reply's
    framing (5 bytes), two 3.5-character silences and the slave's turnaround; a hole
    costs 2 bytes per register. At 9600 Bd with 20 ms turnaround this is 19 registers.
    ``baud=None`` means a network transport (``NETWORK_BRIDGE``).
    """
    if baud is None:
        return NETWORK_BRIDGE
    ct = char_time(baud)
    chars = READ_REQUEST_BYTES + READ_REPLY_OVERHEAD + 2 * frame_gap(baud) / ct + turnaround / ct
    return int(chars // 2)


DEFAULT_BRIDGE = bridge_limit(9600)


@dataclass(frozen=True, slots=True)
class BlockRules:
    """What a device demands of a read.

    ``max_count``: registers per read (protocol limit 125; Eastron 50, see eastron.py; Growatt v1.20 100).
    ``align``: start address and count are multiples of this (Eastron: 2).
    ``window``: a read stays inside one aligned window of this many registers (Growatt
    serves 0-124, 125-249, 3000-3124 ... as separate ranges).
    ``barriers``: addresses a read may start at but never run across.
    ``holes``: (table, start, end-exclusive) ranges that must never be read, e.g.
    undefined registers that answer exception 2.
    """

    max_count: int = MAX_READ
    align: int = 1
    window: int | None = None
    barriers: tuple[int, ...] = ()
    holes: tuple[tuple[Table, int, int], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max_count <= MAX_READ:
            raise ValueError(f"max_count {self.max_count} outside 1..{MAX_READ}")
        if self.align < 1 or self.max_count < self.align:
            raise ValueError(f"bad alignment {self.align}")

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Aligned (start, end) covering [start, end)."""
        a = self.align
        return start - start % a, -(-end // a) * a

    def allows(self, table: Table, start: int, end: int) -> bool:
        """May one read cover [start, end) (already aligned)?"""
        if end - start > self.max_count or start < 0 or end > 0x10000:
            return False
        if self.window and start // self.window != (end - 1) // self.window:
            return False
        if any(start < b < end for b in self.barriers):
            return False
        return not any(t == table and start < h_end and h_start < end for t, h_start, h_end in self.holes)


@dataclass(frozen=True, slots=True)
class Block:
    """One planned read: registers of one table and refresh class."""

    table: Table
    address: int
    count: int
    refresh: Refresh
    registers: tuple[Register, ...]
    # (register, first, end) offsets into the reply, computed once
    _spans: tuple[tuple[Register, int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spans = tuple((r, r.address - self.address, r.address - self.address + r.words) for r in self.registers)
        object.__setattr__(self, "_spans", spans)

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def bridged(self) -> bool:
        """True if the read covers addresses no register of the block uses."""
        used: set[int] = set()
        for r in self.registers:
            used.update(range(r.address, r.end))
        return len(used) < self.count

    @property
    def optional(self) -> bool:
        return all(r.optional for r in self.registers)

    def decode(self, regs: Sequence[int]) -> dict[Register, Value]:
        if len(regs) != self.count:
            raise ValueError(f"block {self.address}+{self.count} got {len(regs)} registers")
        return {r: r.decode(regs[first:end]) for r, first, end in self._spans}

    def __str__(self) -> str:
        return f"{self.table.name.lower()} {self.address}+{self.count} ({self.refresh.name.lower()})"


def plan_blocks(
    registers: Iterable[Register], rules: BlockRules = BlockRules(), max_gap: int = DEFAULT_BRIDGE
) -> list[Block]:
    """Pack registers into reads: per (table, refresh class), in address order, extending
    the current read while the hole to the next register is at most ``max_gap`` registers
    and ``rules`` allow the grown read; otherwise a new read starts.

    Raises ValueError if a single register cannot be read under ``rules`` (a table bug).
    Result order: refresh class (FAST first), then table, then address.
    """
    groups: dict[tuple[Refresh, Table], list[Register]] = {}
    for r in registers:
        groups.setdefault((r.refresh, r.table), []).append(r)
    blocks: list[Block] = []
    for (refresh, table), regs in sorted(groups.items()):
        regs.sort(key=lambda r: (r.address, r.end))
        cur: list[Register] = []
        start = end = 0
        for r in regs:
            s, e = rules.span(r.address, r.end)
            if not rules.allows(table, s, e):
                raise ValueError(f"register {r.name} ({table.name.lower()} {r.address}) cannot be read under {rules}")
            if cur:
                gap = r.address - end
                ns, ne = rules.span(start, max(end, r.end))
                if gap <= max_gap and rules.allows(table, ns, ne):
                    cur.append(r)
                    end = max(end, r.end)
                    continue
                blocks.append(_make_block(table, refresh, cur, rules, start, end))
            cur, start, end = [r], r.address, r.end
        if cur:
            blocks.append(_make_block(table, refresh, cur, rules, start, end))
    return blocks


def _make_block(table: Table, refresh: Refresh, regs: list[Register], rules: BlockRules, start: int, end: int) -> Block:
    s, e = rules.span(start, end)
    return Block(table, s, e - s, refresh, tuple(regs))


def split_block(block: Block, rules: BlockRules) -> list[Block]:
    """The same registers without bridging (after a bridged read met exception 2)."""
    return plan_blocks(block.registers, rules, max_gap=0)


@dataclass(slots=True)
class ScheduledBlock:
    """A block and when it is next due (driver runtime state)."""

    block: Block
    next_due: float = 0.0
    disabled: bool = False  # optional block the unit does not have
