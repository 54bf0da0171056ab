"""The SunSpec chain walk against arbitrary register contents after the marker (property
test on the simulated unit over real loopback TCP)."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbclient.devices import sunspec
from mbclient.errors import ModbusError
from mbclient.sim import serve_tcp
from mbclient.sim.sunspec import SunSpecUnit
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool
from mbclient.transports.base import UnitClient


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.lists(st.tuples(st.sampled_from([1, 101, 103, 111, 120, 123, 160, 203, 213, 701, 704, 0, 0xFFFF,
                                                    7, 64000]),
                                  st.integers(min_value=0, max_value=0xFFFF)), max_size=12),
       junk=st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=64, max_size=64))
def test_any_chain_is_walked_to_an_end_without_surprises(headers, junk) -> None:  # noqa: ANN001
    """Whatever follows the marker - lengths past the address space, unknown models,
    garbage - the walk ends, and only inverter/meter models become devices."""
    u = SunSpecUnit(9, [], end_marker=False)
    at = 40002
    for mid, length in headers:
        if at + 2 > 0x10000:
            break
        u.holding[at], u.holding[at + 1] = mid, length
        for i, value in enumerate(junk[: min(length, 64)]):
            u.holding.setdefault(at + 2 + i, value)
        at += 2 + length

    async def run() -> list:
        async with serve_tcp([u], turnaround=False) as server:
            pool = LinkPool()
            try:
                client = UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{server.port}:9")), 9)
                return await sunspec.discover(client, 0.5)
            except ModbusError:
                return []
            finally:
                await pool.aclose()

    found = asyncio.run(run())
    assert all(d.main.id in sunspec.INVERTER_IDS | sunspec.METER_IDS for d in found)
    assert [d.index for d in found] == list(range(1, len(found) + 1))
