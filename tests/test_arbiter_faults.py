"""Faulty replies on a real pseudo-terminal: late, corrupt, noisy, exceptions.

None of them may ever be decoded into values or taken as the answer to another request,
and each is counted in the unit's statistics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from test_arbiter_rtu import BAUD, check_reply, nonce_unit

from mbclient.errors import FrameError, ModbusExceptionResponse, ModbusTimeout
from mbclient.modbus.pdu import READ_HOLDING, Request
from mbclient.sim import SimBus, serve_rtu
from mbclient.transports import RtuLink


@pytest_asyncio.fixture
async def line(tmp_path) -> AsyncIterator[tuple[SimBus, RtuLink]]:
    bus = SimBus(BAUD, units=[nonce_unit(1), nonce_unit(2), nonce_unit(3)])
    async with serve_rtu(bus, directory=tmp_path) as port:
        link = RtuLink.serial(port.path, BAUD)
        try:
            yield bus, link
        finally:
            await link.aclose()

@pytest.mark.asyncio
async def test_late_reply_is_never_taken_for_the_next_request(line) -> None:
    bus, link = line
    slow, other = bus[1], bus[2]
    request = Request.read(READ_HOLDING, 0, 4)

    slow.late_by = 0.2  # answers ~0.2 s after the 0.1 s timeout
    with pytest.raises(ModbusTimeout):
        await link.transact(1, request, timeout=0.1)
    stale = slow.holding[0]  # the nonce the late reply carries
    slow.late_by = None

    # Another unit at once: slow to answer, so the late frame lands inside its wait.
    other.turnaround = 0.3
    values = await link.transact(2, request, timeout=1.0)
    check_reply(2, 0, values, 4)
    # The same unit, the very same request: it must get a fresh answer.
    values = await link.transact(1, request, timeout=1.0)
    assert check_reply(1, 0, values, 4) != stale
    assert values[0] == slow.holding[0]
    assert slow.counters.late == 1
    assert link.stats(1).timeouts == 1
    assert link.stats(1).transactions == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("fault", ["bad_crc", "truncate", "wrong_unit"])
async def test_corrupt_replies_are_never_decoded_and_are_counted(line, fault: str) -> None:
    bus, link = line
    unit = bus[1]
    setattr(unit, fault, 1.0)
    for _ in range(2):
        with pytest.raises(FrameError):
            await link.transact(1, Request.read(READ_HOLDING, 0, 4), timeout=0.15)
    stats = link.stats(1)
    assert stats.frame_errors == 2
    assert stats.transactions == 0 and stats.timeouts == 0
    assert getattr(unit.counters, "truncated" if fault == "truncate" else fault) == 2
    unit.clear_faults()
    values = await link.transact(1, Request.read(READ_HOLDING, 0, 4), timeout=1.0)
    check_reply(1, 0, values, 4)


@pytest.mark.asyncio
async def test_noise_around_a_reply_is_dropped_and_counted(line) -> None:
    bus, link = line
    unit = bus[1]
    unit.noise = 1.0
    for _ in range(6):
        values = await link.transact(1, Request.read(READ_HOLDING, 10, 3), timeout=1.0)
        check_reply(1, 10, values, 3)  # never a noise byte among the values
    stats = link.stats(1)
    assert unit.counters.noise == 6
    assert stats.transactions == 6 and stats.frame_errors == 6


@pytest.mark.asyncio
async def test_exception_reply(line) -> None:
    bus, link = line
    bus[2].exception = 6
    with pytest.raises(ModbusExceptionResponse) as info:
        await link.transact(2, Request.read(READ_HOLDING, 0, 2), timeout=1.0)
    assert info.value.code == 6
    stats = link.stats(2)
    assert stats.exceptions == 1 and stats.transactions == 1 and stats.latency is not None
