"""Poll deadlines fall on slots shared by every device: the process wakes once for all the
devices due at the same time, and a block keeps its refresh rate without drift.

Each wakeup of the process costs more CPU than the work done in it (on a GX's ARM core
too), so two devices polled every 0.25 s must not wake it at two unrelated instants, and
a block's next read is due one interval after its previous *due time*, not one interval
after the (always somewhat late) moment the read began."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import pytest

from mbclient.devices.base import next_slot
from mbclient.registers import FAST
from mbclient.runtime.supervisor import Supervisor
from mbclient.spec import DeviceSpec
from test_runtime_support import fast_config, running_supervisor, site_on_pty, spec_for, wait_until

pytestmark = pytest.mark.timeout(60)

WINDOW = 2.5  # seconds watched: ten FAST slots of 0.25 s


def test_a_slot_is_the_next_multiple_of_the_interval_strictly_after() -> None:
    assert next_slot(10.01, 0.25) == 10.25
    assert next_slot(10.25, 0.25) == 10.5  # never the instant itself: no second read in a slot
    for k in (1, 3, 7, 10, 123456):  # float multiples of 0.1 that print inexactly
        t = k * 0.1
        assert next_slot(t, 0.1) > t
        assert next_slot(t, 0.1) - t <= 0.1 + 1e-9
    assert next_slot(5.0, 0.0) == 5.0  # no interval: due again now, as before


@pytest.mark.asyncio
async def test_two_devices_with_the_same_interval_wake_in_the_same_loop_turn(dbus_address: str,
                                                                             tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        specs = [spec_for(port.path, 1, "growatt_min"), spec_for(port.path, 2, "sdm230")]
        config = fast_config(dbus_address, tmp_path / "settings.xml", specs)
        async with running_supervisor(config) as sup:
            await wait_until(lambda: all((t := sup.device(s)) is not None and t.published.is_set() for s in specs),
                             timeout=15, what="both devices published")
            tasks = [sup.device(s) for s in specs]
            assert {t.driver.interval(FAST) for t in tasks} == {0.25}

            # Number the loop's turns: every return from the selector starts a new one.
            loop = asyncio.get_running_loop()
            selector = loop._selector  # noqa: SLF001 - the test counts the loop's wakeups
            turn = 0
            original_select = selector.select

            def counted_select(timeout: float | None = None):  # noqa: ANN202
                nonlocal turn
                turn += 1
                return original_select(timeout)

            woken: list[Counter[int]] = [Counter(), Counter()]  # per device: turn -> deadline wakeups

            def watch(index: int) -> None:
                task = tasks[index]
                original_wait = task._wait

                async def counted_wait(until: float) -> None:
                    await original_wait(until)
                    if not task.driver.wakeup.is_set():  # woken by its deadline, not a write
                        woken[index][turn] += 1

                task._wait = counted_wait

            selector.select = counted_select
            try:
                watch(0)
                watch(1)
                await anyio.sleep(WINDOW)
            finally:
                selector.select = original_select

            shared = set(woken[0]) & set(woken[1])
            slots = WINDOW / 0.25
            # Both devices are polled on every FAST slot; on (nearly) every one of them their
            # deadline timers fire in the same turn of the loop: one wakeup, not two.
            assert len(woken[0]) >= slots - 2 and len(woken[1]) >= slots - 2, woken
            assert len(shared) >= slots - 3, (
                f"{len(shared)} of {len(woken[0])}/{len(woken[1])} deadline wakeups shared a loop turn")


@contextlib.asynccontextmanager
async def meter_published(dbus_address: str, tmp_path) -> AsyncIterator[tuple[Supervisor, DeviceSpec]]:
    """The runtime with one SDM230 on a simulated line, once its service is on the bus."""
    async with site_on_pty(tmp_path) as (_site, port):
        spec = spec_for(port.path, 2, "sdm230")
        config = fast_config(dbus_address, tmp_path / "settings.xml", [spec])
        async with running_supervisor(config) as sup:
            await wait_until(lambda: (t := sup.device(spec)) is not None and t.published.is_set(),
                             timeout=15, what="meter published")
            yield sup, spec


@pytest.mark.asyncio
async def test_a_blocks_refresh_keeps_its_rate_without_drift(dbus_address: str, tmp_path) -> None:
    async with meter_published(dbus_address, tmp_path) as (sup, spec):
        driver = sup.device(spec).driver
        interval = driver.interval(FAST)
        fast = [sb for sb in driver.schedule if sb.block.refresh == FAST]
        assert fast
        dues: list[float] = []
        started_refreshes = driver.fast_refreshes
        with anyio.move_on_after(WINDOW):
            while True:
                due = fast[0].next_due
                if not dues or due != dues[-1]:
                    dues.append(due)
                await anyio.sleep(0.01)
        refreshes = driver.fast_refreshes - started_refreshes

        steps = [(b - a) / interval for a, b in zip(dues, dues[1:])]
        assert len(steps) >= WINDOW / interval - 3
        # Each next due time is a whole number of intervals after the previous one (a
        # late read does not push the schedule later), and a slot is skipped only when
        # a read fell a whole interval behind - on this quiet line, hardly ever.
        assert all(abs(s - round(s)) < 1e-6 and round(s) >= 1 for s in steps), steps
        assert sum(round(s) for s in steps) <= len(steps) + 2, steps
        # the rate: one read per slot elapsed
        elapsed_slots = math.floor((dues[-1] - dues[0]) / interval + 0.5)
        assert refreshes >= elapsed_slots - 1


@pytest.mark.asyncio
async def test_a_device_woken_by_its_link_before_its_slot_polls_for_that_slot(dbus_address: str,
                                                                              tmp_path) -> None:
    """While it sleeps, a device task tells its link when its next poll is due. The link
    wakes it earlier when the line is taken until then anyway (another unit's request
    going out): it then reads the block due at that slot at once - it queues for its turn
    - and its schedule goes on from that slot, neither skipping it nor reading twice."""
    async with meter_published(dbus_address, tmp_path) as (sup, spec):
        task = sup.device(spec)
        link, driver = task.link, task.driver
        interval = driver.interval(FAST)
        fast = next(sb for sb in driver.schedule if sb.block.refresh == FAST)
        stats = link.stats(spec.unit)

        def asleep_long_enough() -> bool:  # a whole slot ahead, well before its timer
            expected = link._expected.get(task)  # noqa: SLF001
            return expected is not None and expected[0] - time.monotonic() > 0.6 * interval

        await wait_until(asleep_long_enough, what="the device asleep until its next slot")
        when = link._expected[task][0]  # noqa: SLF001
        assert when == driver.poll_deadline() == fast.next_due
        blocks = sum(1 for sb in driver.schedule if not sb.disabled and sb.next_due <= when)
        before = stats.transactions
        link._wake_expected(when)  # noqa: SLF001 - as a request going out would
        await wait_until(lambda: stats.transactions >= before + blocks, timeout=0.5 * interval,
                         what="the poll of the slot, before the slot")
        assert time.monotonic() < when  # read ahead of its timer, not at it
        assert fast.next_due == pytest.approx(when + interval, abs=1e-6)  # the next slot
        await anyio.sleep(when - time.monotonic() + 0.02)
        # not read again when its timer would have fired
        assert stats.transactions == before + blocks
