"""Site physics: sun, house load, battery, the Growatt and the grid meter tied together.

The grid meter reads what a real one would: house load + battery charging - PV output
(W, + = import). The inverter's output follows the sun and its power-rate register with a
first-order lag, so a controller that writes holding 3 sees the effect on the meter
a moment later, as on a real site. Below a sun threshold the inverter goes silent
(a sleeping unit) and wakes at dawn with its volatile settings forgotten.

Two clocks: *real* seconds drive the inverter's response and the task cadence;
*simulated* seconds (real x ``time_scale``) drive the time of day and the energy
counters, so a whole day can run in minutes while control loops still run in real time.
Deterministic for a given seed when stepped with ``step(dt)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .bus import SimBus
from .models import EastronMeter, GrowattMin


@dataclass
class SunCurve:
    """Available AC power from the array through the day (W), with deterministic clouds."""

    peak_w: float = 4600.0
    sunrise: float = 6.0  # hours
    sunset: float = 20.0
    clouds: float = 0.0  # 0..1, depth of random cloud dips

    def clear_sky(self, hour: float) -> float:
        if not self.sunrise < hour < self.sunset:
            return 0.0
        x = (hour - self.sunrise) / (self.sunset - self.sunrise)
        return self.peak_w * math.sin(math.pi * x) ** 1.5


@dataclass
class Battery:
    """A 48 V battery that charges from surplus (and optionally covers deficits).

    ``power`` is + charging, - discharging (W), like Victron's /Dc/0/Power.
    """

    capacity_kwh: float = 10.0
    soc: float = 50.0  # %
    max_charge_w: float = 3000.0
    max_discharge_w: float = 3000.0
    discharge: bool = False
    min_soc: float = 10.0
    power: float = 0.0

    @property
    def voltage(self) -> float:
        # A rough LFP/lead curve: 49 V empty to 54.5 V full at rest, plus a little IR rise.
        return 49.0 + 5.5 * self.soc / 100.0 + self.power / 2000.0

    @property
    def current(self) -> float:
        return self.power / self.voltage

    @property
    def charge_state(self) -> int:
        """VE.Bus state while charging: 3 bulk, 4 absorption, 5 float (Victron codes)."""
        if self.soc < 85.0:
            return 3
        return 4 if self.soc < 99.5 else 5

    def settle(self, surplus_w: float, dt: float) -> None:
        """Charge from ``surplus_w`` (negative: deficit) for ``dt`` simulated seconds."""
        if surplus_w > 0 and self.soc < 100.0:
            self.power = min(surplus_w, self.max_charge_w)
        elif surplus_w < 0 and self.discharge and self.soc > self.min_soc:
            self.power = max(surplus_w, -self.max_discharge_w)
        else:
            self.power = 0.0
        self.soc += self.power * dt / 3.6e6 / self.capacity_kwh * 100.0
        self.soc = max(0.0, min(100.0, self.soc))


class Site:
    """Sun + load + battery + inverter + grid meter, stepped together.

    ``load_steps``: [(hour, W), ...] house load from each hour on (a step profile);
    ``load_w`` set directly overrides the profile until set back to None.
    """

    def __init__(
        self,
        inverter: GrowattMin,
        meter: EastronMeter,
        *,
        sun: SunCurve | None = None,
        battery: Battery | None = None,
        load_steps: Sequence[tuple[float, float]] = ((0.0, 400.0),),
        start_hour: float = 12.0,
        time_scale: float = 1.0,
        sleep_below_w: float = 20.0,
        wake_above_w: float = 40.0,
        wake_delay_s: float = 0.0,
        seed: int = 0,
        live: bool = True,
    ) -> None:
        self.inverter = inverter
        self.meter = meter
        self.sun = sun or SunCurve()
        self.battery = battery
        self.load_steps = sorted(load_steps)
        self.load_w: float | None = None
        self.sun_w: float | None = None  # override of the sun curve (tests)
        self.hour = start_hour % 24.0
        self.time_scale = time_scale
        self.sleep_below_w = sleep_below_w
        self.wake_above_w = wake_above_w
        self.wake_delay_s = wake_delay_s
        self.night = False  # force the inverter to sleep
        self.rng = random.Random(seed)
        self._cloud = 1.0
        self._waking_for = 0.0
        self.sim_seconds = 0.0
        self.grid_w = 0.0
        self.exported_kwh = 0.0
        self.imported_kwh = 0.0
        self.curtailed_kwh = 0.0
        self.sleeps = 0
        self.sleeping = False  # the site's own idea of night (see _sleep_or_wake)
        self.bus: SimBus | None = None  # set by scenario builders, for convenience
        self._last: float | None = None
        if live:
            # Reads see physics up to the moment they are served, not the last tick.
            inverter.on_read = meter.on_read = lambda *_: self.catch_up()
        self._settle(0.0, 0.0)

    # -- inputs ------------------------------------------------------------------------------
    def house_load(self) -> float:
        if self.load_w is not None:
            return self.load_w
        w = self.load_steps[0][1] if self.load_steps else 0.0
        for hour, watts in self.load_steps:
            if hour <= self.hour:
                w = watts
        return w

    def available_sun(self) -> float:
        if self.sun_w is not None:
            return self.sun_w
        return self.sun.clear_sky(self.hour) * self._cloud

    # -- stepping ----------------------------------------------------------------------------
    def step(self, dt: float) -> None:
        """Advance ``dt`` real seconds (``dt * time_scale`` simulated)."""
        if dt <= 0:
            return
        sim_dt = dt * self.time_scale
        self.sim_seconds += sim_dt
        self.hour = (self.hour + sim_dt / 3600.0) % 24.0
        if self.sun.clouds:
            # A slow random walk, the same for a given seed and step sequence.
            self._cloud += (self.rng.uniform(1.0 - self.sun.clouds, 1.0) - self._cloud) * min(1.0, sim_dt / 300.0)
        self._settle(dt, sim_dt)

    def catch_up(self) -> None:
        """Step to now (real clock); used by the background task and before each read."""
        now = time.monotonic()
        if self._last is None:
            self._last = now
            return
        dt = now - self._last
        if dt > 0.002:
            self._last = now
            self.step(dt)

    def settle_now(self) -> float:
        """Apply a changed input (load, sun) to the meter at once, without advancing time;
        returns the grid power (W, + import) it now reads."""
        self.catch_up()
        self._settle(0.0, 0.0)
        return self.grid_w

    def _settle(self, dt: float, sim_dt: float) -> None:
        inv = self.inverter
        sun = self.available_sun()
        self._sleep_or_wake(sun, dt)
        inv.available_w = 0.0 if self.sleeping else sun
        inv.step(dt, energy_dt=sim_dt)
        pv = 0.0 if self.sleeping else inv.output_w
        load = self.house_load()
        if self.battery is not None:
            self.battery.settle(pv - load, sim_dt)
            charge = self.battery.power
        else:
            charge = 0.0
        self.grid_w = load + charge - pv
        phases = self.meter.phases
        self.meter.measure([self.grid_w / phases] * phases)
        self.meter.advance(sim_dt)
        kwh = sim_dt / 3.6e6
        if self.grid_w < 0:
            self.exported_kwh -= self.grid_w * kwh
        else:
            self.imported_kwh += self.grid_w * kwh
        if not self.sleeping:
            self.curtailed_kwh += max(0.0, min(sun, inv.rated_w) - pv) * kwh

    def _sleep_or_wake(self, sun: float, dt: float) -> None:
        """Dusk: the unit goes silent. Dawn: it powers on, waits ``wake_delay_s``, runs.

        Only transitions touch ``inverter.asleep``, so a test may still flip that switch
        by hand in between (a fault, not the sun).
        """
        inv = self.inverter
        if not self.sleeping and (self.night or sun < self.sleep_below_w):
            self.sleeping = True
            inv.asleep = True
            inv.running = False
            inv.output_w = 0.0
            self.sleeps += 1
        elif self.sleeping and not self.night and sun > self.wake_above_w:
            self.sleeping = False
            inv.asleep = False
            inv.restart()  # a power-on: volatile commands forgotten, today's energy reset
            inv.running = self.wake_delay_s <= 0
            self._waking_for = 0.0
        elif not self.sleeping and not inv.running:
            self._waking_for += dt
            if self._waking_for >= self.wake_delay_s:
                inv.running = True

    # -- background task -----------------------------------------------------------------------
    async def run(self, interval: float = 0.1) -> None:
        """Step with the real clock every ``interval`` seconds until cancelled."""
        self._last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            self.catch_up()

    @contextlib.asynccontextmanager
    async def running(self, interval: float = 0.1) -> AsyncIterator[Site]:
        task = asyncio.create_task(self.run(interval), name="sim-site")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
