"""Process watchdogs: a stalled event loop, and a resident-memory ceiling.

Both exist because mbclient runs unattended under runit on a GX device: the best answer to
"something is badly wrong" is a loud log and an exit, after which runit restarts us.

* Loop stall: every device shares one event loop, so a blocking call anywhere (a stuck
  syscall, a runaway computation) silently freezes every device and its D-Bus service.
  A stalled loop cannot watch itself, hence the one thread in mbclient: it looks at the
  loop's thread now and then and, when that has not been back in its selector for too
  long, dumps every asyncio task's stack and every thread's stack (faulthandler) and
  exits non-zero. An idle loop is not woken for this (see ``LoopStallWatchdog``).
* RSS ceiling: the fork replaced here leaked memory while a device slept. mbclient is
  designed not to, but the ceiling turns any future leak into a clean restart instead of
  an OOM kill of some other process, and the periodic growth line makes a leak visible.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import anyio

from .config import MB

log = logging.getLogger("mbclient.watchdog")

EXIT_STALL = 3  # the loop stalled: runit restarts us
EXIT_RSS = 4  # the RSS ceiling was exceeded (clean shutdown first)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss() -> int:
    """Resident set size of this process in bytes, from /proc/self/statm (no psutil).

    Returns 0 where /proc is unavailable, which disables the ceiling rather than failing.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def dump_stacks(loop: asyncio.AbstractEventLoop | None, out: TextIO) -> None:
    """Write every asyncio task's stack, then every thread's stack, to ``out``.

    Called from the watchdog thread while the loop is (presumably) frozen, so reading the
    loop's task set is safe enough; any race is caught: a partial dump beats none.
    """
    if loop is not None:
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # the set changed under us: the loop is not quite frozen
            tasks = []
        print(f"--- {len(tasks)} asyncio tasks ---", file=out)
        for task in tasks:
            try:
                print(f"task {task.get_name()}: {task.get_coro()!r}", file=out)
                task.print_stack(file=out)
            except Exception as exc:  # noqa: BLE001 - a dump must never raise
                print(f"  (stack unavailable: {exc})", file=out)
    print("--- threads ---", file=out)
    out.flush()
    try:
        faulthandler.dump_traceback(file=out, all_threads=True)
    except (ValueError, OSError):  # ``out`` has no file descriptor (tests with StringIO)
        pass
    out.flush()


def _die_of_stall(stalled_for: float, loop: asyncio.AbstractEventLoop | None) -> None:
    msg = f"event loop stalled for {stalled_for:.1f} s: dumping stacks and exiting"
    log.critical(msg)
    dump_stacks(loop, sys.stderr)
    os._exit(EXIT_STALL)


class LoopStallWatchdog:
    """Exit (via ``on_stall``) when the event loop has not run for ``timeout`` seconds.

    The monitor thread looks at the loop's thread every ``period`` (``timeout / 10``, at
    most 1 s). Found waiting in its selector, the loop is idle, not stalled: the time is
    stamped without touching the loop. Found elsewhere (running callbacks), and not
    stamped for a period, the loop is asked to stamp the time itself
    (``call_soon_threadsafe``): a busy loop does so within its turn, a stalled one never.
    So a quiet process is not woken once a second for a heartbeat; a loop that is stuck
    in one callback is still found within ``timeout`` + ``period``.

    ``run()`` starts the monitor thread and stops it when it ends, so the watchdog lives
    exactly as long as its task.
    """

    def __init__(
        self,
        timeout: float,
        on_stall: Callable[[float, asyncio.AbstractEventLoop | None], None] = _die_of_stall,
    ) -> None:
        if timeout <= 0:
            raise ValueError("stall timeout must be positive")
        self.timeout = timeout
        self.on_stall = on_stall
        self._beat = time.monotonic()
        self._asked = False  # a stamp is scheduled on the loop and has not run yet
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    @property
    def period(self) -> float:
        return min(1.0, self.timeout / 10)

    def _stamp(self) -> None:
        self._beat = time.monotonic()
        self._asked = False

    def _idle(self) -> bool:
        """The loop's thread waits in its selector (the innermost Python frame is a
        selector's ``select``: the system call below it is not a frame)."""
        frame = sys._current_frames().get(self._loop_thread) if self._loop_thread is not None else None
        return frame is not None and frame.f_code.co_name == "select" and frame.f_code.co_filename == _SELECTORS

    def _monitor(self) -> None:
        while not self._stop.wait(self.period):
            now = time.monotonic()
            if self._idle():
                self._beat = now
                continue
            stalled = now - self._beat
            if stalled >= self.timeout:
                self.on_stall(stalled, self._loop)
                return
            if stalled >= self.period and not self._asked and self._loop is not None:
                self._asked = True
                try:
                    self._loop.call_soon_threadsafe(self._stamp)
                except RuntimeError:  # the loop is closed: nothing left to watch
                    return

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stamp()
        self._stop.clear()
        thread = threading.Thread(target=self._monitor, name="mbclient-stall-watchdog", daemon=True)
        thread.start()
        try:
            await anyio.sleep_forever()
        finally:
            self._stop.set()


_SELECTORS = selectors.__file__


class RssCeilingExceeded(Exception):
    """Raised by ``RssWatchdog.run`` so the supervisor shuts down cleanly and exits."""


class RssWatchdog:
    """Watch the resident set size: log its growth rate, stop the process above a ceiling."""

    def __init__(
        self,
        max_rss: int,
        check_interval: float = 10.0,
        log_interval: float = 3600.0,
        read: Callable[[], int] = read_rss,
    ) -> None:
        self.max_rss = max_rss
        self.check_interval = check_interval
        self.log_interval = log_interval
        self.read = read
        self.start_rss = 0
        self.peak_rss = 0

    def growth_text(self, rss: int, elapsed: float) -> str:
        rate = (rss - self.start_rss) / max(elapsed, 1e-9) * 3600 / 1024
        return (
            f"rss {rss / MB:.1f} MB (start {self.start_rss / MB:.1f} MB, peak {self.peak_rss / MB:.1f} MB, "
            f"growth {rate:+.0f} kB/h)"
        )

    async def run(self) -> None:
        t0 = time.monotonic()
        self.start_rss = self.peak_rss = self.read()
        if not self.start_rss:
            log.warning("RSS not readable here (/proc/self/statm): memory watchdog off")
            return
        log.info("rss %.1f MB at start, ceiling %.0f MB", self.start_rss / MB, self.max_rss / MB)
        last_log = t0
        while True:
            rss = self.read()
            self.peak_rss = max(self.peak_rss, rss)
            now = time.monotonic()
            if self.max_rss and rss > self.max_rss:
                log.error("%s exceeds the ceiling of %.0f MB: exiting", self.growth_text(rss, now - t0),
                          self.max_rss / MB)
                raise RssCeilingExceeded(f"rss {rss / MB:.1f} MB > {self.max_rss / MB:.0f} MB")
            if now - last_log >= self.log_interval:
                last_log = now
                log.info("%s", self.growth_text(rss, now - t0))
            await anyio.sleep(self.check_interval)
