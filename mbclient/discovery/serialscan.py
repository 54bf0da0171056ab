"""Scanning an RS-485 port for Modbus units, through the line's own arbiter.

The scan borrows the port's link from the ``LinkPool``: if devices already run on the
port, its requests queue with theirs on the same arbiter (one frame on the wire at a
time, the inter-frame silence, late-reply hygiene), so a scan never collides with a
running device and a running device keeps its turns while a scan goes on. The line's
speed cannot change under running devices: then only their rate is scanned.

* **Quick scan**: the default units of every model that speaks the port's framing, at the
  candidate rates (the ``-r`` rates, else every model's factory rates, 9600 first), and
  it stops at the first rate where anything answered.
* **Full scan** (``-f``, or on request): units 1..247 at the rate where something
  answered - or at every candidate rate when nothing did.

Units already configured on the port are never asked (they run). Only read function
codes reach the wire (``probe.ScanClient``). A port that vanishes mid-scan ends the scan
with ``LinkDown``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import anyio

from .. import devices
from ..spec import DeviceSpec
from .probe import Found, probe_unit

if TYPE_CHECKING:
    from ..transports import LinkPool

log = logging.getLogger("mbclient.discovery")

UNIT_MIN, UNIT_MAX = 1, 247
QUICK_TIMEOUT = 0.1  # the stock client's serial scan timeout
FULL_TIMEOUT = 0.1  # 247 probes: the stock client's serial scan timeout
COMMON_RATE = 9600  # tried first: the factory rate of most meters and inverters


def candidate_rates(mode: str, rates: Iterable[int] | None = None) -> list[int]:
    """The rates to try: the given ones in order, else the models' rates (9600 first,
    then fastest first; 9600 is always among them)."""
    if rates:
        return list(dict.fromkeys(rates))
    found = {COMMON_RATE}
    for model in devices.all_models():
        if mode in model.transports:
            found.update(model.rates)
    return sorted(found, key=lambda r: (r != COMMON_RATE, -r))


def quick_units(mode: str) -> list[int]:
    """Default units of the models that speak ``mode``, lowest first (1..247: unit 0 is the
    broadcast address on a serial line, nobody answers it)."""
    units: set[int] = set()
    for model in devices.all_models():
        if mode in model.transports:
            units.update(u for u in model.default_units if UNIT_MIN <= u <= UNIT_MAX)
    return sorted(units) or [1]


class SerialScan:
    """One scan of one port. ``await run()`` returns every ``Found``; ``stop()`` ends it early.

    ``links`` is the runtime's ``LinkPool``; ``skip_units`` the units configured on the
    port; ``on_found`` / ``on_progress(done, total)`` report as the scan goes.
    """

    def __init__(
        self,
        links: LinkPool,
        port: str,
        *,
        mode: str = "rtu",
        rates: Iterable[int] | None = None,
        full: bool = False,
        skip_units: Iterable[int] = (),
        quick_timeout: float = QUICK_TIMEOUT,
        full_timeout: float = FULL_TIMEOUT,
        on_found: Callable[[Found], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.links = links
        self.port = port  # tty name or path, as in a spec
        self.mode = mode
        self.full = full
        self.skip_units = set(skip_units)
        self.quick_timeout = quick_timeout
        self.full_timeout = full_timeout
        self.on_found = on_found
        self.on_progress = on_progress
        probe = DeviceSpec(mode, port, COMMON_RATE, 1)
        in_use = links.serial_rate(probe.device_path)
        self.rates = [in_use] if in_use else candidate_rates(mode, rates)
        if in_use and rates and in_use not in rates:
            log.info("%s runs at %d Bd: scanning at that rate only", port, in_use)
        self.units = [u for u in quick_units(mode) if u not in self.skip_units]
        self.found: list[Found] = []
        self.rate: int | None = None  # where something answered
        self.done = 0
        self.total = len(self.rates) * len(self.units) + (self._full_count() * len(self.rates) if full else 0)
        self._scope: anyio.CancelScope | None = None
        self.stopped = False

    def _full_count(self) -> int:
        return sum(1 for u in range(UNIT_MIN, UNIT_MAX + 1) if u not in self.skip_units and u not in self.units)

    def stop(self) -> None:
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> list[Found]:
        """Raises ``LinkDown`` when the port cannot be opened or vanishes."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self.stopped:
                scope.cancel()
            await self._run()
        self._scope = None
        return self.found

    async def _run(self) -> None:
        for n, rate in enumerate(self.rates):
            log.info("scanning %s at %d Bd (quick: units %s)", self.port, rate, ",".join(map(str, self.units)))
            await self._scan(rate, self.units, self.quick_timeout)
            if self.found:
                self.rate = rate
                skipped = len(self.rates) - n - 1
                self.total -= skipped * len(self.units)  # the other rates are not tried
                break
        if not self.full:
            self._report(force=True)
            return
        rates = [self.rate] if self.rate else self.rates
        self.total = self.done + self._full_count() * len(rates)
        done_units = {f.spec.unit for f in self.found}
        for rate in rates:
            units = [u for u in range(UNIT_MIN, UNIT_MAX + 1)
                     if u not in self.skip_units and u not in self.units and u not in done_units]
            log.info("scanning %s at %d Bd (full: units %d..%d)", self.port, rate, UNIT_MIN, UNIT_MAX)
            await self._scan(rate, units, self.full_timeout)
        self._report(force=True)

    async def _scan(self, rate: int, units: list[int], timeout: float) -> None:
        spec0 = DeviceSpec(self.mode, self.port, rate, units[0] if units else 1)
        if not units:
            return
        async with self.links.borrow(spec0) as link:
            for unit in units:
                spec = DeviceSpec(self.mode, self.port, rate, unit)
                found = await probe_unit(link, spec, timeout=timeout)
                self.done += 1
                for one in (found, *found.more) if found is not None else ():
                    self.found.append(one)
                    if self.on_found is not None:
                        self.on_found(one)
                self._report()

    def _report(self, force: bool = False) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done, max(self.total, self.done))
