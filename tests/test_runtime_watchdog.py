"""Backoff arithmetic and the process watchdogs (loop stall, RSS ceiling), for real:
the stall test blocks a real event loop in a child process, the RSS test really grows
this process's resident set."""

from __future__ import annotations

import pathlib
import random
import subprocess
import sys
import textwrap
import time

import anyio
import pytest

from mbclient.runtime.backoff import Backoff
from mbclient.runtime.watchdog import EXIT_STALL, LoopStallWatchdog, RssCeilingExceeded, RssWatchdog, read_rss

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(base=1.0, cap=60.0, jitter=0.0)
    assert [b.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next() == 1


def test_backoff_jitter_stays_within_bounds_and_spreads() -> None:
    b = Backoff(base=1.0, cap=60.0, jitter=0.1, rng=random.Random(7))
    delays = []
    for _ in range(200):
        b.reset()
        delays.append(b.next())
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert len({round(d, 3) for d in delays}) > 50  # two sleeping devices do not probe in lockstep
    for _ in range(100):  # a whole night of failures: never beyond the cap (+jitter), no overflow
        d = b.next()
    assert 54.0 <= d <= 66.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(base=0)
    with pytest.raises(ValueError):
        Backoff(base=2, cap=1)


def test_read_rss_reads_this_process() -> None:
    rss = read_rss()
    assert 5 * 1024 * 1024 < rss < 2 * 1024 * 1024 * 1024


@pytest.mark.anyio
async def test_rss_ceiling_stops_the_watchdog_task() -> None:
    start = read_rss()
    dog = RssWatchdog(max_rss=start + 8 * 1024 * 1024, check_interval=0.05, log_interval=0.1)
    ballast = []
    with pytest.raises(BaseExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dog.run)
            await anyio.sleep(0.2)  # under the ceiling: nothing happens
            ballast.append(b"\x01" * (24 * 1024 * 1024))  # really resident
            await anyio.sleep(5)
    assert info.group_contains(RssCeilingExceeded)
    assert dog.peak_rss > start + 8 * 1024 * 1024
    del ballast


@pytest.mark.anyio
async def test_stall_watchdog_quiet_while_the_loop_runs() -> None:
    stalls: list[float] = []
    dog = LoopStallWatchdog(0.5, on_stall=lambda s, loop: stalls.append(s))
    with anyio.move_on_after(1.5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(dog.run)
            for _ in range(30):
                await anyio.sleep(0.05)
    assert stalls == []


def _wakeups_of_this_thread() -> int:
    """Voluntary context switches of the calling thread: the times it slept and was woken."""
    import threading

    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches:"))


@pytest.mark.anyio
async def test_stall_watchdog_does_not_wake_an_idle_loop() -> None:
    """A quiet process is not woken for a heartbeat: the old one stamped the time every
    tenth of the timeout (here 30 wakeups in 1.5 s)."""
    stalls: list[float] = []
    dog = LoopStallWatchdog(0.5, on_stall=lambda s, loop: stalls.append(s))
    async with anyio.create_task_group() as tg:
        tg.start_soon(dog.run)
        await anyio.sleep(0.2)  # the watchdog's thread runs
        before = _wakeups_of_this_thread()
        await anyio.sleep(1.5)  # one wakeup: this sleep's end
        woken = _wakeups_of_this_thread() - before
        tg.cancel_scope.cancel()
    assert stalls == []
    assert woken <= 4, f"the idle loop was woken {woken} times in 1.5 s"


@pytest.mark.anyio
async def test_stall_watchdog_quiet_while_the_loop_is_busy_without_pause() -> None:
    """A loop that never waits in its selector (one short callback after another) is
    busy, not stalled."""
    stalls: list[float] = []
    dog = LoopStallWatchdog(0.5, on_stall=lambda s, loop: stalls.append(s))
    async with anyio.create_task_group() as tg:
        tg.start_soon(dog.run)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            time.sleep(0.01)  # a callback's work
            await anyio.sleep(0)  # back to the loop, which has always something ready
        tg.cancel_scope.cancel()
    assert stalls == []


def test_stall_watchdog_dumps_stacks_and_exits_nonzero() -> None:
    child = textwrap.dedent("""
        import time, anyio
        from mbclient.runtime.watchdog import LoopStallWatchdog

        def blocking_call_in_device_code():
            time.sleep(20)

        async def busy_device():
            await anyio.sleep(0.3)
            blocking_call_in_device_code()

        async def main():
            async with anyio.create_task_group() as tg:
                tg.start_soon(LoopStallWatchdog(0.6).run)
                tg.start_soon(busy_device)

        anyio.run(main)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == EXIT_STALL, proc.stderr
    assert time.monotonic() - t0 < 15  # it did not wait for the 20 s sleep to end
    assert "stalled" in proc.stderr
    assert "busy_device" in proc.stderr  # the asyncio task stacks
    assert "blocking_call_in_device_code" in proc.stderr  # the thread stacks (faulthandler)
