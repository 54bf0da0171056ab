"""The stock clients' families, each against a simulated device written from the maker's
register documentation (mbclient/sim/meters.py), never from the definition file: the unit
is identified among every model mbclient knows, and publishes the paths, product id, role
and service name the stock Venus driver publishes, with values that follow from what the
simulated device was told to measure.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mbclient.devices import DeviceOptions, identify
from mbclient.items import ItemStore
from mbclient.sim import SimBus, SimUnit, serve_rtu
from mbclient.errors import ConfigError
from mbclient.sim.meters import AbbMeter, CarloGavazziMeter, EvChargingStation, P1Link, SmappeePowerBox
from mbclient.sim.net import serve_tcp, serve_udp
from mbclient.transports.base import UnitClient
from mbclient.transports.rtu import RtuLink
from mbclient.transports.tcp import TcpLink
from mbclient.transports.udp import UdpLink

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def served(unit: SimUnit, how: str, tmp_path) -> AsyncIterator[Any]:  # noqa: ANN001
    """A link to ``unit`` on a simulated 9600 Bd RTU line (pty), or over TCP/UDP on loopback."""
    if how == "rtu":
        async with serve_rtu(SimBus(9600, units=[unit]), directory=tmp_path) as port:
            link = RtuLink.serial(port.path, 9600)
            try:
                yield link
            finally:
                await link.aclose()
        return
    server = serve_tcp(unit) if how == "tcp" else serve_udp(unit)
    async with server as info:
        link = TcpLink(info.host, info.port) if how == "tcp" else UdpLink(info.host, info.port)
        try:
            yield link
        finally:
            await link.aclose()


async def publish(link: Any, unit: int, role: str | None = None):  # noqa: ANN201
    """Identify the unit among all models, read its identity and every block once."""
    client = UnitClient(link, unit)
    model = await identify(client, timeout=1.0)
    store = ItemStore()
    driver = model.create(client, store, DeviceOptions(role=role))
    identity = await driver.read_identity()
    driver.add_items()
    await driver.poll(time.monotonic())
    service = f"com.victronenergy.{driver.role}.{model.ident(identity.serial)}"
    return model, driver, store, identity, service


# --- ABB ------------------------------------------------------------------------------------------


async def test_abb_b23_three_phase_on_rtu(tmp_path) -> None:  # noqa: ANN001
    meter = AbbMeter(2, model="B23", serial=21345678)
    meter.measure((230.1, 231.2, 229.3), (1500.0, -250.0, 800.0), pf=0.95, hz=49.98)
    meter.set_energy((100.25, 20.5, 3.0), (1.5, 40.0, 0.0))
    async with served(meter, "rtu", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 2)
    assert model.name == "abb_b23" and model.product_id == 0xB033
    assert model.product_name == "ABB B23/B24 Energy Meter"
    assert service == "com.victronenergy.grid.abb_21345678" and identity.firmware == "1.2.0"
    assert store["/Ac/Power"] == pytest.approx(2050.0)
    assert store["/Ac/L2/Power"] == pytest.approx(-250.0)
    assert store["/Ac/L3/Voltage"] == pytest.approx(229.3)
    assert store["/Ac/L1/Current"] == pytest.approx(1500.0 / (230.1 * 0.95), abs=0.01)
    assert store["/Ac/Frequency"] == pytest.approx(49.98)
    assert store["/Ac/L2/PowerFactor"] == pytest.approx(0.95)
    assert store["/Ac/Energy/Forward"] == pytest.approx(123.75)
    assert store["/Ac/L2/Energy/Reverse"] == pytest.approx(40.0)
    assert store["/NrOfPhases"] == 3
    assert "/Current" not in store  # only in the evcharger role


async def test_abb_b21_single_phase_totals_are_l1_and_evcharger_current(tmp_path) -> None:  # noqa: ANN001
    meter = AbbMeter(1, model="B21", serial=7654321)
    meter.measure((229.0, 0, 0), (3680.0, 0, 0), pf=1.0)
    meter.set_energy((12.34, 0, 0), (0.5, 0, 0))
    async with served(meter, "tcp", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 1, role="evcharger")
    assert model.name == "abb_b21" and service == "com.victronenergy.evcharger.abb_7654321"
    assert store["/Ac/Power"] == store["/Ac/L1/Power"] == pytest.approx(3680.0)
    assert store["/Ac/L1/Energy/Forward"] == pytest.approx(12.34)
    assert store["/Ac/L1/Energy/Reverse"] == pytest.approx(0.5)
    assert store["/Current"] == pytest.approx(16.07, abs=0.01)  # 3680 W / 229 V
    assert store["/NrOfPhases"] == 1 and store["/IsGenericEnergyMeter"] == 1
    assert "/Ac/L2/Voltage" not in store


# --- Carlo Gavazzi ----------------------------------------------------------------------------------


async def test_cg_em24_ethernet_application_h_and_writable_phase_config(tmp_path) -> None:  # noqa: ANN001
    meter = CarloGavazziMeter(1, layout="em24_ethernet", serial="BX12345")
    meter.measure((230.0, 231.0, 232.0), (-1000.0, 200.0, 300.0), hz=50.1)
    meter.set_energy((10.0, 20.0, 30.0), 7.5)
    async with served(meter, "tcp", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 1)
        assert model.name == "cg_em24_ethernet" and model.product_id == 0xB017
        assert service == "com.victronenergy.grid.cg_BX12345"
        assert identity.firmware == "2.1.5" and identity.hardware == "1.2.3"
        assert [(a, v) for _, _, a, v in meter.write_log] == [(0xA000, [7])]  # application H
        assert store["/Ac/Power"] == pytest.approx(-500.0)  # signed once in application H
        assert store["/Ac/L1/Power"] == pytest.approx(-1000.0)
        assert store["/Ac/L3/Voltage"] == pytest.approx(232.0)
        assert store["/Ac/L2/Current"] == pytest.approx(200.0 / 231.0, abs=0.001)
        assert store["/Ac/Frequency"] == pytest.approx(50.1)
        assert store["/Ac/Energy/Forward"] == pytest.approx(60.0)
        assert store["/Ac/L2/Energy/Forward"] == pytest.approx(20.0)
        assert store["/Ac/Energy/Reverse"] == pytest.approx(7.5)
        assert store["/PhaseSequence"] == 0 and store["/NrOfPhases"] == 3
        assert store["/PhaseConfig"] == 0 and store.item("/PhaseConfig").text == "3P.n"
        # the user switches the meter to single phase: written, read back, L2/L3 disappear
        assert store.write("/PhaseConfig", 7) == 2
        assert store.write("/PhaseConfig", 3) == 0
        await driver.service_writes(time.monotonic())
        assert meter.holding[0x1002] == 3
        await driver.poll(time.monotonic())
        assert store["/PhaseConfig"] == 3 and store["/NrOfPhases"] == 1
        assert "/Ac/L2/Power" not in store and "/PhaseSequence" not in store
        assert "/Ac/L2/Power" not in {p for r in driver.registers() for p in r.paths}


@pytest.mark.parametrize(("layout", "name"), [("em24", "cg_em24"), ("et112", "cg_et112"), ("em300_s27", "cg_em300_s27"),
                                              ("et340", "cg_et340"), ("em540", "cg_em540")])
async def test_cg_rs485_meters_identified_and_read(tmp_path, layout: str, name: str) -> None:  # noqa: ANN001
    meter = CarloGavazziMeter(2, layout=layout, serial="AB98765")
    meter.measure((229.0, 230.0, 231.0), (-800.0, 150.0, 250.0), hz=49.9, pf=0.9)
    meter.set_energy((1.5, 2.5, 3.5), 4.5, (4.0, 0.5, 0.0))
    async with served(meter, "rtu", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 2)
    # named as dbus-cgwacs names them: the service by line and address, the settings by serial
    assert model.name == name and model.product_id == 0xB002 and model.vendor == "cgwacs"
    assert service == "com.victronenergy.grid.cgwacs_AB98765"  # the settings ident
    assert model.service_ident(identity.serial, "/dev/ttyUSB0", 2) == "cgwacs_ttyUSB0_mb2"
    assert model.service_ident(identity.serial, "/dev/serial/by-id/usb-x", 7) == "cgwacs_serial_by-id_usb-x_mb7"
    assert model.service_ident(identity.serial) == "cgwacs_AB98765"  # the same meter behind a TCP gateway
    assert [(a, v) for _, _, a, v in meter.write_log] == [(meter.mode_register, [meter.mode_wanted])]
    assert store["/Ac/Frequency"] == pytest.approx(49.9)
    assert store["/Ac/Energy/Reverse"] == pytest.approx(4.5)  # the ET112's negative counter too
    if layout == "et112":
        assert store["/Ac/Power"] == store["/Ac/L1/Power"] == pytest.approx(-800.0)
        assert store["/Ac/Energy/Forward"] == pytest.approx(1.5) and store["/NrOfPhases"] == 1
        return
    assert store["/Ac/Power"] == pytest.approx(-400.0)
    assert store["/Ac/L1/Power"] == pytest.approx(-800.0) and store["/Ac/L3/Voltage"] == pytest.approx(231.0)
    assert store["/Ac/Energy/Forward"] == pytest.approx(7.5)
    assert store["/Ac/L2/Energy/Forward"] == pytest.approx(2.5)
    assert store["/NrOfPhases"] == 3
    if layout == "et340":
        assert store["/Ac/L1/Energy/Reverse"] == pytest.approx(4.0)
    if layout == "em540":
        assert store["/Ac/L2/PowerFactor"] == pytest.approx(0.9) and store["/PhaseSequence"] == 1
        assert identity.firmware == "1.1.4"


async def test_cg_em24_rs485_in_single_phase_publishes_l1_only(tmp_path) -> None:  # noqa: ANN001
    meter = CarloGavazziMeter(1, layout="em24", serial="EM24X01", measuring_system=3)
    meter.measure((230.0, 0.0, 0.0), (1200.0, 0.0, 0.0))
    async with served(meter, "rtu", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 1)
    assert model.name == "cg_em24" and store["/NrOfPhases"] == 1
    assert store["/Ac/L1/Power"] == pytest.approx(1200.0)
    assert "/Ac/L2/Voltage" not in store and "/PhaseSequence" not in store


# --- Victron P1Link (UDP) and EV Charging Station (TCP) ---------------------------------------------


@pytest.mark.parametrize("phase_config", [3, 0])
async def test_p1link_over_udp(tmp_path, phase_config: int) -> None:  # noqa: ANN001
    p1 = P1Link(1, serial="HQ2301ABC", phase_config=phase_config)
    p1.measure((231.5, 229.25, 230.0), (-1200, 300, 450), (5.2, 1.31, 1.96), 4321.09)
    async with served(p1, "udp", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 1)
    assert model.name == "p1link" and model.product_id == 0xC02F and model.allowed_roles == ("grid",)
    assert service == "com.victronenergy.grid.ve_HQ2301ABC" and identity.firmware == "v1.10"
    assert store["/Ac/L1/Voltage"] == pytest.approx(231.5) and store["/Ac/L1/Current"] == pytest.approx(5.2)
    assert store["/Ac/Energy/Forward"] == pytest.approx(4321.09)
    assert store["/Ac/Energy/Reverse"] is None  # 0xFFFFFFFF: unknown
    if phase_config == 3:
        assert store["/Ac/Power"] == pytest.approx(-450.0) and store["/NrOfPhases"] == 3
        assert store["/Ac/L3/Power"] == pytest.approx(450.0)
    else:
        assert store["/NrOfPhases"] == 1 and "/Ac/L2/Voltage" not in store


async def test_ev_charging_station_controls_over_tcp(tmp_path) -> None:  # noqa: ANN001
    evcs = EvChargingStation(1, product_id=0xC023, serial="EVC042")
    evcs.set_u16("holding", 5009, 1)  # auto mode
    async with served(evcs, "tcp", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 1)
        assert model.name == "evcs_v2" and model.product_id == 0xC023 and model.product_name == "EV Charging Station"
        assert service == "com.victronenergy.evcharger.evc_EVC042" and model.allowed_roles == ("evcharger",)
        assert identity.firmware == "v1.22"
        assert store["/Ac/Energy/Forward"] == pytest.approx(1234.56) and store["/MinCurrent"] == 6
        assert store["/Status"] == 1 and store.item("/Status").text == "Connected"
        assert store["/Mode"] == 1 and store.item("/Mode").text == "Auto"
        assert store["/Ac/Power"] == 0
        # manual mode, 16 A, start: written to the charger, read back, the charger draws power
        assert store.write("/SetCurrent", 40) == 2 and store.write("/Mode", 3) == 2
        for path, value in (("/Mode", 0), ("/SetCurrent", 16), ("/StartStop", 1)):
            assert store.write(path, value) == 0
        await driver.service_writes(time.monotonic())
        assert [(a, v) for _, _, a, v in evcs.write_log] == [(5009, [0]), (5016, [16]), (5010, [1])]
        await driver.poll(time.monotonic() + 3)  # the read-back and the next power reading
        assert store["/StartStop"] == 1 and store["/SetCurrent"] == 16
        assert store["/Ac/Power"] == 3 * 230 * 16 and store["/Current"] == pytest.approx(16.0)
        assert store["/Status"] == 2


async def test_ev_charging_station_old_firmware_lacks_newer_rows(tmp_path) -> None:  # noqa: ANN001
    evcs = EvChargingStation(1, product_id=0xC025, serial="OLD001", firmware=0x000120FF)
    async with served(evcs, "tcp", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 1)
    assert model.name == "evcs_ac22e" and identity.firmware == "v1.20"
    assert "/EnableDisplay" not in store and "/MinCurrent" not in store
    assert store["/MaxCurrent"] == 32


# --- Smappee ------------------------------------------------------------------------------------------


async def test_smappee_power_box_guesses_cts_and_publishes_the_virtual_meter(tmp_path) -> None:  # noqa: ANN001
    box = SmappeePowerBox(61, number=654321, hub_slots=(4, 5, 6, 7))  # no CT assigned yet
    box.measure((231.0, 229.0, 230.0), {4: -1150.0, 5: 460.0, 6: 690.0, 7: 99.0},
                {4: (1000.0, 25000.0), 5: (2500.0, 0.0), 6: (3000.0, 0.0)})
    async with served(box, "tcp", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 61)
    assert model.name == "smappee_powerbox" and model.product_id == 0xB018
    assert service == "com.victronenergy.grid.smappee_5400654321" and identity.firmware == "1.44"
    # the first three CTs became L1-L3, saved; the fourth stays unassigned
    assert [box.phase_of(s) for s in (4, 5, 6, 7)] == [0, 1, 2, -1] and box.saved == 1
    assert store["/NrOfPhases"] == 3
    assert store["/Ac/L1/Power"] == pytest.approx(-1150.0) and store["/Ac/L1/Voltage"] == pytest.approx(231.0)
    assert store["/Ac/L2/Current"] == pytest.approx(460.0 / 229.0, abs=1e-3)
    assert store["/Ac/Power"] == pytest.approx(0.0)  # -1150 + 460 + 690 (the 4th CT is no phase)
    assert store["/Ac/L1/Energy/Reverse"] == pytest.approx(25.0)
    assert store["/Ac/Energy/Forward"] == pytest.approx(6.5)
    assert store["/Ac/Frequency"] == pytest.approx(50.0)


async def test_smappee_keeps_configured_cts_and_refuses_old_firmware(tmp_path) -> None:  # noqa: ANN001
    box = SmappeePowerBox(61, hub_slots=(2, 3), ct_phases=(1, 0))  # slot 2 on L1, slot 3 unassigned
    box.measure((230.0, 230.0, 230.0), {2: 2300.0, 3: 50.0}, {2: (1500.0, 0.0)})
    async with served(box, "rtu", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 61)
    assert [box.phase_of(s) for s in (2, 3)] == [0, -1]
    assert store["/NrOfPhases"] == 1 and "/Ac/L2/Power" not in store
    assert store["/Ac/Power"] == pytest.approx(2300.0) and store["/Ac/L1/Current"] == pytest.approx(10.0)
    old = SmappeePowerBox(61, version=(1, 43))
    async with served(old, "tcp", tmp_path) as link:
        with pytest.raises(ConfigError, match="matches no known model"):
            await identify(UnitClient(link, 61), timeout=1.0)


async def test_smappee_ct_phase_moved_over_its_path(tmp_path) -> None:  # noqa: ANN001
    box = SmappeePowerBox(61, hub_slots=(4, 5, 6, 7), ct_phases=(1, 2, 4, 0))  # L1, L2, L3, none
    box.measure((230.0, 230.0, 230.0), {4: -1150.0, 5: 460.0, 6: 690.0, 7: 99.0}, {})
    async with served(box, "tcp", tmp_path) as link:
        model, driver, store, identity, service = await publish(link, 61)
        assert [store[f"/CT/{s}/Phase"] for s in (4, 5, 6, 7)] == [0, 1, 2, -1]
        assert store.item("/CT/6/Phase").text == "L3" and store["/CT/7/DeviceChannel"] == "D"
        assert store["/Ac/L1/Power"] == pytest.approx(-1150.0)
        assert store.write("/CT/7/Phase", 5) == 2  # no such phase
        assert store.write("/CT/7/Phase", 0) == 0  # the fourth CT measures L1 now
        await driver.service_writes(time.monotonic())
        assert [box.phase_of(s) for s in (4, 5, 6, 7)] == [-1, 1, 2, 0]
        assert [store[f"/CT/{s}/Phase"] for s in (4, 5, 6, 7)] == [-1, 1, 2, 0]
        await driver.poll(time.monotonic() + 60)
        assert store["/Ac/L1/Power"] == pytest.approx(99.0)
        assert store["/Ac/Power"] == pytest.approx(99.0 + 460.0 + 690.0)


async def test_brands_mixed_on_one_rs485_line(tmp_path) -> None:  # noqa: ANN001
    """What dbus-cgwacs and the stock client cannot share: one adapter, several makers."""
    from mbclient.sim import sdm230

    units = [CarloGavazziMeter(1, layout="em540", serial="EM540A1"), AbbMeter(2, model="B23", serial=99),
             sdm230(3), CarloGavazziMeter(4, layout="et112", serial="ET112B2")]
    async with serve_rtu(SimBus(9600, units=units), directory=tmp_path) as port:
        link = RtuLink.serial(port.path, 9600)
        try:
            names = [(await identify(UnitClient(link, u), timeout=1.0)).name for u in (1, 2, 3, 4)]
        finally:
            await link.aclose()
    assert names == ["cg_em540", "abb_b23", "sdm230", "cg_et112"]
