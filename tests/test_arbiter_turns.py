"""Turn-taking on a shared line: priority lane, round-robin across units, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from mbclient.transports.turns import Turns


async def _serve(turns: Turns, order: list[object], tag: object, unit: int, priority: bool = False,
                 first: bool = False) -> None:
    await turns.acquire(unit, priority, first=first)
    try:
        order.append(tag)
        await asyncio.sleep(0)
    finally:
        turns.release()


@pytest.mark.asyncio
async def test_round_robin_across_units_not_callers() -> None:
    turns = Turns()
    order: list[object] = []
    await turns.acquire(99, False)  # someone holds the line while the queue forms
    tasks = [asyncio.create_task(_serve(turns, order, ("a", i), 1)) for i in range(4)]
    tasks.append(asyncio.create_task(_serve(turns, order, ("b", 0), 2)))
    tasks.append(asyncio.create_task(_serve(turns, order, ("c", 0), 3)))
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*tasks)
    assert order[:3] == [("a", 0), ("b", 0), ("c", 0)]  # unit 1's four callers get one turn per round
    assert order[3:] == [("a", 1), ("a", 2), ("a", 3)]
    assert not turns.busy and turns.waiting() == 0


@pytest.mark.asyncio
async def test_priority_goes_next() -> None:
    turns = Turns()
    order: list[object] = []
    await turns.acquire(1, False)
    normal = [asyncio.create_task(_serve(turns, order, ("n", i), 1 + i % 2)) for i in range(4)]
    await asyncio.sleep(0)
    urgent = asyncio.create_task(_serve(turns, order, "urgent", 1, priority=True))
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*normal, urgent)
    assert order[0] == "urgent"


@pytest.mark.asyncio
async def test_a_priority_write_overtakes_queued_priority_reads() -> None:
    """A controller's limit write waits for the transaction in flight only, even when the
    grid meter's priority reads are already queued (both are control traffic; the write is
    the reaction, the read is merely the next look)."""
    turns = Turns()
    order: list[object] = []
    await turns.acquire(1, False)
    tasks = [asyncio.create_task(_serve(turns, order, "normal", 3))]
    tasks += [asyncio.create_task(_serve(turns, order, ("read", i), 2, priority=True)) for i in range(2)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_serve(turns, order, "write", 1, priority=True, first=True)))
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*tasks)
    assert order == ["write", ("read", 0), ("read", 1), "normal"]


@pytest.mark.asyncio
async def test_a_unit_that_requeues_at_once_still_alternates() -> None:
    """Two units polled flat out get alternating turns, whoever re-queues first."""
    turns = Turns()
    order: list[int] = []

    async def poller(unit: int) -> None:
        for _ in range(5):
            await turns.acquire(unit)
            try:
                order.append(unit)
                await asyncio.sleep(0.001)
            finally:
                turns.release()

    await asyncio.gather(poller(1), poller(1), poller(2))
    twos = [i for i, u in enumerate(order) if u == 2]
    assert all(b - a <= 2 for a, b in zip(twos, twos[1:]))  # never more than one unit-1 turn in between


@pytest.mark.asyncio
async def test_cancelled_waiters_leave_no_trace() -> None:
    turns = Turns()
    await turns.acquire(1)
    waiting = [asyncio.create_task(turns.acquire(2)) for _ in range(3)]
    await asyncio.sleep(0)
    assert turns.waiting() == 3
    for t in waiting:
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert turns.waiting() == 0
    turns.release()
    assert not turns.busy


@pytest.mark.asyncio
async def test_granted_then_cancelled_passes_the_turn_on() -> None:
    turns = Turns()
    await turns.acquire(1)
    first = asyncio.create_task(turns.acquire(2))
    second = asyncio.create_task(turns.acquire(3))
    await asyncio.sleep(0)
    turns.release()  # grants `first` ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1.0)  # the turn went on to the next caller
    turns.release()
    assert not turns.busy and turns.waiting() == 0
