"""The RS-485 arbiter on a real pseudo-terminal against the simulated line.

Every unit here stamps a fresh number ("nonce") into the first register of each read as
it answers, and fills the rest with a pattern naming unit and address, so a test can tell
exactly which request a reply belongs to.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import pytest_asyncio

from mbclient.errors import ModbusTimeout
from mbclient.modbus.pdu import READ_HOLDING, Request
from mbclient.sim import SimBus, SimSerialPort, SimUnit, serve_rtu
from mbclient.sim.bus import REQUEST
from mbclient.transports import RtuLink, UnitClient

BAUD = 19200


def pattern(unit: int, address: int) -> int:
    return (unit << 8) | (address & 0xFF)


def nonce_unit(address: int, *, turnaround: float = 0.005) -> SimUnit:
    unit = SimUnit(address, holding={a: pattern(address, a) for a in range(128)}, turnaround=turnaround)
    unit.allow_write(100, 4)
    counter = itertools.count(1)

    def stamp(table: str, first: int, count: int) -> None:
        unit.holding[first] = next(counter)

    unit.on_read = stamp
    return unit


def check_reply(unit: int, address: int, values: list[int], count: int) -> int:
    """The reply is for (unit, address, count); returns its nonce."""
    assert len(values) == count
    assert values[1:] == [pattern(unit, a) for a in range(address + 1, address + count)]
    return values[0]


@pytest_asyncio.fixture
async def line(tmp_path) -> AsyncIterator[tuple[SimBus, SimSerialPort, RtuLink]]:
    bus = SimBus(BAUD, units=[nonce_unit(1), nonce_unit(2), nonce_unit(3)])
    async with serve_rtu(bus, directory=tmp_path) as port:
        link = RtuLink.serial(port.path, BAUD)
        try:
            yield bus, port, link
        finally:
            await link.aclose()


def requests_to(bus: SimBus, unit: int) -> list:
    return [f for f in bus.frames if f.kind == REQUEST and f.unit == unit]


@pytest.mark.asyncio
async def test_many_callers_one_bus_no_collision_own_replies(line) -> None:
    bus, _, link = line
    seen: dict[int, set[int]] = {1: set(), 2: set(), 3: set()}

    async def caller(c: int) -> None:
        unit = 1 + c % 3
        address, count = 8 * c, 2 + c % 5
        last = 0
        for _ in range(5):
            values = await link.transact(unit, Request.read(READ_HOLDING, address, count), timeout=1.0)
            nonce = check_reply(unit, address, values, count)
            assert nonce > last  # fresh, and never someone else's
            assert nonce not in seen[unit]
            seen[unit].add(nonce)
            last = nonce

    async with anyio.create_task_group() as tg:
        for c in range(10):
            tg.start_soon(caller, c)

    assert sum(len(s) for s in seen.values()) == 50
    assert bus.collisions == 0, bus.collided_frames()
    assert bus.min_request_gap is not None and bus.min_request_gap >= bus.frame_gap - 1e-6
    assert bus.min_gap is not None and bus.min_gap >= bus.frame_gap - 1e-6
    for u in (1, 2, 3):
        stats = link.stats(u)
        assert stats.transactions == sum(5 for c in range(10) if 1 + c % 3 == u)
        assert stats.timeouts == stats.frame_errors == 0


@pytest.mark.asyncio
async def test_dead_unit_costs_healthy_units_at_most_its_timeout(line) -> None:
    """Policy: each request to a dead unit holds the bus for at most its timeout (plus the
    inter-frame gap); round-robin gives every other waiting unit a turn in between; after
    a timeout the dead unit's next request waits outside the bus (late-reply guard)."""
    bus, _, link = line
    bus[3].asleep = True
    timeout = 0.1
    done = asyncio.Event()
    healthy = {1: 0, 2: 0}

    async def poll(unit: int) -> None:
        while not done.is_set():
            try:
                await link.transact(unit, Request.read(READ_HOLDING, 0, 8), timeout=timeout if unit == 3 else 1.0)
            except ModbusTimeout:
                assert unit == 3
            else:
                healthy[unit] += 1

    async with anyio.create_task_group() as tg:
        for unit in (1, 2, 3, 3):
            tg.start_soon(poll, unit)
        await asyncio.sleep(1.0)
        stopped = asyncio.get_running_loop().time()
        done.set()

    assert link.stats(3).timeouts == len(requests_to(bus, 3))
    assert link.stats(1).timeouts == link.stats(2).timeouts == 0
    requests = [f for f in bus.frames if f.kind == REQUEST and f.start < stopped]
    dead = [f for f in requests if f.unit == 3]
    assert len(dead) >= 2
    assert healthy[1] > 3 * len(dead) and healthy[2] > 3 * len(dead)
    for before, after in zip(requests, requests[1:]):
        if before.unit == 3:
            # the bus was given back no later than the timeout (generous slack for a busy CI box)
            assert after.start - before.end < timeout + bus.frame_gap + 0.1
    for first, second in zip(dead, dead[1:]):
        between = {f.unit for f in requests if first.start < f.start < second.start}
        assert {1, 2} <= between


@pytest.mark.asyncio
async def test_priority_write_waits_for_at_most_the_transaction_in_flight(line) -> None:
    bus, _, link = line
    for u in (1, 2):
        bus[u].turnaround = 0.02
    completed: list[int] = []
    stop = asyncio.Event()

    async def hammer(unit: int) -> None:
        while not stop.is_set():
            await link.transact(unit, Request.read(READ_HOLDING, 0, 16), timeout=1.0)
            completed.append(unit)

    async with anyio.create_task_group() as tg:
        for unit in (1, 1, 2, 2, 3):
            tg.start_soon(hammer, unit)
        await asyncio.sleep(0.2)
        client = UnitClient(link, 2)
        for value in (7, 8):
            before = len(completed)
            await client.write_register(100, value, timeout=1.0, priority=True)
            assert len(completed) - before <= 1
            assert bus[2].holding[100] == value
        stop.set()
    assert bus.collisions == 0


@pytest.mark.asyncio
async def test_a_write_prompted_by_a_reply_goes_before_a_read_queued_earlier(tmp_path) -> None:
    """The zero-export controller reads its grid meter and reacts within a few ms. Its write
    must not wait behind the inverter's read that queued while the meter was answering:
    the next caller is chosen once the inter-frame gap after the reply has passed (3.6 ms
    at 9600 Bd), not the instant the reply is in."""
    bus = SimBus(9600, units=[nonce_unit(1, turnaround=0.02), nonce_unit(2, turnaround=0.02)])
    served: list[tuple[float, int, str]] = []  # (time, unit, read/write) as the units serve them
    for u in (1, 2):
        stamp = bus[u].on_read

        def on_read(table: str, first: int, count: int, u: int = u, stamp=stamp) -> None:  # noqa: ANN001
            served.append((time.monotonic(), u, "read"))
            stamp(table, first, count)

        bus[u].on_read = on_read
    async with serve_rtu(bus, directory=tmp_path) as port:
        link = RtuLink.serial(port.path, 9600)
        try:
            await link.transact(2, Request.read(READ_HOLDING, 0, 2), timeout=1.0)  # port open
            served.clear()
            meter = asyncio.ensure_future(link.transact(1, Request.read(READ_HOLDING, 0, 2), timeout=1.0))
            await asyncio.sleep(0.01)  # the meter's request is on the wire
            inverter_read = asyncio.ensure_future(link.transact(2, Request.read(READ_HOLDING, 0, 16), timeout=1.0))
            await meter  # the reading is in: react at once
            await link.transact(2, Request.write_single(100, 42), timeout=1.0, priority=True)
            assert not inverter_read.done()
            await inverter_read
            served += [(t, 2, "write") for t, *_ in bus[2].write_log]
        finally:
            await link.aclose()
    order = [(unit, what) for _, unit, what in sorted(served)]
    assert order == [(1, "read"), (2, "write"), (2, "read")]
    assert bus[2].holding[100] == 42 and bus.collisions == 0


@pytest.mark.asyncio
async def test_cancelled_caller_leaves_the_bus_clean(line) -> None:
    bus, _, link = line
    bus[1].turnaround = 0.15
    with anyio.move_on_after(0.05) as scope:  # request on the wire, reply not yet back
        await link.transact(1, Request.read(READ_HOLDING, 0, 4), timeout=1.0)
    assert scope.cancelled_caught

    values = await link.transact(2, Request.read(READ_HOLDING, 0, 4), timeout=1.0)
    check_reply(2, 0, values, 4)
    assert bus.collisions == 0  # unit 2's request waited for unit 1's reply
    assert link.stats(1).transactions == 1  # the abandoned transaction was finished
    assert link.stats(2).frame_errors == 0

    # Cancelled while queued for the bus: nothing is left behind either.
    bus[1].turnaround = 0.1
    first = asyncio.create_task(link.transact(1, Request.read(READ_HOLDING, 0, 4), timeout=1.0))
    await asyncio.sleep(0.01)
    queued = asyncio.create_task(link.transact(2, Request.read(READ_HOLDING, 0, 4), timeout=1.0))
    await asyncio.sleep(0.01)
    queued.cancel()
    check_reply(1, 0, await first, 4)
    with pytest.raises(asyncio.CancelledError):
        await queued
    values = await link.transact(3, Request.read(READ_HOLDING, 0, 4), timeout=1.0)
    check_reply(3, 0, values, 4)
    assert bus.collisions == 0
    assert len(requests_to(bus, 2)) == 1


@pytest.mark.asyncio
async def test_a_caller_due_before_the_line_is_free_is_woken_as_the_request_goes_out(line) -> None:
    """A device task asleep until its next poll tells the link when that is (``expect``).
    If the request going out now holds the line past that moment, the link wakes it at
    once: it queues and is handed the line when it frees - when it would have had it
    anyway - instead of waking on its own timer mid-transaction and again at the
    hand-over. A sleeper due after the line is free again is left to sleep."""
    _bus, _port, link = line
    client = UnitClient(link, 1)
    await client.read_holding(0, 20, timeout=0.5)  # the unit's latency is known now
    woken: dict[str, float] = {}
    sent = time.monotonic()
    # 19200 Bd: request 4 ms on the wire, 5 ms turnaround, 45-byte reply 23 ms
    link.expect("inside", sent + 0.010, lambda: woken.setdefault("inside", time.monotonic()))
    link.expect("after", sent + 0.5, lambda: woken.setdefault("after", time.monotonic()))
    read = asyncio.ensure_future(client.read_holding(0, 20, timeout=0.5))
    replied: list[float] = []
    read.add_done_callback(lambda _: replied.append(time.monotonic()))
    check_reply(1, 0, await read, 20)
    # woken before it was due, while the transaction was still on the line
    assert "inside" in woken and woken["inside"] < sent + 0.010
    assert woken["inside"] < replied[0] - 0.015
    assert "after" not in woken  # due after the line is free: its own timer wakes it
    link.expect("after", sent + 0.5, lambda: woken.setdefault("again", time.monotonic()))  # replaces
    link.unexpect("after")
    await client.read_holding(0, 20, timeout=0.5)
    assert set(woken) == {"inside"}
