"""A device task sleeps on a real deadline whenever nothing is to be done: never a busy loop.

The state that used to spin: the zero-export controller's exact request lies within the
deadband of the last written one while its rounded register value differs (31.03 % asked
after 30.04 % was written as 30 %). The limiter declines that write; its deadline must not
then name a time already past, or the device task wakes at once, forever, taking a core."""

from __future__ import annotations

import time

import anyio
import pytest

from test_runtime_support import fast_config, running_supervisor, site_on_pty, spec_for, wait_until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

WINDOW = 3.0  # seconds counted, all of them after the limiter's minimum interval has passed


async def test_a_deferred_limit_write_does_not_spin_the_device_task(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        spec = spec_for(port.path, 1, "growatt_min")
        config = fast_config(dbus_address, tmp_path / "settings.xml", [spec])
        async with running_supervisor(config) as sup:
            await wait_until(lambda: sup.device(spec) is not None and sup.device(spec).published.is_set(),
                             timeout=15, what="inverter published")
            task = sup.device(spec)
            limiter = task.driver.limiter
            await wait_until(lambda: bool(limiter.enabled and limiter.max_power), what="limiter ready")
            rated = limiter.max_power

            # the controller's request, written as 30 % (rounded down) through the real bus
            assert limiter.request(rated * 0.3004, "dyngen")
            await wait_until(lambda: site.inverter.rate == 30, what="30 % written to holding 3")
            # 0.99 points more: inside the 1-point deadband although it rounds to 31 %
            assert limiter.request(rated * 0.3103, "dyngen")

            cycles = 0
            original_wait = task._wait

            async def counted_wait(until: float) -> None:
                nonlocal cycles
                cycles += 1
                await original_wait(until)

            task._wait = counted_wait  # one poll-loop cycle = one call of _wait
            await anyio.sleep(limiter.min_interval + 0.2)  # past the interval: where it spun
            stats = task.link.stats(spec.unit)
            cycles, before = 0, stats.transactions + stats.timeouts + stats.frame_errors
            started = time.monotonic()
            await anyio.sleep(WINDOW)
            elapsed = time.monotonic() - started
            transactions = stats.transactions + stats.timeouts + stats.frame_errors - before

            assert site.inverter.rate == 30  # the deferred write stays declined
            assert transactions > 0  # the device is being polled all along
            # Every cycle either polls (at least one transaction) or ends in a sleep until
            # a deadline or a wakeup: the idle tick (1 s) and a few wakeups are all the
            # cycles without a transaction. A spin makes thousands per second.
            assert cycles <= transactions + 2 * elapsed / config.idle_tick + 10, (
                f"{cycles} poll-loop cycles for {transactions} transactions in {elapsed:.1f} s")
