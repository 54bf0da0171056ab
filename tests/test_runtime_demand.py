"""Poll demand: the grid meter a zero-export controller steers on is read fast, only while
the controller is configured to limit, and only that meter."""

from __future__ import annotations

import time

import pytest

from mbclient.registers import DEFAULT_INTERVALS, FAST
from mbclient.runtime.demand import PollDemand
from test_runtime_support import fast_config, running_supervisor, site_on_pty, spec_for, wait_until

GRID = "com.victronenergy.grid.eastron_1"


class Heard:
    def __init__(self) -> None:
        self.values: list[float | None] = []

    def __call__(self, interval: float | None) -> None:
        self.values.append(interval)


def test_a_service_hears_the_shortest_interval_wanted_and_the_end_of_demand() -> None:
    demand = PollDemand()
    heard = Heard()
    demand.attach(GRID, heard)
    assert heard.values == [None]  # attached without demand: told so once
    a, b = object(), object()
    demand.want(a, GRID, 0.2)
    demand.want(b, GRID, 0.1)
    demand.want(b, GRID, 0.1)  # unchanged: no second notice
    assert heard.values == [None, 0.2, 0.1]
    demand.want(b, None)  # the faster one stops: back to the other's
    demand.want(a, "com.victronenergy.grid.other")  # a moves to another meter
    assert heard.values == [None, 0.2, 0.1, 0.2, None]


def test_the_age_of_our_meters_last_read_is_known_and_only_for_ours() -> None:
    """The controller judges a meter of ours by its last successful read: a service that is
    not ours has no such age (judged over D-Bus), one never read is infinitely old, and a
    detached (renamed, removed) service is no longer ours."""
    demand = PollDemand()
    last: list[float | None] = [None]
    detach = demand.attach(GRID, Heard(), lambda: last[0])
    assert demand.read_age("com.victronenergy.grid.other") is None
    assert demand.read_age(None) is None
    assert demand.read_age(GRID) == float("inf")
    last[0] = 100.0
    assert demand.read_age(GRID, now=105.5) == pytest.approx(5.5)
    detach()
    assert demand.read_age(GRID, now=105.5) is None


def test_demand_made_before_a_service_appears_or_after_a_rename_is_heard() -> None:
    demand = PollDemand()
    owner = object()
    demand.want(owner, GRID, 0.1)
    early = Heard()
    detach = demand.attach(GRID, early)
    assert early.values == [0.1]
    detach()
    demand.want(owner, GRID, 0.05)  # nobody attached under the name now
    assert early.values == [0.1]
    renamed = Heard()
    demand.attach(GRID, renamed)  # the same device back under its name
    assert renamed.values == [0.05]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_the_followed_meter_is_polled_fast_only_while_the_controller_limits(dbus_address: str,
                                                                                tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        specs = [spec_for(port.path, 1, "growatt_min"), spec_for(port.path, 2, "sdm230")]
        config = fast_config(dbus_address, tmp_path / "settings.xml", specs, control_poll=0.1)
        async with running_supervisor(config) as sup:
            await wait_until(lambda: all((t := sup.device(s)) is not None and t.published.is_set() for s in specs),
                             what="both devices published")
            inverter, meter = sup.device(specs[0]), sup.device(specs[1])
            await wait_until(lambda: inverter.dyngen is not None and inverter.dyngen.evaluations > 0,
                             what="the controller running")
            normal = DEFAULT_INTERVALS[FAST]
            assert meter.driver.interval(FAST) == normal  # not configured: nobody needs it fast
            assert sup.settings is not None
            await sup.settings.set("/Settings/DynamicGeneration/energyDifference", 700.0)
            await sup.settings.set("/Settings/DynamicGeneration/derateGeneration", 1)
            await wait_until(lambda: meter.driver.interval(FAST) == 0.1, what="fast polling of the meter")
            # at once, not after the longer interval in progress
            fast_due = [sb.next_due for sb in meter.driver.schedule if sb.block.refresh == FAST]
            assert fast_due and min(fast_due) <= time.monotonic() + 0.1 + 0.05
            assert inverter.driver.interval(FAST) == normal  # only the meter it steers on
            await sup.settings.set("/Settings/DynamicGeneration/derateGeneration", 0)  # hands off (G100)
            await wait_until(lambda: meter.driver.interval(FAST) == normal, what="normal polling again")
