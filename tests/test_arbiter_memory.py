"""A silent unit timing out again and again must not grow the arbiter's memory."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from test_arbiter_rtu import BAUD, nonce_unit

from mbclient.errors import ModbusTimeout
from mbclient.modbus.pdu import READ_HOLDING, Request
from mbclient.sim import SimBus, serve_rtu
from mbclient.transports import RtuLink


def transports_bytes() -> int:
    gc.collect()
    only = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*mbclient/transports/*")])
    return sum(stat.size for stat in only.statistics("filename"))


@pytest.mark.asyncio
async def test_timeouts_do_not_grow_memory(tmp_path) -> None:
    bus = SimBus(BAUD, units=[nonce_unit(1), nonce_unit(2)])
    bus[1].asleep = bus[2].asleep = True
    request = Request.read(READ_HOLDING, 0, 4)
    async with serve_rtu(bus, directory=tmp_path) as port:
        # A short late-reply guard keeps the test quick; the bookkeeping is the same.
        link = RtuLink.serial(port.path, BAUD, late_guard_min=0.0)
        tracemalloc.start()
        try:

            async def silent_round(n: int) -> None:
                for _ in range(n):
                    for unit in (1, 2):
                        with pytest.raises(ModbusTimeout):
                            await link.transact(unit, request, timeout=0.004)

            await silent_round(10)  # warm up: per-unit state, buffers, the port
            before = transports_bytes()
            await silent_round(40)
            after = transports_bytes()
        finally:
            tracemalloc.stop()
            await link.aclose()
    assert link.stats(1).timeouts == link.stats(2).timeouts == 50
    assert after - before < 1024, (before, after)
