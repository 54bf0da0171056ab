"""CPU and memory figures of a process (or one thread) for the benchmark scripts.

CPU is read as the kernel accounts it (``/proc/<pid>/stat`` utime + stime, or a thread's
``/proc/self/task/<tid>/stat``), not as wall time: the figures hold on a machine that is
busy with other work, where a timed measurement would not. Linux only, like the product.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

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


def rss_mb(pid: int | None = None) -> float:
    """Resident set size in MB (VmRSS)."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


@dataclass
class Phase:
    """CPU, wall time and transactions accumulated over the intervals of one phase."""

    name: str
    cpu: float = 0.0
    wall: float = 0.0
    transactions: int = 0

    def line(self) -> str:
        if self.wall <= 0:
            return f"CPU {self.name:9s}  (no time in this phase)"
        per_min = self.cpu / self.wall * 60.0
        per_k = self.cpu / self.transactions * 1000.0 if self.transactions else float("nan")
        return (f"CPU {self.name:9s}  {per_min:6.2f} CPU-s/min ({self.cpu / self.wall * 100:5.1f} % of a core), "
                f"{per_k:5.2f} CPU-s per 1000 transactions, {self.transactions / self.wall:6.1f} transactions/s "
                f"over {self.wall:.0f} s")


@dataclass
class CpuMeter:
    """Samples a process's (or thread's) CPU and a transaction counter; each interval
    between two ``sample`` calls is booked to the phase named at the second call."""

    pid: int | None = None
    tid: int | None = None
    phases: dict[str, Phase] = field(default_factory=dict)
    _last: tuple[float, float, int] | None = None

    def sample(self, transactions: int, phase: str | None) -> None:
        now, cpu = time.monotonic(), cpu_seconds(self.pid, self.tid)
        if self._last is not None and phase is not None:
            t0, c0, n0 = self._last
            p = self.phases.setdefault(phase, Phase(phase))
            p.wall += now - t0
            p.cpu += cpu - c0
            p.transactions += transactions - n0
        self._last = (now, cpu, transactions)

    def lines(self) -> list[str]:
        return [p.line() for p in self.phases.values()]
