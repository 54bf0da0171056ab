"""Register types, decoding and block planning (pure, no bus)."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbclient.registers import (
    F32,
    F32LE,
    FAST,
    HOLDING,
    INPUT,
    NORMAL,
    S16,
    S32,
    S32LE,
    S64,
    SLOW,
    U16,
    U32,
    U32LE,
    U64,
    U64LE,
    Block,
    BlockRules,
    Register,
    WriteRule,
    bridge_limit,
    plan_blocks,
    split_block,
    text,
)


def words(fmt: str, value) -> list[int]:  # noqa: ANN001
    raw = struct.pack(">" + fmt, value)
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


# --- data types ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "regs", "value"),
    [
        (U16, [0xFFFF], 65535),
        (S16, [0xFFFF], -1),
        (U32, [0x0001, 0x0002], 0x10002),
        (U32LE, [0x0002, 0x0001], 0x10002),
        (S32, [0xFFFF, 0xFFFE], -2),
        (S32LE, [0xFFFE, 0xFFFF], -2),
        (U64, [0, 0, 1, 0], 65536),
        (U64LE, [0, 1, 0, 0], 65536),
        (S64, [0xFFFF] * 4, -1),
        (F32, [0x4366, 0x0000], 230.0),
        (F32LE, [0x0000, 0x4366], 230.0),
    ],
)
def test_numeric_types_decode_both_word_orders(dtype, regs, value) -> None:  # noqa: ANN001
    assert dtype.decode(regs) == value
    assert dtype.encode(value) == regs


def test_text_strips_padding_and_control_bytes() -> None:
    t = text(5)
    regs = t.encode("QXB12")
    assert t.decode(regs) == "QXB12"
    padded = [0x5158, 0x4231, 0x3200, 0x0000, 0x2020]  # "QXB12" NUL NUL NUL spaces
    assert t.decode(padded) == "QXB12"
    assert t.decode([0x2020] * 5) == ""


def test_wrong_register_count_is_an_error() -> None:
    with pytest.raises(ValueError):
        F32.decode([1])


# --- registers ----------------------------------------------------------------------------------


def test_scale_is_a_divisor_and_gives_float() -> None:
    r = Register("/Ac/L1/Voltage", 38, U16, scale=10, unit="V", precision=1)
    v = r.decode([2301])
    assert v == pytest.approx(230.1) and type(v) is float
    assert r.value_kind is float
    assert r.formatter()(v) == "230.1 V"


def test_unscaled_integer_stays_int_and_f32_is_float() -> None:
    assert type(Register("/ErrorCode", 105).decode([7])) is int
    v = Register("/Ac/Power", 0x0C, F32).decode(words("f", 12.5))
    assert v == 12.5 and type(v) is float


def test_invalid_sentinels_and_nan_are_invalid() -> None:
    r = Register("x", 0, U16, invalid=(0xFFFF,))
    assert r.decode([0xFFFF]) is None and r.decode([3]) == 3
    f = Register("y", 0, F32)
    assert f.decode(words("f", math.nan)) is None
    assert f.decode(words("f", math.inf)) is None


def test_enum_map_unknown_raw_is_invalid() -> None:
    r = Register("/StatusCode", 0, values={0: 8, 1: 7, 3: 10})
    assert [r.decode([x]) for x in (0, 1, 2, 3, 4)] == [8, 7, None, 10, None]
    assert r.value_kind is int


def test_bit_fields() -> None:
    hi = Register("trackers", 44, bits=(8, 8))
    lo = Register("phases", 44, bits=(0, 8))
    assert hi.decode([0x0201]) == 2 and lo.decode([0x0201]) == 1


def test_encode_honours_write_rule_and_scale() -> None:
    r = Register("/Rate", 123, S16, HOLDING, scale=10, write=WriteRule(-100.0, 100.0))
    assert r.encode(87.6) == [876]
    assert r.encode(-100) == [(-1000) & 0xFFFF]
    with pytest.raises(ValueError):
        r.encode(100.1)
    e = Register("/Mode", 122, U16, HOLDING, values={0: 0, 1: 1}, write=WriteRule(choices=(0, 1)))
    assert e.encode(1) == [1]
    with pytest.raises(ValueError):
        e.encode(2)
    with pytest.raises(ValueError):
        Register("/ro", 1).encode(1)


def test_paths_of_internal_and_mirrored_registers() -> None:
    assert Register("persist", 2).paths == ()
    r = Register("/Ac/L1/Power", 0x0C, F32, also=("/Ac/Power",))
    assert r.paths == ("/Ac/L1/Power", "/Ac/Power")


# --- bridging threshold -------------------------------------------------------------------------


def test_bridge_limit_from_line_timing() -> None:
    # 9600 Bd, 20 ms turnaround: 8 + 5 bytes + 2 x 3.5 chars + 19.2 chars of turnaround
    # = 39.2 characters = 19 registers of 2 bytes.
    assert bridge_limit(9600, 0.020) == 19
    assert bridge_limit(9600, 0.0) == 10
    assert bridge_limit(9600, 0.050) > bridge_limit(9600, 0.020)
    assert bridge_limit(115200, 0.020) > bridge_limit(9600, 0.020)
    assert bridge_limit(None) >= 40  # network: a round trip dwarfs payload bytes


# --- planner --------------------------------------------------------------------------------------


def reg(addr: int, words_: int = 1, table=INPUT, refresh=FAST, name: str | None = None) -> Register:  # noqa: ANN001
    dtype = {1: U16, 2: U32, 4: U64}[words_]
    return Register(name or f"r{table.name}{addr}", addr, dtype, table, refresh=refresh)


def spans(blocks: list[Block]) -> list[tuple[int, int]]:
    return [(b.address, b.count) for b in blocks]


def test_holes_up_to_the_limit_are_bridged() -> None:
    regs = [reg(0, 2), reg(2 + 19, 2), reg(2 + 19 + 2 + 20, 2)]
    assert spans(plan_blocks(regs, max_gap=19)) == [(0, 23), (43, 2)]


def test_max_count_splits() -> None:
    regs = [reg(a, 2) for a in range(0, 200, 2)]
    blocks = plan_blocks(regs, BlockRules(max_count=80))
    assert spans(blocks) == [(0, 80), (80, 80), (160, 40)]


def test_alignment_even_address_and_count() -> None:
    rules = BlockRules(max_count=80, align=2)
    blocks = plan_blocks([reg(3), reg(6)], rules, max_gap=0)
    assert spans(blocks) == [(2, 2), (6, 2)]
    assert all(b.address % 2 == 0 and b.count % 2 == 0 for b in blocks)


def test_window_keeps_reads_inside_growatt_ranges() -> None:
    rules = BlockRules(max_count=100, window=125)
    blocks = plan_blocks([reg(120), reg(124), reg(125), reg(130)], rules, max_gap=19)
    assert spans(blocks) == [(120, 5), (125, 6)]
    with pytest.raises(ValueError):  # one value straddling two ranges cannot be read at all
        plan_blocks([reg(124, 2)], rules)


def test_barriers_and_holes_are_never_crossed() -> None:
    rules = BlockRules(barriers=(10,), holes=((INPUT, 20, 22),))
    blocks = plan_blocks([reg(8), reg(11), reg(19), reg(23)], rules, max_gap=19)
    assert spans(blocks) == [(8, 1), (11, 9), (23, 1)]
    # the hole only concerns its own table
    blocks = plan_blocks([reg(19, table=HOLDING), reg(23, table=HOLDING)], rules, max_gap=19)
    assert spans(blocks) == [(19, 5)]


def test_tables_and_refresh_classes_are_planned_separately_fast_first() -> None:
    regs = [reg(0, refresh=SLOW), reg(1, refresh=FAST), reg(2, table=HOLDING), reg(3, refresh=NORMAL)]
    blocks = plan_blocks(regs)
    assert [(b.refresh, b.table, b.address) for b in blocks] == [
        (FAST, HOLDING, 2), (FAST, INPUT, 1), (NORMAL, INPUT, 3), (SLOW, INPUT, 0)]


def test_block_decode_and_split() -> None:
    a, b = Register("a", 0, U16), Register("b", 4, S16)
    (block,) = plan_blocks([a, b], max_gap=19)
    assert block.bridged and (block.address, block.count) == (0, 5)
    assert block.decode([1, 9, 9, 9, 0xFFFF]) == {a: 1, b: -1}
    assert spans(split_block(block, BlockRules())) == [(0, 1), (4, 1)]


def test_overlapping_registers_share_a_read() -> None:
    hi = Register("hi", 44, bits=(8, 8))
    lo = Register("lo", 44, bits=(0, 8))
    (block,) = plan_blocks([hi, lo])
    assert (block.address, block.count) == (44, 1)
    assert block.decode([0x0201]) == {hi: 2, lo: 1}


@settings(max_examples=200, deadline=None)
@given(
    addrs=st.lists(st.tuples(st.integers(0, 600), st.sampled_from([1, 2, 4])), min_size=1, max_size=40),
    max_count=st.integers(8, 125),
    align=st.sampled_from([1, 2]),
    window=st.sampled_from([None, 125]),
    max_gap=st.integers(0, 40),
)
def test_planned_blocks_obey_the_rules_and_cover_every_register(addrs, max_count, align, window, max_gap) -> None:  # noqa: ANN001
    rules = BlockRules(max_count=max_count, align=align, window=window)
    regs = []
    for i, (a, n) in enumerate(addrs):
        s, e = rules.span(a, a + n)
        if window and s // window != (e - 1) // window:
            continue  # such a register is rejected by design (tested above)
        regs.append(Register(f"r{i}", a, {1: U16, 2: U32, 4: U64}[n]))
    if not regs:
        return
    blocks = plan_blocks(regs, rules, max_gap)
    seen = []
    for b in blocks:
        assert 1 <= b.count <= max_count
        assert b.address % align == 0 and b.count % align == 0
        if window:
            assert b.address // window == (b.end - 1) // window
        for r in b.registers:
            assert b.address <= r.address and r.end <= b.end
        seen.extend(b.registers)
    assert sorted(r.name for r in seen) == sorted(r.name for r in regs)
