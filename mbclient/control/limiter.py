"""The PV power limiter: one owner of an inverter's active-power limit, two clients.

Victron's ESS (hub4control) writes ``/Ac/PowerLimit`` in watts; mbclient's zero-export
controller (``control/dyngen.py``) calls ``request(watts, "dyngen")``. Both go through this
object so they never fight and so the inverter is written kindly:

* ESS first: while an ESS write is younger than ``ess_timeout`` (60 s, as dbus-fronius),
  its limit applies and ``ess_active`` tells the controller to stand aside. When ESS stops
  renewing the limit, it expires and the output returns to maximum (or to the controller's
  request) - the behaviour Victron's own PV inverter drivers have.
* ESS writes reach the wire at once (the driver's ``wakeup`` is set on acceptance); the
  controller's are rate-limited: a ``deadband`` in percentage points and at most one write
  per ``min_interval`` seconds, none when the target is unchanged.
* Spacing follows the risk. Where the limit register is volatile (``enable(volatile=True)``:
  Growatt holding 2 = 0, a command wears nothing), a controller *reduction while the site
  exports* (``request(..., exporting=True)``) goes out at once: holding it back for the
  interval would export for up to 2 s. Increases stay spaced (an overshoot is export).
  Where commands may persist, every controller write keeps the interval (flash wear).
* Every write is read back (``read_rate``, when the driver gives one). A limit the inverter
  did not take is sent again, ``retry_interval`` later, until it is: an unconfirmed limit
  can leave an inverter wrong for minutes.
* Nothing is written until somebody asks for a limit: a limiter that was never used leaves
  the inverter's register alone (flash care), and a release only writes when a limit is
  in force.
* A limit found in force when this process starts (mbclient restarted while ESS or the
  controller limited the inverter) is kept like a fresh ESS limit until somebody asks for
  another one or ``ess_timeout`` passes: releasing it at once would send the inverter to
  full power on every restart, until ESS renewed its limit.
* If the inverter keeps such commands in non-volatile memory (Growatt holding 2 = 1), the
  driver calls ``disable(reason)``: ``/Ac/PowerLimit`` goes invalid (Victron's "limiting not
  supported"), writes are refused and the reason is published.

Watts are converted to whole percent of ``max_power`` by rounding *down*, clamped to
0..100: a limit is never exceeded (an ESS feed-in limit is a grid-code limit, and zero
export must not hold a steady small export); the cost is curtailing up to 1 % of rated
power more than asked.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..items import ItemStore

log = logging.getLogger(__name__)

ESS = "ess"
DYNGEN = "dyngen"
SOURCES = (ESS, DYNGEN)

P_POWER_LIMIT = "/Ac/PowerLimit"
P_STATUS = "/Internal/PowerLimiter/Status"
P_WRITES_PER_HOUR = "/Internal/PowerLimiter/WritesPerHour"

WriteRate = Callable[[int], Awaitable[None]]
ReadRate = Callable[[], Awaitable[int]]


def percent_of(watts: float, max_power: float) -> int:
    """Whole percent of ``max_power`` for ``watts``, rounded down (the limit is never
    exceeded), clamped to 0..100."""
    if max_power <= 0 or not math.isfinite(watts):
        return 100
    pct = math.floor(watts * 100.0 / max_power + 1e-9)
    return max(0, min(100, pct))


class PowerLimiter:
    """Owns ``/Ac/PowerLimit`` of one inverter. The driver supplies ``write_rate`` (one
    write of the rate in percent through the bus's priority lane) and calls ``service``
    from its ``service_writes``; read-backs arrive through ``sync``/``on_readback``."""

    def __init__(
        self,
        write_rate: WriteRate,
        *,
        wake: Callable[[], Any],
        max_power: float | None = None,
        ess_timeout: float = 60.0,
        min_interval: float = 2.0,
        deadband: float = 1.0,
        name: str = "inverter",
        clock: Callable[[], float] = time.monotonic,
        read_rate: ReadRate | None = None,
        retry_interval: float = 0.5,
    ) -> None:
        self._write_rate = write_rate
        self._read_rate = read_rate
        self.retry_interval = retry_interval
        self._wake = wake
        self.max_power = max_power
        self.ess_timeout = ess_timeout
        self.min_interval = min_interval
        self.deadband = deadband
        self.name = name
        self.clock = clock
        self.enabled: bool | None = None  # None: not yet known (persistence flag unread)
        self.volatile = False  # limits wear nothing (forgotten at restart): reductions unspaced
        self.reason = "waiting for the inverter's settings"
        self.applied_watts: float | None = None  # what the inverter reports it applies
        self.applied_percent: int | None = None
        self._ess: float | None = None  # ESS request (W); None = release
        self._ess_at: float | None = None  # when ESS last wrote
        self._dyngen: float | None = None
        self._held: int | None = None  # percent found in force at start, nobody here asked for it
        self._held_at: float | None = None
        self._fresh = True  # nothing requested or adopted yet in this run
        self._written: int | None = None  # percent in force in the inverter as far as we know
        # the controller's request behind ``_written``, in exact percent: the deadband is
        # judged on requests, as the controller judges it, not on rounded register values
        self._written_exact: float | None = None
        self._last_write = -math.inf
        self._urgent = False  # the pending controller request is a fail-safe: write at once
        self._exporting = False  # the pending controller request was made while the site exported
        self._unconfirmed = False  # the last write is not read back yet
        self._retry_at = -math.inf  # a limit the inverter did not take is sent again from then
        self._writes: deque[float] = deque()
        self.store: ItemStore | None = None

    # -- D-Bus ---------------------------------------------------------------------------------
    def add_items(self, store: ItemStore) -> None:
        """``/Ac/PowerLimit`` (writable, W, 0..MaxPower, any numeric type; a repeated value
        still renews the ESS timer) and the limiter's status paths."""
        self.store = store
        store.add(P_POWER_LIMIT, None, unit="W", precision=0, kind=float, writable=False,
                  min=0.0, max=self.max_power, notify_unchanged=True, on_write=self._on_remote_write,
                  formatter=lambda v: f"{v:.0f} W")
        store.add(P_STATUS, self.reason, kind=str)
        store.add(P_WRITES_PER_HOUR, 0, kind=int)
        self._refresh_items()

    def _refresh_items(self) -> None:
        store = self.store
        if store is None:
            return
        item = store.item(P_POWER_LIMIT)
        usable = bool(self.enabled) and bool(self.max_power)
        item.writable = usable
        item.max = self.max_power
        if not usable:
            store.set(P_POWER_LIMIT, None)
        elif self.applied_watts is not None:
            store.set(P_POWER_LIMIT, self.applied_watts)
        elif store.get(P_POWER_LIMIT) is None:
            store.set(P_POWER_LIMIT, float(self.max_power))
        store.set(P_STATUS, self.reason)
        store.set(P_WRITES_PER_HOUR, self.writes_per_hour)

    def _on_remote_write(self, value: Any) -> bool:
        return self.request(float(value), ESS)

    # -- configuration ---------------------------------------------------------------------------
    def enable(self, *, volatile: bool = False) -> None:
        """Limiting available; ``volatile``: the inverter forgets limits at restart (they
        wear nothing), so a reduction during export need not wait for the interval."""
        self.volatile = volatile
        if self.enabled is not True:
            self.enabled = True
            self.reason = "ready"
            log.info("%s: power limiting available", self.name)
            self._refresh_items()
            self._wake()

    def disable(self, reason: str) -> None:
        """Refuse all limiting (e.g. the inverter would store every command in flash)."""
        if self.enabled is not False or self.reason != reason:
            self.enabled = False
            self.reason = reason
            log.warning("%s: power limiting disabled: %s", self.name, reason)
            self._refresh_items()

    def set_max_power(self, watts: float | None) -> None:
        if watts is not None and watts > 0 and watts != self.max_power:
            self.max_power = float(watts)
            self._refresh_items()

    # -- requests -----------------------------------------------------------------------------------
    def request(self, watts: float | None, source: str, *, urgent: bool = False, exporting: bool = False) -> bool:
        """Ask for a limit in W (None: release to full power). Never blocks; the write
        happens in ``service``. Returns False if limiting is unavailable.

        ``urgent`` (the controller's fail-safe) lets the next write skip the deadband and
        the minimum interval once: a safe limit must not wait up to 2 s behind the last
        ordinary write. It is rare by construction (one per transition into fail-safe).
        ``exporting``: the controller asks while the site exports; a reduction then skips
        the minimum interval where limits are volatile."""
        if source not in SOURCES:
            raise ValueError(f"unknown limit source {source!r}")
        if not self.enabled or not self.max_power:
            return False
        if watts is not None and (not math.isfinite(watts) or watts < 0):
            return False
        self._fresh = False
        self._held = None  # any request supersedes a limit inherited from an earlier run
        if source == ESS:
            self._ess = watts
            self._ess_at = self.clock()
        else:
            self._dyngen = watts
            self._urgent = urgent
            self._exporting = exporting
        self._wake()
        return True

    @property
    def ess_active(self) -> bool:
        """ESS wrote ``/Ac/PowerLimit`` within the last ``ess_timeout`` seconds."""
        return self._ess_at is not None and self.clock() - self._ess_at < self.ess_timeout

    @property
    def ess_remaining(self) -> float | None:
        """Seconds until ESS's last write stops counting (``None``: ESS is not active), so
        a controller standing aside can wait for that moment instead of looking often."""
        if self._ess_at is None:
            return None
        left = self._ess_at + self.ess_timeout - self.clock()
        return left if left > 0 else None

    @property
    def source(self) -> str | None:
        if self.ess_active:
            return ESS
        if self._dyngen is not None:
            return DYNGEN
        if self._held is not None:
            return "held"
        return None

    def target_percent(self) -> int:
        if self.ess_active:
            watts = self._ess
        elif self._held is not None:
            return self._held
        else:
            watts = self._dyngen
        if watts is None or not self.max_power:
            return 100
        return percent_of(watts, self.max_power)

    @property
    def writes_per_hour(self) -> int:
        self._trim(self.clock())
        return len(self._writes)

    def writes_expire_in(self) -> float | None:
        """Seconds until ``writes_per_hour`` drops by itself (the oldest counted write
        leaves the hour); ``None``: no write counted."""
        now = self.clock()
        self._trim(now)
        return None if not self._writes else max(0.0, self._writes[0] + 3600.0 - now)

    def _trim(self, now: float) -> None:
        while self._writes and now - self._writes[0] > 3600.0:
            self._writes.popleft()

    # -- read-backs -----------------------------------------------------------------------------------
    def sync(self, percent: int | None) -> None:
        """The rate register as read back from the inverter (255 / >100 = no limit).
        A difference from what we believe (e.g. the inverter restarted and forgot the
        limit) is corrected on the next ``service``."""
        if percent is None:
            return
        actual = 100 if percent > 100 else int(percent)
        if self._fresh and self._written is None and actual != 100:
            self._fresh = False
            self._held, self._held_at = actual, self.clock()
            log.info("%s: keeping the %d%% limit found in force for up to %.0f s unless asked otherwise",
                     self.name, actual, self.ess_timeout)
        if actual != self._written:
            if self._written is not None:
                log.info("%s: rate register reads %d%%, expected %d%%", self.name, actual, self._written)
            self._written = actual
            self._written_exact = None
            self._wake()

    def on_readback(self, percent: float | None, watts: float | None) -> None:
        """The limit the inverter reports it applies (published as ``/Ac/PowerLimit``)."""
        if watts is None and percent is not None and self.max_power:
            watts = percent * self.max_power / 100.0
        if watts is not None and self.max_power:
            watts = min(float(watts), float(self.max_power))
        self.applied_percent = None if percent is None else int(percent)
        self.applied_watts = watts
        if self.store is not None and self.enabled and self.max_power and watts is not None:
            self.store.set(P_POWER_LIMIT, watts)

    def forget(self) -> None:
        """The inverter went offline: what it holds is unknown until read back."""
        self._written = None
        self._written_exact = None
        self._unconfirmed = False

    # -- the writer ---------------------------------------------------------------------------------
    def deadline(self, now: float) -> float:
        """When ``service`` must run even without a wakeup: ESS expiry or a postponed write.

        Never a time at which ``service`` would decline: a past deadline for a write that
        ``service`` refuses (e.g. a request inside the deadband) would make the device task
        spin. A declined request needs no deadline: the next ``request`` wakes the task."""
        times = []
        if self._ess_at is not None:
            times.append(self._ess_at + self.ess_timeout)
        if self._held_at is not None and self._held is not None:
            times.append(self._held_at + self.ess_timeout)
        if self._unconfirmed and self.enabled:
            times.append(now)  # read the last write back
        due = self._next_write(now)
        if due is not None:
            times.append(due[0])
        return min(times, default=math.inf)

    def _next_write(self, now: float) -> tuple[float, int, float | None] | None:
        """(when, percent, exact request in percent) of the next write, or None when nothing
        is to be written. The one place that decides, for ``service`` and ``deadline`` alike."""
        if not self.enabled or not self.max_power:
            return None
        want = self.target_percent()
        old = self._written
        if old == want or (old is None and want == 100):
            return None
        exact = None
        earliest = max(now, self._retry_at)
        if self.source == DYNGEN and self._dyngen is not None:
            exact = max(0.0, min(100.0, self._dyngen * 100.0 / self.max_power))
            if not self._urgent:
                # Judged on the exact requests: rounding could turn a move of 1.6 points into
                # one of 1 register point and swallow the write the controller asked for.
                ref = self._written_exact if self._written_exact is not None else old
                if old is not None and abs(exact - ref) <= self.deadband and want != 100:
                    return None
                if self.volatile and self._exporting and old is not None and want < old:
                    return earliest, want, exact  # less export at once; wears nothing
                return max(earliest, self._last_write + self.min_interval), want, exact
        return earliest, want, exact

    async def service(self, now: float | None = None) -> bool:
        """Write the rate register if the target changed. Returns True if it wrote.
        Raises ModbusError if the write failed (the request stays and is retried)."""
        now = self.clock() if now is None else now
        self._trim(now)
        if self._ess_at is not None and now - self._ess_at >= self.ess_timeout:
            log.info("%s: no /Ac/PowerLimit for %.0f s, returning to %s", self.name, self.ess_timeout,
                     "maximum" if self._dyngen is None else "the controller's limit")
            self._ess_at = None
            self._ess = None
        if self._held is not None and self._held_at is not None and now - self._held_at >= self.ess_timeout:
            log.info("%s: nobody renewed the %d%% limit found at start within %.0f s, returning to %s", self.name,
                     self._held, self.ess_timeout, "maximum" if self._dyngen is None else "the controller's limit")
            self._held = None
        if self._unconfirmed and self.enabled:
            await self._read_back()
            now = self.clock()
        source = self.source or "release"
        old = self._written
        due = self._next_write(now)
        if due is None or due[0] > now:
            self._refresh_counters()
            return False  # nothing to write, or ``deadline`` says when to come back
        _, want, exact = due
        fast = source == DYNGEN and not self._urgent and self.volatile and self._exporting
        await self._write_rate(want)
        self._urgent = False
        self._written = want
        self._written_exact = exact
        self._unconfirmed = self._read_rate is not None
        # The interval runs from the end of this write, not from ``now`` (taken before the
        # wait for the bus): consecutive writes are then >= min_interval apart on the wire.
        self._last_write = self.clock()
        self._writes.append(self._last_write)
        if self.store is not None:
            # Published as applied once the write is acknowledged (as dbus-fronius does);
            # the inverter's own read-back (``on_readback``) refines it when it changes.
            self.store.set(P_POWER_LIMIT, want * self.max_power / 100.0)
        log.info("%s: power limit %s -> %d%% (%.0f W of %.0f W, %s%s)", self.name,
                 "unknown" if old is None else f"{old}%", want, want * self.max_power / 100.0,
                 self.max_power, source, ", exporting" if fast else "")
        self._refresh_counters()
        if self._unconfirmed:
            await self._read_back()
        return True

    async def _read_back(self) -> None:
        """Read the rate register after a write. A value other than the one written (the
        inverter ignored or clamped the command) is what is in force; the wanted limit is
        sent again ``retry_interval`` later. Raises ModbusError (then read again next time)."""
        assert self._read_rate is not None
        raw = await self._read_rate()
        self._unconfirmed = False
        actual = 100 if raw > 100 else int(raw)
        if actual != self._written:
            log.warning("%s: the inverter holds %d%% after a write of %s; sending it again", self.name,
                        actual, "?" if self._written is None else f"{self._written}%")
            self._written = actual
            self._written_exact = None
            self._retry_at = self.clock() + self.retry_interval
            self._wake()

    def _refresh_counters(self) -> None:
        if self.store is not None:
            self.store.set(P_WRITES_PER_HOUR, self.writes_per_hour)
