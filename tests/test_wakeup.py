"""``driver.wakeup``: the device task sleeps on it until a deadline or a pending write;
a poll in flight learns of an accepted write through its hook."""

from __future__ import annotations

import asyncio
import time

import pytest

from mbclient.devices.base import Wakeup

pytestmark = pytest.mark.asyncio


async def test_wait_until_returns_at_the_deadline_when_nothing_is_set() -> None:
    wakeup = Wakeup()
    started = time.monotonic()
    assert await wakeup.wait_until(started + 0.05) is False
    assert time.monotonic() - started >= 0.045
    assert await wakeup.wait_until(started) is False  # a past deadline does not block


async def test_set_wakes_the_waiter_at_once_and_stays_set_until_cleared() -> None:
    wakeup = Wakeup()
    waiter = asyncio.ensure_future(wakeup.wait_until(time.monotonic() + 10.0))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    wakeup.set()
    assert await asyncio.wait_for(waiter, 1.0) is True
    assert await wakeup.wait() is True  # already set: no wait
    wakeup.clear()
    assert not wakeup.is_set()


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    wakeup = Wakeup()
    waiter = asyncio.ensure_future(wakeup.wait_until(time.monotonic() + 10.0))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert wakeup._waiters == []  # noqa: SLF001 - no future kept per abandoned wait
    wakeup.set()  # nobody to wake: no error


async def test_the_hook_hears_each_transition_to_set_once() -> None:
    wakeup = Wakeup()
    heard: list[int] = []
    wakeup.on_set = lambda: heard.append(1)
    wakeup.set()
    wakeup.set()  # already set: the pending write is already known
    wakeup.clear()
    wakeup.set()
    assert heard == [1, 1]
