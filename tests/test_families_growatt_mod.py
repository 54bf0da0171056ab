"""Growatt MOD TL3-X (three phases) through the Growatt family file: told from the MIN by
holding 44's phase count, per-phase values equal to the simulated inverter's, and the
single-phase MIN unchanged beside it."""

from __future__ import annotations

import time

import pytest

from mbclient.devices import DeviceOptions, identify
from mbclient.items import ItemStore
from mbclient.sim import growatt_min, serve_tcp
from mbclient.sim.bus import SimBus
from mbclient.sim.models import growatt_mod
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool
from mbclient.transports.base import UnitClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def test_mod_publishes_three_phases_and_min_one() -> None:
    mod, mini = growatt_mod(1), growatt_min(2)
    mod.available_w, mini.available_w = 6000.0, 3000.0
    for u in (mod, mini):
        u.step(100.0)
        u.publish()
    async with serve_tcp(SimBus(units=[mod, mini]), turnaround=False) as server:
        pool = LinkPool()
        try:
            stores = {}
            for unit in (1, 2):
                client = UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{server.port}:{unit}")), unit)
                model = await identify(client, timeout=0.5)
                assert model.name == ("growatt_mod" if unit == 1 else "growatt_min")
                store = ItemStore()
                driver = model.create(client, store, DeviceOptions())
                identity = await driver.read_identity()
                driver.add_items()
                await driver.poll(time.monotonic())
                stores[unit] = (store, identity)
            s, ident = stores[1]
            assert s.get("/NrOfPhases") == 3
            assert s.get("/Ac/Power") == pytest.approx(mod.output_w, abs=0.1)
            for n, v in enumerate(mod.phase_voltages, 1):
                assert s.get(f"/Ac/L{n}/Voltage") == pytest.approx(v)
                assert s.get(f"/Ac/L{n}/Power") == pytest.approx(mod.output_w / 3, abs=0.1)
                assert s.get(f"/Ac/L{n}/Current") == pytest.approx(round(mod.output_w / 3 / v, 1), abs=0.05)
            assert s.get("/Ac/MaxPower") == 10000.0
            m, mident = stores[2]
            assert m.get("/NrOfPhases") == 1
            assert m.get("/Ac/L1/Power") == m.get("/Ac/Power") == pytest.approx(mini.output_w, abs=0.1)
            assert "/Ac/L2/Voltage" not in m
        finally:
            await pool.aclose()


async def test_sph_and_its_grid_meter_named_in_the_spec() -> None:
    from mbclient.devices import get_model
    from mbclient.sim.models import GrowattSph

    sph = GrowattSph(1)
    sph.available_w = 4000.0
    sph.step(100.0)
    sph.publish()
    async with serve_tcp(SimBus(units=[sph]), turnaround=False) as server:
        pool = LinkPool()
        try:
            client = UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{server.port}:1")), 1)
            inv_store, meter_store = ItemStore(), ItemStore()
            inv = get_model("growatt_sph").create(client, inv_store, DeviceOptions())
            meter = get_model("growatt_sph_meter").create(client, meter_store, DeviceOptions(index=2))
            ident, mident = await inv.read_identity(), await meter.read_identity()
            assert ident.serial == mident.serial == "SPH1234567"
            assert inv.model.ident(ident.serial) != meter.model.ident(mident.serial)
            for d in (inv, meter):
                d.add_items()
                await d.poll(time.monotonic())
            s, m = inv_store, meter_store
            assert s.get("/Ac/Power") == pytest.approx(sph.output_w, abs=0.1)
            assert s.get("/Internal/Battery/Soc") == 64
            assert s.get("/Internal/Battery/ChargePower") == pytest.approx(250.0)
            assert s.get("/Internal/SystemMode") == 5
            grid = sph.house_w - sph.output_w  # exporting: negative
            assert grid < 0
            assert m.get("/Ac/Power") == pytest.approx(grid, abs=0.1)
            assert m.get("/Ac/Energy/Forward") == pytest.approx(432.1)
            assert m.get("/Ac/Energy/Reverse") == pytest.approx(876.5)
        finally:
            await pool.aclose()
