"""Ready-made simulated installations (tests, the demo and the benchmark scripts).

The seed site: one RS-485 bus at 9600 Bd with a Growatt MIN 4200 TL-X on unit 1 and an
Eastron SDM230 grid meter on unit 2, tied together by a ``Site``.
"""

from __future__ import annotations

from .bus import SimBus
from .models import EastronMeter, GrowattMin, growatt_min, sdm230
from .site import Battery, Site, SunCurve

GROWATT_UNIT = 1
METER_UNIT = 2


def seed_site(
    baud: int = 9600,
    *,
    seed: int = 0,
    sun_w: float | None = 3000.0,
    load_w: float | None = 800.0,
    battery: Battery | None = None,
    time_scale: float = 1.0,
    start_hour: float = 12.0,
    sun: SunCurve | None = None,
    live: bool = True,
) -> Site:
    """A ``SimBus`` with the seed's Growatt (unit 1) and SDM230 (unit 2), and its ``Site``.

    ``sun_w``/``load_w`` pin the sun and the house load (None: follow the sun curve /
    the load profile). The bus is ``site.bus``; nothing runs until ``site.running()`` or
    ``site.step()``; the registers already hold one settled step of physics.
    """
    bus = SimBus(baud)
    inverter: GrowattMin = bus.add(growatt_min(GROWATT_UNIT, seed=seed))  # type: ignore[assignment]
    meter: EastronMeter = bus.add(sdm230(METER_UNIT, seed=seed + 1))  # type: ignore[assignment]
    meter.set_energy(1234.5, 567.8)
    inverter.set_energy(8765.4, 0.0)
    site = Site(
        inverter, meter, sun=sun, battery=battery, seed=seed, time_scale=time_scale,
        start_hour=start_hour, live=live,
    )
    site.sun_w = sun_w
    site.load_w = load_w
    site.step(60.0)  # settle the inverter's first-order response
    site.bus = bus
    return site
