#!/usr/bin/env python3
"""Why does a process wake? Runs a module (``-m mbclient ...``) with its event loop counted.

Not part of mbclient: a development aid used by ``scripts/bench-cpu --census``.

    python scripts/wakeup_census.py REPORT -m mbclient --dbus ... -F ...

Every return of the selector after a *blocking* wait (longer than 0.3 ms: the process
slept in ``epoll_wait``) is one wakeup. It is booked to what woke it: the file descriptor's
reader callback (a serial reply, a D-Bus message) or, when no descriptor was ready, the
first timer callback the loop then ran (``asyncio.sleep``, a timeout, a deadline); and,
on a second line marked ``->``, to the first task step that ran after it (which coroutine
was waiting where). Counting starts at the first ``SIGUSR1``; each further one ends a
section of the report and starts the next, as does the exit. A section is named by what
``REPORT.phase`` holds when it starts; the report is appended to ``REPORT``. The counting itself costs a little CPU per loop turn, so CPU figures of a
census run are not comparable with plain ones.
"""

from __future__ import annotations

import asyncio
import asyncio.events
import atexit
import collections
import runpy
import selectors
import signal
import sys
import time
from pathlib import Path

BLOCKING = 0.0003  # a select() that returned sooner did not sleep


def _where(callback: object) -> str:
    """A readable name for a callback: a task's coroutine and where it waits, or a function."""
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        inner = coro
        while getattr(inner, "cr_await", None) is not None and hasattr(inner.cr_await, "cr_frame"):
            inner = inner.cr_await
        frame = getattr(inner, "cr_frame", None)
        where = f"{frame.f_code.co_qualname}:{frame.f_lineno}" if frame else "?"
        return f"task {getattr(coro, '__qualname__', '?')} @ {where}"
    func = getattr(callback, "func", None)  # functools.partial
    if func is not None:
        bound = getattr(func, "__self__", None)
        return f"{type(bound).__name__ if bound is not None else ''}.{getattr(func, '__qualname__', func)}"
    func = getattr(callback, "__func__", callback)
    return getattr(func, "__qualname__", repr(func))


class Census:
    def __init__(self, report: Path) -> None:
        self.report = report
        self.counts: collections.Counter[str] = collections.Counter()
        self.started: float | None = None
        self.name = "?"
        self.blocking = 0
        self.turns = 0
        self._woken = False  # the selector returned after sleeping; its cause not booked yet
        self._want_task = False

    def install(self) -> None:
        census = self
        select = selectors.EpollSelector.select

        def counted_select(selector: selectors.EpollSelector, timeout: float | None = None) -> list:
            t0 = time.monotonic()
            ready = select(selector, timeout)
            if census.started is None:
                return ready
            census.turns += 1
            if time.monotonic() - t0 > BLOCKING:
                census.blocking += 1
                census._want_task = True
                census._woken = not ready
                if ready:
                    names = set()
                    for key, _events in ready:
                        reader = key.data[0] if isinstance(key.data, tuple) else key.data
                        callback = getattr(reader, "_callback", None)
                        names.add("fd " + (_where(callback) if callback is not None else "?"))
                    census.counts[" + ".join(sorted(names))] += 1
            return ready

        run = asyncio.events.Handle._run

        def counted_run(handle: asyncio.events.Handle) -> None:
            if census._woken:
                census._woken = False
                census.counts["timer " + _where(handle._callback)] += 1
            if census._want_task and isinstance(getattr(handle._callback, "__self__", None), asyncio.Task):
                census._want_task = False
                census.counts["  -> " + _where(handle._callback)] += 1
            run(handle)

        selectors.EpollSelector.select = counted_select  # type: ignore[method-assign]
        asyncio.events.Handle._run = counted_run  # type: ignore[method-assign]
        signal.signal(signal.SIGUSR1, lambda *_: self.section())
        atexit.register(self.section)

    def section(self) -> None:
        """End the section counted so far (if any) and start the next one."""
        now = time.monotonic()
        if self.started is not None:
            elapsed = max(now - self.started, 1e-9)
            with open(self.report, "a") as out:
                out.write(f"[{self.name}] {elapsed:.1f} s: {self.blocking / elapsed:.2f} wakeups/s "
                          f"({self.blocking} of {self.turns} loop turns slept)\n")
                for what, n in self.counts.most_common():
                    out.write(f"  {n / elapsed:7.2f}/s {n:7d}  {what}\n")
        self.counts.clear()
        self.blocking = self.turns = 0
        self.started = now
        phase = self.report.with_suffix(".phase")
        self.name = phase.read_text().strip() if phase.exists() else "?"


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        raise SystemExit("usage: wakeup_census.py REPORT -m MODULE [ARGS...]")
    Census(Path(sys.argv[1])).install()
    module = sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
