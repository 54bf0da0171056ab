"""CPU and memory figures of a process (or one thread) for the benchmark scripts.

Not part of mbclient: imported by the scripts next to it.

CPU is read as the kernel accounts it (``/proc/<pid>/stat`` utime + stime, or a thread's
``/proc/self/task/<tid>/stat``), not as wall time: the figures hold on a machine that is
busy with other work, where a timed measurement would not. Linux only, like the product.

Wakeups are the event loop thread's voluntary context switches (``voluntary_ctxt_switches``
in ``/proc/<pid>/status``, the process's main thread, or ``/proc/self/task/<tid>/status``):
each is one sleep in ``epoll_wait`` (or another blocking call) ended by a reply, a timer or
a message. A count does not drift with the machine's load as CPU seconds do, and most of
mbclient's CPU is the cost of these wakeups (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None = None, tid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (default: this one) or of thread ``tid``
    of this process."""
    path = f"/proc/self/task/{tid}/stat" if tid is not None else f"/proc/{pid or 'self'}/stat"
    with open(path, "rb") as f:
        stat = f.read()
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def wakeups(pid: int | None = None, tid: int | None = None) -> int:
    """Voluntary context switches of process ``pid``'s main thread (default: this process)
    or of thread ``tid`` of this process: the times it slept and was woken."""
    path = f"/proc/self/task/{tid}/status" if tid is not None else f"/proc/{pid or 'self'}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int | None = None) -> float:
    """Resident set size in MB (VmRSS)."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


@dataclass
class Phase:
    """CPU, wall time, wakeups and transactions accumulated over the intervals of one phase."""

    name: str
    cpu: float = 0.0
    wall: float = 0.0
    transactions: int = 0
    wakeups: int | None = None  # voluntary context switches (None: not counted)

    def line(self) -> str:
        if self.wall <= 0:
            return f"CPU {self.name:9s}  (no time in this phase)"
        per_min = self.cpu / self.wall * 60.0
        per_k = self.cpu / self.transactions * 1000.0 if self.transactions else float("nan")
        text = (f"CPU {self.name:9s}  {per_min:6.2f} CPU-s/min ({self.cpu / self.wall * 100:5.1f} % of a core), "
                f"{per_k:5.2f} CPU-s per 1000 transactions, {self.transactions / self.wall:6.1f} transactions/s "
                f"over {self.wall:.0f} s")
        if self.wakeups is not None:
            per_txn = self.wakeups / self.transactions if self.transactions else float("nan")
            text += f"; {self.wakeups / self.wall:5.1f} wakeups/s, {per_txn:4.2f} per transaction"
        return text


@dataclass
class CpuMeter:
    """Samples a process's (or thread's) CPU, its wakeups and a transaction counter; each
    interval between two ``sample`` calls is booked to the phase named at the second call."""

    pid: int | None = None
    tid: int | None = None
    phases: dict[str, Phase] = field(default_factory=dict)
    _last: tuple[float, float, int, int] | None = None

    def sample(self, transactions: int, phase: str | None) -> None:
        now, cpu, woken = time.monotonic(), cpu_seconds(self.pid, self.tid), wakeups(self.pid, self.tid)
        if self._last is not None and phase is not None:
            t0, c0, n0, w0 = self._last
            p = self.phases.setdefault(phase, Phase(phase, wakeups=0))
            p.wall += now - t0
            p.cpu += cpu - c0
            p.transactions += transactions - n0
            p.wakeups = (p.wakeups or 0) + woken - w0
        self._last = (now, cpu, transactions, woken)

    def lines(self) -> list[str]:
        return [p.line() for p in self.phases.values()]


class RuntimeThread:
    """Runs a coroutine (mbclient's runtime) on an event loop of its own, in a thread of its
    own, so that a script that also simulates the devices in its main thread can read
    mbclient's CPU apart (``cpu_seconds``, the thread's kernel-accounted CPU time).

    ``await runtime.run()`` lasts as long as the coroutine (its error is raised here;
    cancelling it stops the coroutine); ``await runtime.call(coro)`` runs another
    coroutine on the runtime's loop (anything that touches the runtime's D-Bus
    connections or tasks must); plain attribute reads are fine from the main thread.
    """

    def __init__(self, coro_factory: Callable[[], Coroutine[Any, Any, Any]], name: str = "mbclient") -> None:
        self._factory = coro_factory
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tid: int | None = None
        self._started = threading.Event()
        self._task: asyncio.Task[Any] | None = None

    async def run(self) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        caller = asyncio.get_running_loop()

        def report(exc: BaseException | None) -> None:
            if not done.done():
                if exc is None:
                    done.set_result(None)
                else:
                    done.set_exception(exc)

        def thread() -> None:
            async def main() -> None:
                self.loop = asyncio.get_running_loop()
                self.tid = threading.get_native_id()
                self._task = asyncio.current_task()
                self._started.set()
                await self._factory()

            error: BaseException | None = None
            try:
                asyncio.run(main())
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                error = exc
            finally:
                self._started.set()
                caller.call_soon_threadsafe(report, error)

        worker = threading.Thread(target=thread, name=self.name, daemon=True)
        worker.start()
        try:
            await asyncio.shield(done)
        finally:
            if self.loop is not None and self._task is not None and not done.done():
                self.loop.call_soon_threadsafe(self._task.cancel)
            await asyncio.to_thread(worker.join, 10)

    async def started(self) -> None:
        await asyncio.to_thread(self._started.wait)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        await self.started()
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def cpu_seconds(self) -> float:
        assert self.tid is not None, "not started"
        return cpu_seconds(tid=self.tid)
