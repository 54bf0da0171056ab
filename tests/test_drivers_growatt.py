"""Growatt MIN TL-X driver against the simulated inverter on a simulated RTU line.

What a user depends on: correct values (lifetime energy, MaxPower as a number, Victron
status codes), /Ac/PowerLimit driving holding 3 promptly and only with valid values, the
60 s return to full power, no writes into the inverter's memory unless configured and
needed, and sane behaviour while it sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from mbclient.devices import DeviceOptions, G100Config, get_model
from mbclient.items import ACCEPTED, NOT_WRITABLE, REJECTED, ItemStore
from mbclient.modbus.pdu import WRITE_SINGLE
from mbclient.sim import SimBus, serve_rtu
from mbclient.sim.bus import REQUEST
from mbclient.sim.models import GrowattMin, growatt_min, sdm230
from mbclient.transports.base import UnitClient
from mbclient.transports.rtu import RtuLink

pytestmark = pytest.mark.asyncio

#: The seed's line speed; tests about values rather than timing use a faster line and a
#: quick inverter (``FAST_LINE``) to stay within a few seconds per file.
BAUD = 9600
FAST_LINE = 115200


@contextlib.asynccontextmanager
async def rtu_line(tmp_path, *units, baud: int = FAST_LINE) -> AsyncIterator[tuple[SimBus, RtuLink]]:  # noqa: ANN001
    bus = SimBus(baud, units=list(units))
    async with serve_rtu(bus, directory=tmp_path) as port:
        link = RtuLink.serial(port.path, baud)
        try:
            yield bus, link
        finally:
            await link.aclose()


def inverter(**kw) -> GrowattMin:  # noqa: ANN003
    """A MIN 4200 producing 3000 W with 1234.5 kWh lifetime and 5.5 kWh today."""
    kw.setdefault("turnaround", 0.005)
    inv = growatt_min(1, **kw)
    inv.available_w = 3000.0
    inv.set_energy(1234.5, 5.5)
    inv.step(100.0, energy_dt=0.0)  # settle the output without adding energy
    return inv


async def connect(link: RtuLink, unit: int = 1, model: str = "growatt_min", **opts):  # noqa: ANN003, ANN201
    store = ItemStore()
    driver = get_model(model).create(UnitClient(link, unit), store, DeviceOptions(**opts))
    identity = await driver.read_identity()
    driver.add_items()
    await driver.poll(time.monotonic())
    return driver, store, identity


@contextlib.asynccontextmanager
async def running(*drivers) -> AsyncIterator[None]:  # noqa: ANN002
    """Device loops as the runtime runs them: writes when woken, polls when due."""

    async def loop(driver) -> None:  # noqa: ANN001
        while True:
            now = time.monotonic()
            await driver.service_writes(now)
            if driver.due(now):
                await driver.poll(now)
            delay = max(0.0, min(driver.next_deadline(time.monotonic()), now + 0.5) - time.monotonic())
            if not driver.wakeup.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(driver.wakeup.wait(), delay)

    tasks = [asyncio.create_task(loop(d)) for d in drivers]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


def rate_writes(unit: GrowattMin) -> list[int]:
    return [values[0] for _, fc, addr, values in unit.write_log if fc == WRITE_SINGLE and addr == 3]


async def until(cond, timeout: float = 3.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --- identity and values ----------------------------------------------------------------------


async def test_identity_and_every_published_path(tmp_path) -> None:  # noqa: ANN001
    inv = inverter(turnaround=0.030)
    async with rtu_line(tmp_path, inv, baud=BAUD) as (_, link):
        driver, store, identity = await connect(link)
    assert identity.serial == "QXB1234567"
    assert identity.firmware == "DH1.0/ZBdh02"
    assert identity.extra["dtc"] == 5100 and identity.extra["trackers"] == 2
    assert get_model("growatt_min").ident(identity.serial) == "growatt_QXB1234567"
    floats = {
        "/Ac/Power": (3000.0, "3000.0 W"),
        "/Ac/L1/Power": (3000.0, "3000.0 W"),
        "/Ac/L1/Voltage": (230.0, "230.0 V"),
        "/Ac/L1/Current": (13.0, "13.0 A"),
        "/Ac/Frequency": (50.0, "50.00 Hz"),
        "/Ac/Energy/Forward": (1234.5, "1234.5 kWh"),  # lifetime (55-56), not today's 5.5
        "/Ac/L1/Energy/Forward": (1234.5, "1234.5 kWh"),
        "/Ac/MaxPower": (4200.0, "4200 W"),
        "/Ac/PowerLimit": (4200.0, "4200 W"),
        "/Internal/Pv/0/V": (320.0, "320.0 V"),
        "/Internal/Pv/1/V": (330.0, "330.0 V"),
        "/Internal/InverterTemp": (inv.get_u16("input", 93) / 10, None),
    }
    for path, (value, text) in floats.items():
        item = store.item(path)
        assert type(item.value) is float, path
        assert item.value == pytest.approx(value, abs=0.05), path
        if text:
            assert item.text == text, path
    assert store["/Internal/Pv/0/P"] + store["/Internal/Pv/1/P"] == pytest.approx(3000 / 0.97, abs=0.5)
    assert store["/Internal/Pv/0/Energy/Total"] == pytest.approx(1234.5 / 0.97 * 0.6, abs=0.1)
    assert "/Internal/Pv/2/V" not in store  # holding 44 says 2 trackers
    assert store["/StatusCode"] == 7 and type(store["/StatusCode"]) is int
    assert store.item("/StatusCode").text == "Running"
    assert store["/ErrorCode"] == 0 and type(store["/ErrorCode"]) is int
    assert store["/NrOfPhases"] == 1
    assert store["/Internal/activePowerRate"] == 255
    assert store.item("/Ac/PowerLimit").writable
    assert "/IsGenericEnergyMeter" not in store


async def test_status_codes_map_to_victron(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()
    async with rtu_line(tmp_path, inv) as (_, link):
        driver, store, _ = await connect(link)
        t = 1e6
        for setup, status, error in (
            (lambda: setattr(inv, "running", False), 8, 0),  # waiting -> standby
            (lambda: setattr(inv, "fault_code", 29), 10, 29),  # fault -> error
            (lambda: inv.set_u16("input", 0, 2), None, 29),  # undocumented -> invalid
        ):
            setup()
            if status != None:  # noqa: E711
                inv.publish()
            await driver.poll(t)
            t += 100
            assert store["/StatusCode"] == status
            assert store["/ErrorCode"] == error


async def test_max_power_option_overrides_the_rating(tmp_path) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, inverter()) as (_, link):
        _, store, _ = await connect(link, max_power=3680)
    assert store["/Ac/MaxPower"] == 3680.0 and type(store["/Ac/MaxPower"]) is float
    assert store.item("/Ac/PowerLimit").max == 3680.0


# --- power limit ------------------------------------------------------------------------------


async def test_power_limit_write_reaches_holding_3_within_one_transaction(tmp_path) -> None:  # noqa: ANN001
    inv, meter = inverter(turnaround=0.030), sdm230(2)  # the seed's bus, at its real speed
    rate_reads: list[float] = []  # reads of holding 3 alone: the read-back of a limit write
    chained = inv.on_read

    def on_read(table, address, count) -> None:  # noqa: ANN001
        if table == "holding" and address == 3 and count == 1:
            rate_reads.append(time.monotonic())
        if chained is not None:
            chained(table, address, count)

    inv.on_read = on_read
    async with rtu_line(tmp_path, inv, meter, baud=BAUD) as (bus, link):
        driver, store, _ = await connect(link)
        mdriver, _, _ = await connect(link, 2, "sdm230")
        async with running(driver, mdriver):
            await asyncio.sleep(0.5)  # both devices polling flat out
            for watts, pct in ((2100, 50), (1000.0, 23), (0, 0), (4200, 100)):  # 23.8 % -> 23: never above
                accepted = time.monotonic()
                assert store.write("/Ac/PowerLimit", watts) == ACCEPTED
                await until(lambda: len(rate_writes(inv)) and rate_writes(inv)[-1] == pct)
                written = inv.write_log[-1][0]
                between = [f for f in bus.frames if f.kind == REQUEST and accepted < f.start and f.end < written - 1e-4]
                assert len(between) <= 1, between  # at most one other transaction first
                await until(lambda: store["/Ac/PowerLimit"] == pytest.approx(pct * 42.0))
                # every write is read back on the priority lane: that read belongs to this
                # write, not to the next one's wait
                await until(lambda: any(t > written for t in rate_reads))  # read back on the wire
    assert rate_writes(inv) == [50, 23, 0, 100]


async def test_invalid_power_limits_never_reach_the_bus(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()
    async with rtu_line(tmp_path, inv) as (_, link):
        driver, store, _ = await connect(link)
        async with running(driver):
            assert store.write("/Ac/PowerLimit", "2000") == NOT_WRITABLE
            assert store.write("/Ac/PowerLimit", [2000]) == NOT_WRITABLE
            assert store.write("/Ac/PowerLimit", -1) == REJECTED
            assert store.write("/Ac/PowerLimit", 4201) == REJECTED
            assert store.write("/Ac/PowerLimit", float("inf")) == REJECTED
            await asyncio.sleep(0.5)
    assert inv.write_log == []
    assert store["/Ac/PowerLimit"] == 4200.0


async def test_limit_returns_to_maximum_when_not_renewed(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()
    async with rtu_line(tmp_path, inv) as (_, link):
        driver, store, _ = await connect(link, power_limit_timeout=0.6)
        async with running(driver):
            accepted = time.monotonic()
            assert store.write("/Ac/PowerLimit", 2100) == ACCEPTED
            await until(lambda: rate_writes(inv) == [50])
            assert driver.limiter.ess_active
            await until(lambda: rate_writes(inv) == [50, 100], timeout=3.0)
            assert inv.write_log[-1][0] - accepted >= 0.6
            assert not driver.limiter.ess_active
            await until(lambda: store["/Ac/PowerLimit"] == 4200.0)
            await asyncio.sleep(0.3)
    assert rate_writes(inv) == [50, 100]  # no further writes once back at maximum


async def test_persistent_commands_disable_limiting(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()
    inv.set_u16("holding", 2, 1)
    async with rtu_line(tmp_path, inv) as (_, link):
        driver, store, _ = await connect(link)
        async with running(driver):
            assert store["/Ac/PowerLimit"] is None
            assert "holding 2 = 1" in store["/Internal/PowerLimiter/Status"]
            assert store.write("/Ac/PowerLimit", 2100) == NOT_WRITABLE
            assert driver.limiter.request(2100, "dyngen") is False
            await asyncio.sleep(0.3)
    assert inv.write_log == []


async def test_controller_requests_share_the_limiter(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()
    async with rtu_line(tmp_path, inv) as (_, link):
        driver, store, _ = await connect(link, limit_min_interval=0.3)
        async with running(driver):
            driver.limiter.request(2100, "dyngen")
            await until(lambda: rate_writes(inv) == [50])
            driver.limiter.request(2130, "dyngen")  # 51 %: inside the 1-point deadband
            driver.limiter.request(3000, "dyngen")  # 71.4 % -> 71 %: after the minimum interval
            await until(lambda: rate_writes(inv) == [50, 71])
            assert inv.write_log[1][0] - inv.write_log[0][0] >= 0.29
            await until(lambda: driver.limiter.writes_per_hour == 2)  # counted once acknowledged
            await until(lambda: store["/Internal/PowerLimiter/WritesPerHour"] == 2)


# --- configuration registers (G100) --------------------------------------------------------------


async def test_g100_registers_written_only_when_they_differ(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()  # holds 42 = 0, 122 = 0, 123 = 0, 3000 = 1000
    same = G100Config(failsafe=0, export_limit_mode=0, export_limit_rate=0, failsafe_power_rate=1000)
    wanted = G100Config(failsafe=1, export_limit_mode=1, export_limit_rate=876, failsafe_power_rate=876)
    async with rtu_line(tmp_path, inv) as (_, link):
        driver, _, _ = await connect(link, g100=same)
        await driver.service_writes(time.monotonic())
        assert inv.write_log == []
        await connect(link)  # not configured: nothing is even compared
        driver, store, _ = await connect(link, g100=wanted)
        await driver.service_writes(time.monotonic())
        assert [(a, v[0]) for _, _, a, v in inv.write_log] == [(42, 1), (122, 1), (123, 876), (3000, 876)]
        driver, store, _ = await connect(link, g100=wanted)  # a restart: already equal
        await driver.service_writes(time.monotonic())
        await driver.service_writes(time.monotonic())
        assert len(inv.write_log) == 4
        await driver.poll(time.monotonic() + 60)
        assert store["/Internal/ExportLimitPowerRate"] == pytest.approx(87.6)
        assert store["/Internal/g100FailSafePowerRate"] == pytest.approx(87.6)
        assert store.item("/Internal/exportLimitType").text == "RS485 meter"


# --- sleep ----------------------------------------------------------------------------------------


async def test_sleep_keeps_lifetime_energy_and_resyncs_the_limit(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()
    async with rtu_line(tmp_path, inv) as (_, link):
        driver, store, _ = await connect(link)
        async with running(driver):
            store.write("/Ac/PowerLimit", 2100)
            await until(lambda: rate_writes(inv) == [50])
        inv.asleep = True
        driver.go_offline()  # what the runtime does after its grace period
        assert store["/Ac/Power"] is None and store["/Ac/L1/Current"] is None
        assert store["/StatusCode"] is None
        assert store["/Ac/Energy/Forward"] == pytest.approx(1234.5)
        assert store["/Ac/MaxPower"] == 4200.0
        # dawn: the inverter restarts and forgets holding 3; ESS still wants 2100 W
        inv.asleep = False
        inv.restart()
        store.write("/Ac/PowerLimit", 2100.0)
        async with running(driver):
            await until(lambda: rate_writes(inv) == [50, 50])
            await until(lambda: store["/Ac/Power"] is not None)


async def test_zero_when_asleep_option(tmp_path) -> None:  # noqa: ANN001
    async with rtu_line(tmp_path, inverter()) as (_, link):
        driver, store, _ = await connect(link, zero_when_asleep=True)
    driver.go_offline()
    for path in ("/Ac/Power", "/Ac/L1/Power", "/Ac/L1/Current", "/Internal/Pv/0/P"):
        assert store[path] == 0.0 and type(store[path]) is float, path
    assert store["/StatusCode"] == 8  # standby
    assert store["/Ac/L1/Voltage"] is None
    assert store["/Ac/Energy/Forward"] == pytest.approx(1234.5)


async def test_pv_strings_follow_the_tracker_count(tmp_path) -> None:  # noqa: ANN001
    inv = inverter()
    inv.set_u16("holding", 44, 0x0101)  # one tracker
    async with rtu_line(tmp_path, inv) as (_, link):
        # published from memory first (the runtime's path for a sleeping inverter): items
        # exist before the identity is read, with the default two trackers
        store = ItemStore()
        driver = get_model("growatt_min").create(UnitClient(link, 1), store, DeviceOptions())
        driver.add_items()
        assert "/Internal/Pv/1/V" in store
        await driver.read_identity()
        await driver.poll(time.monotonic())
    assert "/Internal/Pv/0/V" in store and "/Internal/Pv/1/V" not in store
    assert store["/Internal/Pv/0/V"] == pytest.approx(320.0)
    assert all(not r.name.startswith("/Internal/Pv/1/") for b in driver.blocks for r in b.registers)
