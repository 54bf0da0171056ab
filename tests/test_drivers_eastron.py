"""Eastron SDM drivers against simulated meters on a simulated RTU line (pty, 9600 Bd).

What a user depends on: the meter is recognised as what it is (never as a sibling model),
every published path carries the right value, unit text and Python type, a three-phase
meter publishes L1..L3, energies survive an outage, and only changed values are sent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from mbclient.devices import DeviceOptions, get_model, identify
from mbclient.devices import eastron
from mbclient.errors import ConfigError, ModbusExceptionResponse, ModbusTimeout
from mbclient.items import ItemStore
from mbclient.sim import SimBus, serve_rtu
from mbclient.sim.models import growatt_min, sdm72d, sdm120, sdm230, sdm630
from mbclient.transports.base import UnitClient
from mbclient.transports.rtu import RtuLink

pytestmark = pytest.mark.asyncio

BAUD = 9600


@contextlib.asynccontextmanager
async def rtu_line(tmp_path, *units) -> AsyncIterator[RtuLink]:  # noqa: ANN001
    """``units`` on a simulated 9600 Bd line behind a pty, and our RTU link to it."""
    bus = SimBus(BAUD, units=list(units))
    async with serve_rtu(bus, directory=tmp_path) as port:
        link = RtuLink.serial(port.path, BAUD)
        try:
            yield link
        finally:
            await link.aclose()


async def connect(link: RtuLink, unit: int, model_name: str, now: float | None = None, **opts):  # noqa: ANN003, ANN201
    """Identity, items and a first poll at ``now`` (a virtual clock: the driver only
    schedules with it)."""
    store = ItemStore()
    driver = get_model(model_name).create(UnitClient(link, unit), store, DeviceOptions(baud=BAUD, **opts))
    identity = await driver.read_identity()
    driver.add_items()
    await driver.poll(time.monotonic() if now is None else now)
    return driver, store, identity


# --- identification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: sdm230(2), "sdm230"),  # code 0x0000 (what the simulator guesses), single phase
        (lambda: sdm230(2, meter_code=None), "sdm230"),  # code register missing
        (lambda: sdm230(2, meter_code=0x0042), "sdm230"),  # some undocumented code
        (lambda: sdm630(2), "sdm630"),
        (lambda: sdm630(2, meter_code=0x0000), "sdm630"),  # early SDM630: code 0, live L2/L3
        (lambda: sdm120(2), "sdm120"),
        (lambda: sdm72d(2), "sdm72d"),
        (lambda: sdm72d(2, version=1), "sdm72d_v1"),
        (lambda: growatt_min(2), "growatt_min"),
    ],
)
async def test_identify_tells_the_models_apart(tmp_path, make, expected) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, make()) as link:
        model = await identify(UnitClient(link, 2), timeout=0.5)
    assert model.name == expected


async def test_three_phase_meter_with_unknown_code_is_not_guessed(tmp_path) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, sdm630(2, meter_code=0x0042)) as link:
        with pytest.raises(ConfigError, match="matches no known model"):
            await identify(UnitClient(link, 2), timeout=0.5)


async def test_a_growatt_is_never_taken_for_a_meter(tmp_path) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, growatt_min(1)) as link:
        client = UnitClient(link, 1)
        with pytest.raises(ModbusExceptionResponse):  # no Eastron serial register
            await eastron.detect(client, 0.5)
        # even one that answers 0xFC00 (a lenient firmware) fails the mains-voltage check
        link_unit = growatt_min(3)
        link_unit.define("holding", 0xFC00, 4)
    async with rtu_line(tmp_path, link_unit) as link:
        assert await eastron.detect(UnitClient(link, 3), 0.5) is None


# --- published values ---------------------------------------------------------------------------


async def test_sdm230_publishes_every_path_with_value_unit_and_type(tmp_path) -> None:  # noqa: ANN001
    meter = sdm230(2)
    meter.measure(-1234.5, voltage=231.2, frequency=49.98, power_factor=0.95)
    meter.set_energy(1500.25, 300.5)
    async with rtu_line(tmp_path, meter) as link:
        driver, store, identity = await connect(link, 2, "sdm230")
    assert identity.serial == "23000123"
    assert identity.hardware == "0x0000" and identity.firmware == "0x0102"
    expected = {
        "/Ac/L1/Voltage": (231.2, "231.2 V"),
        "/Ac/L1/Current": (1234.5 / 0.95 / 231.2, "5.62 A"),
        "/Ac/L1/Power": (-1234.5, "-1234.5 W"),
        "/Ac/Power": (-1234.5, "-1234.5 W"),
        "/Ac/L1/PowerFactor": (0.95, "0.950"),
        "/Ac/PowerFactor": (0.95, "0.950"),
        "/Ac/Frequency": (49.98, "49.98 Hz"),
        "/Ac/L1/Energy/Forward": (1500.25, "1500.25 kWh"),
        "/Ac/L1/Energy/Reverse": (300.5, "300.50 kWh"),
        "/Ac/Energy/Forward": (1500.25, "1500.25 kWh"),
        "/Ac/Energy/Reverse": (300.5, "300.50 kWh"),
        "/Ac/Energy/Consumption": (1199.75, "1199.75 kWh"),
        "/Ac/L1/Energy/Consumption": (1199.75, "1199.75 kWh"),
    }
    for path, (value, text) in expected.items():
        item = store.item(path)
        assert type(item.value) is float, path
        assert item.value == pytest.approx(value, rel=1e-5), path
        assert item.text == text, path
        assert not item.writable
    assert store["/NrOfPhases"] == 1 and type(store["/NrOfPhases"]) is int
    assert "/Ac/L2/Power" not in store
    assert "/IsGenericEnergyMeter" not in store  # grid role


async def test_sdm630_publishes_three_phases(tmp_path) -> None:  # noqa: ANN001
    meter = sdm630(1)
    meter.measure([100.0, 200.0, -50.0], voltage=[230.0, 231.0, 232.0])
    meter.set_energy(30.0, 3.0)
    async with rtu_line(tmp_path, meter) as link:
        driver, store, identity = await connect(link, 1, "sdm630")
    assert identity.serial == "63000123" and identity.hardware == "0x0070"
    assert store["/NrOfPhases"] == 3
    for n, (p, v) in enumerate(((100.0, 230.0), (200.0, 231.0), (-50.0, 232.0)), start=1):
        assert store[f"/Ac/L{n}/Power"] == pytest.approx(p)
        assert store[f"/Ac/L{n}/Voltage"] == pytest.approx(v)
        assert store[f"/Ac/L{n}/Current"] == pytest.approx(abs(p) / v, rel=1e-5)
        assert store[f"/Ac/L{n}/Energy/Forward"] == pytest.approx(10.0)
        assert store[f"/Ac/L{n}/Energy/Reverse"] == pytest.approx(1.0)
        assert store[f"/Ac/L{n}/Energy/Consumption"] == pytest.approx(9.0)
    assert store["/Ac/Power"] == pytest.approx(250.0) and type(store["/Ac/Power"]) is float
    assert store["/Ac/Energy/Forward"] == pytest.approx(30.0)
    assert store["/Ac/Energy/Consumption"] == pytest.approx(27.0)
    assert store.item("/Ac/Power").text == "250.0 W"


async def test_only_changed_values_propagate_and_refresh_classes_hold(tmp_path) -> None:  # noqa: ANN001
    meter = sdm230(2)
    meter.measure(500.0)
    async with rtu_line(tmp_path, meter) as link:
        t0 = 1000.0
        driver, store, _ = await connect(link, 2, "sdm230", now=t0)
        store.flush()
        batches: list[dict] = []
        store.subscribe(batches.append)  # the poll flushes each block as it is decoded
        assert not driver.due(t0)  # everything was just read
        requests = meter.counters.requests
        await driver.poll(t0 + 0.3)  # only FAST is due
        fast_reads = meter.counters.requests - requests
        assert batches == []  # nothing changed: nothing to send
        meter.measure(510.0)
        await driver.poll(t0 + 0.6)
        changed = {path for batch in batches for path in batch}
        assert {"/Ac/Power", "/Ac/L1/Power"} <= changed
        # voltage and current are NORMAL (2 s), energies SLOW: not re-read yet
        assert not changed & {"/Ac/Energy/Forward", "/Ac/L1/Voltage", "/Ac/L1/Current"}
        assert meter.counters.requests - requests == 2 * fast_reads
    assert fast_reads == 1  # power alone: one transaction, whatever the meter's holes


async def test_power_wanted_by_a_controller_is_read_more_often_on_the_priority_lane(tmp_path) -> None:  # noqa: ANN001
    """Poll demand (runtime/demand.py): the FAST class at the wanted interval, at once, and
    on the line's priority lane; the other classes and their lanes stay as they were."""
    meter = sdm230(2)
    meter.measure(500.0)
    async with rtu_line(tmp_path, meter) as link:
        driver, _store, _ = await connect(link, 2, "sdm230")
        seen: list[tuple[int, int, bool]] = []  # (address, count, priority) per read
        transact = link.transact

        async def recording(unit, request, *, timeout, priority=False):  # noqa: ANN001, ANN202
            seen.append((request.address, request.count, priority))
            return await transact(unit, request, timeout=timeout, priority=priority)

        link.transact = recording  # type: ignore[method-assign]
        assert driver.interval(eastron.FAST) == 0.25
        driver.set_fast_interval(0.1)
        assert driver.interval(eastron.FAST) == 0.1
        now = time.monotonic()
        assert driver.next_deadline(now) <= now + 0.1  # not after the 0.25 s already planned
        await driver.poll(now + 0.11)
        assert seen == [(0x0C, 2, True)]  # power alone, ahead of the round of turns
        driver.set_fast_interval(None)
        assert driver.interval(eastron.FAST) == 0.25
        await driver.poll(now + 0.5)
        assert seen[1:] == [(0x0C, 2, False)]


async def test_go_offline_keeps_energy_and_optionally_publishes_zero(tmp_path) -> None:  # noqa: ANN001
    meter = sdm230(2)
    meter.measure(800.0)
    meter.set_energy(42.0, 2.0)
    async with rtu_line(tmp_path, meter) as link:
        driver, store, _ = await connect(link, 2, "sdm230")
        driver.go_offline()
        assert store["/Ac/Power"] is None and store["/Ac/L1/Voltage"] is None
        assert store["/Ac/Energy/Forward"] == pytest.approx(42.0)
        assert store["/Ac/Energy/Consumption"] == pytest.approx(40.0)
        assert driver.due(time.monotonic())  # everything is re-read when it answers again
        await driver.poll(time.monotonic())
        assert store["/Ac/Power"] == pytest.approx(800.0)

        zdriver, zstore, _ = await connect(link, 2, "sdm230", zero_when_asleep=True)
        zdriver.go_offline()
        assert zstore["/Ac/Power"] == 0.0 and type(zstore["/Ac/Power"]) is float
        assert zstore["/Ac/L1/Voltage"] is None  # a voltage of 0 would be a lie
        assert zstore["/Ac/Energy/Forward"] == pytest.approx(42.0)


async def test_other_roles_are_generic_energy_meters(tmp_path) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, sdm230(2)) as link:
        _, store, _ = await connect(link, 2, "sdm230", role="pvinverter")
    assert store["/IsGenericEnergyMeter"] == 1
    with pytest.raises(ConfigError, match="not allowed"):
        get_model("growatt_min").create(UnitClient(link, 2), ItemStore(), DeviceOptions(role="grid"))


async def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="sdm230"):
        get_model("sdm999")


async def test_timeout_follows_measured_latency(tmp_path) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, sdm230(2)) as link:
        driver = get_model("sdm230").create(UnitClient(link, 2), ItemStore(), DeviceOptions(baud=BAUD))
        assert driver.timeout == 1.0  # nothing measured yet: the model's initial timeout
        await driver.read_identity()
        await driver.poll(1000.0)
        latency = link.stats(2).latency
        assert latency is not None and latency > 0
        assert driver.timeout == pytest.approx(max(0.3, 4 * latency))


async def test_a_silent_unit_times_out_rather_than_matching(tmp_path) -> None:  # noqa: ANN001
    meter = sdm230(2)
    meter.asleep = True
    async with rtu_line(tmp_path, meter) as link:
        with pytest.raises(ModbusTimeout):
            await identify(UnitClient(link, 2), timeout=0.1)


async def test_missing_optional_identity_registers_fall_back(tmp_path) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, sdm230(2, meter_code=None)) as link:
        driver, store, identity = await connect(link, 2, "sdm230")
    assert identity.serial == "23000123"
    assert identity.hardware is None  # no meter code register
    assert store["/Ac/L1/Voltage"] == pytest.approx(230.0)
