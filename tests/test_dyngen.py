"""The zero-export controller in a closed loop of real parts.

A simulated Growatt on a simulated RS-485 line (pty), driven by the Growatt driver and its
power limiter; a grid meter service on a private dbus-daemon whose reading is the site's
physics (house load - PV output); the controller in between. What a site owner relies on:
export is limited inside the energy band, the safe limit reaches the inverter within 1 s
when the grid meter can no longer be trusted, and ESS and the controller never fight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from test_dyngen_support import Publisher, wait_until

from mbclient.control import ladder as L
from mbclient.control.dyngen import FAIL_SAFE, POWER, POWER_MAX, SETTINGS, STATUS, DynamicGeneration
from mbclient.dbus.settings import Setting as DbusSetting
from mbclient.dbus.settings import SettingsClient
from mbclient.devices import DeviceOptions, get_model
from mbclient.items import ACCEPTED, ItemStore
from mbclient.modbus.pdu import WRITE_SINGLE
from mbclient.sim import GROWATT_UNIT, Site, seed_site, serve_rtu
from mbclient.transports.base import UnitClient
from mbclient.transports.rtu import RtuLink

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

BAUD = 9600  # the seed's line
STALE = 1.5  # s; short so the tests stay quick
# The limiter's minimum write interval, scaled down with STALE (default 2 s with 5 s): the
# controller stops steering from a quiet meter early enough that the interval has passed
# when the silence becomes a fault.
MIN_INTERVAL = 0.5
SAFE_W = 420.0  # 10 % of the MIN 4200's rating
GRID = "com.victronenergy.grid.sim_meter"
P_ENERGY = SETTINGS + "energyDifference"
P_DERATE = SETTINGS + "derateGeneration"


def rate_writes(site: Site) -> list[tuple[float, int]]:
    return [(t, values[0]) for t, fc, addr, values in site.inverter.write_log if fc == WRITE_SINGLE and addr == 3]


@dataclass
class Rig:
    site: Site
    store: ItemStore
    driver: object
    meter: Publisher
    dyngen: DynamicGeneration


async def device_loop(driver) -> None:  # noqa: ANN001
    """The inverter's device task as the runtime runs it: writes when woken, polls when due."""
    while True:
        now = time.monotonic()
        await driver.service_writes(now)
        if driver.due(now):
            await driver.poll(now)
            driver.store.flush()
        delay = max(0.0, min(driver.next_deadline(time.monotonic()), now + 0.5) - time.monotonic())
        if not driver.wakeup.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(driver.wakeup.wait(), delay)


async def meter_loop(site: Site, meter: Publisher) -> None:
    """The grid meter service: publishes the site's reading whenever it changes (10 Hz)."""
    while True:
        site.catch_up()
        net = sum(site.meter.import_kwh) - sum(site.meter.export_kwh)
        meter.update({"/Ac/Power": round(site.grid_w, 1), "/Ac/Energy/Consumption": round(net, 2)})
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def closed_loop(address: str, tmp_path, settings=None, **options) -> AsyncIterator[Rig]:  # noqa: ANN001
    site = seed_site(BAUD)  # sun 3000 W, house 800 W: exporting 2200 W
    # the meter's counters: 1234.5 kWh imported, 567.8 kWh exported, net import 666.7 kWh
    meter = await Publisher.start(address, GRID, {
        "/DeviceInstance": 40, "/Connected": 1, "/ProductName": "SDM230",
        "/Ac/Power": site.grid_w, "/Ac/Energy/Consumption": 666.7,
    })
    assert site.bus is not None
    async with serve_rtu(site.bus, directory=tmp_path) as port:
        link = RtuLink.serial(port.path, BAUD)
        store = ItemStore()
        driver = get_model("growatt_min").create(UnitClient(link, GROWATT_UNIT), store, DeviceOptions(limit_min_interval=MIN_INTERVAL))
        await driver.read_identity()
        driver.add_items()
        await driver.poll(time.monotonic())
        store.flush()
        opts = {"energyDifference": 700.0, "derateGeneration": 1, "staleTimeout": STALE, "safeLimit": SAFE_W}
        opts.update(options)
        dyngen = DynamicGeneration(store, driver.limiter, settings, bus_address=address, options=opts)
        tasks = [asyncio.create_task(c) for c in (device_loop(driver), meter_loop(site, meter), dyngen.run())]
        try:
            yield Rig(site, store, driver, meter, dyngen)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await link.aclose()
            with contextlib.suppress(Exception):
                await meter.close()


async def settle_limiting(rig: Rig) -> None:
    """Wait until the controller limits and the export is gone (house 800 W of 3000 W sun)."""
    await wait_until(lambda: rig.store[STATUS] == L.LIMITING, timeout=10)
    # settled: no write for a second (a limit still on its way is not a settled one)
    await wait_until(lambda: rate_writes(rig.site) and -150 < rig.site.grid_w < 150
                     and time.monotonic() - rate_writes(rig.site)[-1][0] > 1.0, timeout=15)
    assert rig.store[FAIL_SAFE] == 0


async def safe_limit_written_after(rig: Rig, t0: float) -> float:
    """Seconds from ``t0`` to the safe limit (10 %) appearing on the wire."""
    await wait_until(lambda: any(t > t0 and pct == 10 for t, pct in rate_writes(rig.site)), timeout=STALE + 3)
    return next(t for t, pct in rate_writes(rig.site) if t > t0 and pct == 10) - t0


async def test_limits_export_and_fails_safe_whenever_the_meter_cannot_be_trusted(dbus_address, tmp_path):
    async with closed_loop(dbus_address, tmp_path) as rig:
        await settle_limiting(rig)
        pct = rate_writes(rig.site)[-1][1]
        assert 17 <= pct <= 20  # 800 W less the 30 W import margin, of 4200 W, rounded down
        # W demanded (L = G + P) is the house. G (10 Hz, D-Bus) and P (the inverter's own poll)
        # are read at different moments, so on a loaded machine one sample may still mix an
        # old P with a new G; the published demand settles on the house
        await wait_until(lambda: rig.store[POWER] is not None and abs(rig.store[POWER] - 800.0) <= 60.0, timeout=5)
        # W applied: follows the inverter's read-back, so it may trail the last write by a poll
        def applied_matches_last_write() -> bool:
            applied = rig.store[POWER_MAX]
            return applied is not None and abs(applied - rate_writes(rig.site)[-1][1] * 42.0) <= 1.0

        await wait_until(applied_matches_last_write, timeout=5)
        assert rig.store[FAIL_SAFE] == 0
        assert "grid: com.victronenergy.grid.sim_meter ok" in rig.store["/dynamicGenerationInputs"]

        # our own meters publish /Connected = 0 when their unit stops answering
        t0 = time.monotonic()
        rig.meter.update({"/Connected": 0})
        assert await safe_limit_written_after(rig, t0) <= 1.0
        assert (rig.store[STATUS], rig.store[FAIL_SAFE]) == (L.FAIL_SAFE, 1)
        rig.meter.update({"/Connected": 1})
        await settle_limiting(rig)  # control resumes (from the safe limit, smoothly)

        # a hung meter: neither signals nor answers. Stale after STALE s of silence,
        # and the safe limit on the wire within 1 s of that, even while tracking
        rig.site.load_w = 2000.0
        t0 = time.monotonic()
        rig.meter.freeze()
        assert await safe_limit_written_after(rig, t0) <= STALE + 1.0
        assert "silent" in rig.store["/dynamicGenerationInputs"]
        rig.meter.thaw()
        rig.site.load_w = 800.0
        await settle_limiting(rig)

        # the meter's service vanishes: no waiting for the stale timeout
        t0 = time.monotonic()
        await rig.meter.close()
        assert await safe_limit_written_after(rig, t0) <= 1.0
        assert rig.store[STATUS] == L.FAIL_SAFE
        assert "gone" in rig.store["/dynamicGenerationInputs"]


async def test_ess_drives_the_limit_and_the_controller_stands_aside(dbus_address, tmp_path):
    async with closed_loop(dbus_address, tmp_path) as rig:
        await wait_until(lambda: rig.store[STATUS] == L.LIMITING and rate_writes(rig.site), timeout=10)
        n = len(rate_writes(rig.site))
        assert rig.store.write("/Ac/PowerLimit", 2100.0) == ACCEPTED  # hub4control
        await wait_until(lambda: rig.store[STATUS] == L.ESS_CONTROLS, timeout=3)
        await wait_until(lambda: rate_writes(rig.site)[-1][1] == 50, timeout=3)
        rig.site.load_w = 300.0  # the controller would now want about 7 %
        await asyncio.sleep(1.0)
        after = [pct for _, pct in rate_writes(rig.site)[n:]]
        assert after[after.index(50):] == [50]  # nobody fights ESS (one in-flight write may precede)
        assert rig.store[STATUS] == L.ESS_CONTROLS


async def test_settings_on_dbus_switch_the_controller(dbus_address, tmp_path):
    settings = await SettingsClient.connect(dbus_address, wait=0.2, embedded_path=tmp_path / "settings.xml")
    try:
        await settings.add([DbusSetting(P_ENERGY, 0.0), DbusSetting(P_DERATE, 0)])
        assert await settings.set(P_ENERGY, 0.0) == 0 and await settings.set(P_DERATE, 0) == 0
        async with closed_loop(dbus_address, tmp_path, settings) as rig:
            await wait_until(lambda: rig.dyngen.evaluations > 0, timeout=5)
            assert rig.store[STATUS] == L.NOT_CONFIGURED
            # every new setting is declared, with the seed's values as defaults
            assert await settings.get(SETTINGS + "batterySocThreshold") == 90.0
            assert await settings.get(SETTINGS + "batteryChargePowerCeiling") == 3200.0
            assert await settings.get(SETTINGS + "staleTimeout") == STALE  # from the options
            assert await settings.set(P_ENERGY, 700.0) == 0
            await wait_until(lambda: rig.store[STATUS] == L.G100, timeout=3)
            await asyncio.sleep(0.5)
            assert rate_writes(rig.site) == []  # neither touches the inverter
            assert await settings.set(P_DERATE, 1) == 0
            await wait_until(lambda: rig.store[STATUS] == L.LIMITING and rate_writes(rig.site), timeout=3)
            # a configured grid service that does not exist: not trusted
            assert await settings.set(SETTINGS + "gridService", "com.victronenergy.grid.nothere") == 0
            await wait_until(lambda: rig.store[STATUS] == L.FAIL_SAFE, timeout=3)
            assert await settings.set(SETTINGS + "gridService", "") == 0
            await wait_until(lambda: rig.store[STATUS] == L.LIMITING, timeout=3)
    finally:
        await settings.set(P_ENERGY, 0.0)
        await settings.set(SETTINGS + "gridService", "")
        await settings.close()
