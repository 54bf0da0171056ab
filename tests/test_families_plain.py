"""Meters without identification registers: the model named in the spec, a plausibility
check that never takes one meter for another, values equal to the simulated truth.

The simulated meters (``mbclient.sim.plain_meters``) follow the makers' register lists;
the expected values are the simulator's truth, not the definition files."""

from __future__ import annotations

import time

import pytest
import pytest_asyncio

from mbclient.devices import DeviceOptions, get_model
from mbclient.errors import ModbusError
from mbclient.items import ItemStore
from mbclient.sim import serve_rtu
from mbclient.sim.bus import SimBus
from mbclient.sim.plain_meters import PLAIN_METERS, MeterTruth
from mbclient.spec import parse_spec
from mbclient.transports import LinkPool
from mbclient.transports.base import UnitClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]
NAMES = list(PLAIN_METERS)


async def _identify(client: UnitClient, name: str):  # noqa: ANN202
    store = ItemStore()
    driver = get_model(name).create(client, store, DeviceOptions(initial_timeout=0.3))
    identity = await driver.read_identity()
    return driver, store, identity


@pytest_asyncio.fixture
async def line(tmp_path):  # noqa: ANN201
    units = [make(i + 1) for i, make in enumerate(PLAIN_METERS.values())]
    async with serve_rtu(SimBus(115200, units=units), directory=tmp_path) as port:
        pool = LinkPool()
        try:
            yield pool, port.path
        finally:
            await pool.aclose()


async def test_each_named_model_publishes_the_simulated_truth(line) -> None:  # noqa: ANN001
    pool, path = line
    t = MeterTruth()
    for unit, name in enumerate(NAMES, 1):
        spec = parse_spec(f"rtu:{path}:115200:{unit}:{name}")
        client = UnitClient(pool.get(spec), unit)
        driver, s, identity = await _identify(client, name)
        driver.add_items()
        await driver.poll(time.monotonic())
        assert identity.serial == f"ttyUSB0_{unit}"  # the unit's place: stable, unique on the line
        assert driver.model.ident(identity.serial) == f"{driver.model.vendor}_ttyUSB0_{unit}"
        phases = driver.model.phases
        assert s.get("/Ac/Frequency") == pytest.approx(t.hertz, abs=1e-4), name
        for n in range(phases):
            assert s.get(f"/Ac/L{n + 1}/Voltage") == pytest.approx(t.volts[n], abs=1e-3), name
            assert s.get(f"/Ac/L{n + 1}/Current") == pytest.approx(t.amps[n], abs=1e-3), name
        if name == "orno_we514":  # unsigned power, import only
            assert s.get("/Ac/Power") == 950.0
            assert s.get("/Ac/Energy/Forward") == pytest.approx(t.import_kwh)
            continue
        watts = t.watts[:phases]
        assert s.get("/Ac/Power") == pytest.approx(sum(watts), abs=1e-2), name
        for n in range(phases):
            assert s.get(f"/Ac/L{n + 1}/Power") == pytest.approx(watts[n], abs=1e-2), name
        assert s.get("/Ac/Energy/Forward") == pytest.approx(t.import_kwh, abs=1e-3), name
        assert s.get("/Ac/Energy/Reverse") == pytest.approx(t.export_kwh, abs=1e-3), name
        assert s.get("/Ac/Energy/Consumption") == pytest.approx(t.import_kwh - t.export_kwh, abs=1e-2), name


async def test_a_meter_is_never_taken_for_another_model(line) -> None:  # noqa: ANN001
    pool, path = line
    for unit, actual in enumerate(NAMES, 1):
        for named in NAMES:
            if named == actual:
                continue
            spec = parse_spec(f"rtu:{path}:115200:{unit}:{named}")
            client = UnitClient(pool.get(spec), unit)
            with pytest.raises(ModbusError):  # exception reply, or "does not read like"
                await _identify(client, named)


async def test_a_dead_phase_or_a_meter_off_grid_is_refused_not_guessed(tmp_path) -> None:
    unit = PLAIN_METERS["dtsu666"](1, MeterTruth(volts=(0.0, 0.0, 0.0)))
    async with serve_rtu(SimBus(115200, units=[unit]), directory=tmp_path) as port:
        pool = LinkPool()
        try:
            client = UnitClient(pool.get(parse_spec(f"rtu:{port.path}:115200:1:dtsu666")), 1)
            with pytest.raises(ModbusError, match="volts"):
                await _identify(client, "dtsu666")
        finally:
            await pool.aclose()
