"""Sleep/wake soak: the inverter goes silent and returns, again and again; the service stays.

The real supervisor runs in its own process (``test_harden_support.py serve``: production
logic, test-sized timers) against the seed site on a simulated RTU line; this process
flips the simulated inverter's ``asleep`` switch and watches the bus from another
connection, as systemcalc and VRM do. Per cycle: silence until ``/Connected`` = 0, stay
silent long enough for the probe backoff to reach its cap, then answer again and measure
wake -> ``/Connected`` = 1.

What the runtime room's 20-cycle test (``test_runtime_sleep.py``) does not cover and this
one asserts: no ``NameOwnerChanged`` at all for either service name or for the service's
connection (it never leaves the bus, not even for a moment), the same process and the
same device task throughout (0 restarts), and each wake noticed within the backoff cap
plus one probe's worth of bus time. ``scripts/sleep-soak --cycles 100`` runs the same
code and adds the service's RSS growth.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from test_harden_support import (
    CHILD_TIMERS,
    GROWATT_NAME,
    METER_NAME,
    rss_kb,
    rtu_spec,
    start_service,
    stop_process,
    watching,
)
from test_runtime_support import site_on_pty

#: Wake -> /Connected=1 may take the longest backoff delay (cap, jitter included) plus one
#: probe and one full poll plus the observer's polling; on a loaded 2-core machine that
#: bus-and-scheduling part gets a generous allowance. An uncapped or runaway backoff
#: (the bug this guards against) misses it by far after a long night.
PROBE_ALLOWANCE = 1.5


def wake_bound(cap: float = CHILD_TIMERS["backoff_cap"], jitter: float = CHILD_TIMERS["backoff_jitter"]) -> float:
    return cap * (1.0 + jitter) + PROBE_ALLOWANCE


@dataclass
class Cycle:
    to_disconnected: float  # asleep -> /Connected=0 (s)
    asleep: float  # total silent time (s)
    wake_latency: float  # answering again -> /Connected=1 (s)
    rss_kb: int


@dataclass
class SoakReport:
    cycles: list[Cycle] = field(default_factory=list)
    bus_departures: list[str] = field(default_factory=list)  # NameOwnerChanged of our names/connections
    restarts: int = 0  # device tasks restarted or re-registered, processes that exited
    start_rss_kb: int = 0
    log_errors: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [c.wake_latency for c in self.cycles]

    def over_bound(self, bound: float) -> int:
        return sum(1 for x in self.latencies if x > bound)

    def rss_growth_kb(self, warmup: int) -> int:
        """End minus the RSS after ``warmup`` cycles (first-use allocations excluded)."""
        if not self.cycles:
            return 0
        base = self.cycles[min(warmup, len(self.cycles)) - 1].rss_kb if warmup else self.start_rss_kb
        return self.cycles[-1].rss_kb - base

    def rss_slope_kb(self) -> float:
        """Least-squares RSS trend in KiB per cycle (a leak shows as a steady slope)."""
        ys = [c.rss_kb for c in self.cycles]
        if len(ys) < 2:
            return 0.0
        xs = range(len(ys))
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


async def _wait_value(watch, name: str, path: str, want: int, timeout: float) -> float:  # noqa: ANN001
    """Poll GetValue every 10 ms until ``want``; return when it was seen (monotonic)."""
    with anyio.fail_after(timeout):
        while True:
            try:
                if await watch.get(name, path) == want:
                    return time.monotonic()
            except LookupError:
                pass
            await anyio.sleep(0.01)


async def sleep_soak(dbus_address: str, tmp: Path, cycles: int, *, seed: int = 0,
                     progress: Callable[[int, Cycle], None] | None = None) -> SoakReport:
    """Run ``cycles`` sleep/wake cycles against a service process; see the module doc."""
    rng = random.Random(seed)
    cap = CHILD_TIMERS["backoff_cap"]
    report = SoakReport()
    log = tmp / "service.log"
    async with site_on_pty(tmp) as (site, port), watching(dbus_address) as watch:
        inverter = site.inverter
        specs = [rtu_spec(port.path, 1, "growatt_min"), rtu_spec(port.path, 2, "sdm230")]
        proc = await start_service(dbus_address, tmp / "settings.json", specs, log)
        try:
            await watch.wait_name(GROWATT_NAME, timeout=60)
            await _wait_value(watch, GROWATT_NAME, "/Connected", 1, 30)
            await _wait_value(watch, METER_NAME, "/Connected", 1, 30)
            owners = {n: await watch.owner(n) for n in (GROWATT_NAME, METER_NAME)}
            since = time.monotonic()
            report.start_rss_kb = rss_kb(proc.pid)
            for i in range(cycles):
                inverter.asleep = True
                slept = time.monotonic()
                disconnected = await _wait_value(watch, GROWATT_NAME, "/Connected", 0, 30)
                # long enough for the probe interval to climb to its cap, at a random phase
                await anyio.sleep(rng.uniform(2.0 * cap, 4.0 * cap))
                inverter.asleep = False
                woke = time.monotonic()
                back = await _wait_value(watch, GROWATT_NAME, "/Connected", 1, 30)
                cycle = Cycle(disconnected - slept, woke - slept, back - woke, rss_kb(proc.pid))
                report.cycles.append(cycle)
                if progress is not None:
                    progress(i + 1, cycle)
                if proc.returncode is not None:
                    break
            for name, owner in owners.items():
                report.bus_departures += [f"{name}: {old!r} -> {new!r}" for _, old, new in watch.changes_of(name, since)]
                report.bus_departures += [f"{name}'s connection {owner}: {old!r} -> {new!r}"
                                          for _, old, new in watch.changes_of(owner or "", since)]
                if await watch.owner(name) != owner:
                    report.bus_departures.append(f"{name} owned by {await watch.owner(name)}, not {owner}")
        finally:
            code = await stop_process(proc)
    text = log.read_text(errors="replace")
    report.restarts = text.count("device task failed") + text.count("registering it afresh")
    report.restarts += int(code != 0)  # it must have lived until told to stop, then exit 0
    report.log_errors = [line for line in text.splitlines() if line.startswith(("ERROR", "CRITICAL", "Traceback"))]
    return report


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_sleeping_inverter_never_leaves_the_bus_and_is_back_within_the_cap(
        dbus_address: str, tmp_path: Path) -> None:
    report = await sleep_soak(dbus_address, tmp_path, cycles=4, seed=random.randrange(1 << 30))
    assert len(report.cycles) == 4
    assert report.bus_departures == []  # not one NameOwnerChanged for the services
    assert report.restarts == 0 and report.log_errors == []
    for n, cycle in enumerate(report.cycles):
        # the grace period was honoured: /Connected=0 only after the silence lasted it
        assert cycle.to_disconnected >= CHILD_TIMERS["grace"] * 0.9, (n, cycle)
        assert cycle.wake_latency <= wake_bound(), (n, cycle, wake_bound())


def test_a_backoff_cap_below_one_second_is_a_valid_choice() -> None:
    """``--backoff-cap 0.5`` (a fast soak, an impatient installer) used to crash every
    device task: the 1 s base was left above the cap."""
    from mbclient.cli import build_parser, config_from_args
    from mbclient.runtime.backoff import Backoff

    config = config_from_args(build_parser().parse_args(["--backoff-cap", "0.5"]))
    backoff = Backoff(config.backoff_base, config.backoff_cap, config.backoff_jitter)
    assert max(backoff.next() for _ in range(10)) <= 0.5 * (1 + config.backoff_jitter)
