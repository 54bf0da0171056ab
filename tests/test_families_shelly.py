"""Shelly Pro 3EM over Modbus TCP, against a simulator written from Shelly's register list
(3xxxx numbers, float32 low word first, texts with swapped bytes)."""

from __future__ import annotations

import time

import pytest

from mbclient.devices import DeviceOptions, identify
from mbclient.items import ItemStore
from mbclient.sim import growatt_min, sdm630, serve_tcp
from mbclient.sim.bus import SimBus
from mbclient.sim.plain_meters import MeterTruth, shelly_pro3em
from mbclient.sim.sunspec import fronius_like
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool
from mbclient.transports.base import UnitClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def test_pro3em_is_identified_and_publishes_the_simulated_truth() -> None:
    t = MeterTruth()
    bus = SimBus(units=[shelly_pro3em(1, t), fronius_like(2), growatt_min(3), sdm630(4)])
    async with serve_tcp(bus, turnaround=False) as server:
        pool = LinkPool()
        try:
            def client(unit: int) -> UnitClient:
                return UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{server.port}:{unit}")), unit)
            model = await identify(client(1), timeout=0.5)
            assert model.name == "shelly_pro3em"
            for other in (2, 3, 4):  # nobody else is taken for a Shelly
                assert (await identify(client(other), timeout=0.5)).name != "shelly_pro3em"
            store = ItemStore()
            driver = model.create(client(1), store, DeviceOptions())
            identity = await driver.read_identity()
            assert identity.serial == "ECC9FF1A2B3C"
            assert identity.extra["model_code"].startswith("SPEM-003")
            driver.add_items()
            await driver.poll(time.monotonic())
            assert store.get("/Ac/Power") == pytest.approx(t.total_w)
            for n in range(3):
                assert store.get(f"/Ac/L{n + 1}/Power") == pytest.approx(t.watts[n])
                assert store.get(f"/Ac/L{n + 1}/Voltage") == pytest.approx(t.volts[n], abs=1e-4)
                assert store.get(f"/Ac/L{n + 1}/Current") == pytest.approx(t.amps[n], abs=1e-5)
            assert store.get("/Ac/Energy/Forward") == pytest.approx(t.import_kwh, abs=1e-3)
            assert store.get("/Ac/Energy/Reverse") == pytest.approx(t.export_kwh, abs=1e-3)
            assert store.get("/Ac/L2/Energy/Forward") == pytest.approx(434.56, abs=1e-3)
            assert store.get("/Ac/Energy/Consumption") == pytest.approx(t.import_kwh - t.export_kwh, abs=1e-2)
        finally:
            await pool.aclose()
