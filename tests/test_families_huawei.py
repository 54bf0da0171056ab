"""Huawei SUN2000 and the DTSU666-H meter behind it, as data files, against a simulator
written from Huawei's register list; the runtime publishes both from one unit address."""

from __future__ import annotations

import dataclasses
import time

import pytest

from mbclient.devices import DeviceOptions, get_model, identify
from mbclient.items import ItemStore
from mbclient.sim import serve_tcp
from mbclient.sim.huawei import Sun2000
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool
from mbclient.transports.base import UnitClient
from test_runtime_support import Observer, fast_config, running_supervisor

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def fast(name: str):  # noqa: ANN201
    """The model with test-sized quirk times (the file's own are asserted separately)."""
    return dataclasses.replace(get_model(name), quirks={"connect_delay": 0.05, "request_gap": 0.01})


async def test_quirks_are_named_in_the_files() -> None:
    for name in ("sun2000", "sun2000_meter"):
        q = get_model(name).quirks
        assert q["connect_delay"] >= 1.0 and q["request_gap"] > 0


async def test_inverter_and_meter_values_equal_the_simulated_truth() -> None:
    sim = Sun2000(1)
    async with serve_tcp([sim], turnaround=False) as server:
        pool = LinkPool()
        try:
            client = UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{server.port}:1")), 1)
            assert (await identify(client, timeout=0.5)).name == "sun2000"
            inv_store, meter_store = ItemStore(), ItemStore()
            inv = fast("sun2000").create(client, inv_store, DeviceOptions())
            meter = fast("sun2000_meter").create(client, meter_store, DeviceOptions(index=2))
            started = time.monotonic()
            ident = await inv.read_identity()
            assert time.monotonic() - started >= 0.05  # the connect delay was waited
            mident = await meter.read_identity()
            assert ident.serial == mident.serial == "HV2150123456"
            assert inv.model.ident(ident.serial) != meter.model.ident(mident.serial)
            for d in (inv, meter):
                d.add_items()
                await d.poll(time.monotonic())
            s, m = inv_store, meter_store
            assert s.get("/Ac/Power") == 7000.0
            assert s.get("/Ac/MaxPower") == 10000.0
            assert s.get("/StatusCode") == 7
            assert s.get("/Ac/Energy/Forward") == pytest.approx(12345.67)
            assert s.get("/Ac/Frequency") == pytest.approx(50.03)
            for n in range(3):
                assert s.get(f"/Ac/L{n + 1}/Voltage") == pytest.approx(sim.volts[n])
                assert s.get(f"/Ac/L{n + 1}/Current") == pytest.approx(sim.amps[n])
            assert m.get("/Ac/Power") == sum(sim.grid_w)  # Victron's sign: import positive
            for n in range(3):
                assert m.get(f"/Ac/L{n + 1}/Power") == sim.grid_w[n]
                assert m.get(f"/Ac/L{n + 1}/Voltage") == pytest.approx(sim.grid_v[n])
                assert m.get(f"/Ac/L{n + 1}/Current") == pytest.approx(sim.grid_a[n])
            assert m.get("/Ac/Energy/Forward") == pytest.approx(sim.import_kwh)
            assert m.get("/Ac/Energy/Reverse") == pytest.approx(sim.export_kwh)
        finally:
            await pool.aclose()


async def test_runtime_publishes_the_inverter_and_its_meter(dbus_address: str, tmp_path) -> None:

    monkeypatch.setattr(base.Model, "quirks", property(lambda self: {}), raising=False) if False else None
    sim = Sun2000(1)
    async with serve_tcp([sim], turnaround=False) as server:
        specs = [parse_spec(f"tcp:127.0.0.1:{server.port}:1:sun2000"),
                 parse_spec(f"tcp:127.0.0.1:{server.port}:1:sun2000_meter@2")]
        config = fast_config(dbus_address, tmp_path / "settings.xml", specs)
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await observer.wait_for("com.victronenergy.pvinverter.huawei_HV2150123456", "/Ac/Power",
                                        lambda v: v == 7000.0)
                await observer.wait_for("com.victronenergy.grid.huawei_meter_HV2150123456", "/Ac/Power",
                                        lambda v: v == sum(sim.grid_w))
        finally:
            observer.close()


async def test_inverter_and_meter_share_the_dongles_pacing() -> None:
    """Two services read through one SUN2000 address: the request gap holds between any two
    of their reads, not only between one driver's own."""
    import asyncio

    sim = Sun2000(1)
    reads: list[float] = []
    sim.on_read = lambda table, address, count: reads.append(time.monotonic())
    gap = 0.05
    quirks = {"connect_delay": 0.0, "request_gap": gap}
    async with serve_tcp([sim], turnaround=False) as server:
        pool = LinkPool()
        try:
            client = UnitClient(pool.get(parse_spec(f"tcp:127.0.0.1:{server.port}:1")), 1)
            inv = dataclasses.replace(get_model("sun2000"), quirks=quirks).create(client, ItemStore(), DeviceOptions())
            meter = dataclasses.replace(get_model("sun2000_meter"), quirks=quirks).create(
                client, ItemStore(), DeviceOptions(index=2))
            await asyncio.gather(inv.read_identity(), meter.read_identity())
            reads.clear()
            for _ in range(3):
                await asyncio.gather(inv.poll(time.monotonic() + 100), meter.poll(time.monotonic() + 100))
        finally:
            await pool.aclose()
    assert len(reads) >= 6
    spacing = [b - a for a, b in zip(reads, reads[1:])]
    assert min(spacing) >= gap * 0.9, spacing
