"""Victron energy meters (VM-3P75CT, VM-3P5A) against the simulated meter over Modbus UDP.

What a user depends on: the meter is recognised by its product id, published with its
per-phase values (only the phases it is configured for, only what its firmware has), and
its name and N2K instance are written through VregLink so the meter itself keeps them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from mbclient.devices import DeviceOptions, get_model, identify
from mbclient.items import ItemStore
from mbclient.runtime import service_paths as sp
from mbclient.sim import serve_udp
from mbclient.sim.models import sdm630
from mbclient.sim.vreg import VM_3P5A, VREG_DESCRIPTION, VictronMeterSim
from mbclient.transports.base import UnitClient
from mbclient.transports.udp import UdpLink
from mbclient.vreglink import VregReply

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


@contextlib.asynccontextmanager
async def udp_client(unit) -> AsyncIterator[UnitClient]:  # noqa: ANN001
    async with serve_udp(unit, turnaround=False) as server:
        link = UdpLink(server.host, server.port)
        try:
            yield UnitClient(link, unit.address)
        finally:
            await link.aclose()


def generic_store(instance: int = 40) -> ItemStore:
    """The paths the runtime adds before the driver's (what the driver mirrors and hooks)."""
    store = ItemStore()
    sp.add_generic_paths(store, process_name="mbclient", connection="Modbus UDP", instance=instance,
                         product_id=0xA1B1, product_name="Energy Meter VM-3P75CT", known=None,
                         custom_name="", on_custom_name=lambda v: True)
    return store


async def connect(client: UnitClient, model: str = "vm3p75ct", role: str = "grid"):  # noqa: ANN201
    store = generic_store()
    driver = get_model(model).create(client, store, DeviceOptions(role=role))
    identity = await driver.read_identity()
    driver.add_items()
    await driver.poll(time.monotonic())
    return driver, store, identity


@pytest.mark.parametrize(("product", "expected"), [(0xA1B1, "vm3p75ct"), (VM_3P5A, "vm3p5a")])
async def test_identified_by_product_id(product: int, expected: str) -> None:
    async with udp_client(VictronMeterSim(product_id=product)) as client:
        assert (await identify(client, timeout=0.5)).name == expected


async def test_other_meters_are_not_taken_for_a_victron_meter() -> None:
    async with udp_client(sdm630(1)) as client:
        assert (await identify(client, timeout=0.5)).name == "sdm630"


async def test_three_phase_grid_meter_publishes_every_phase() -> None:
    meter = VictronMeterSim(serial="HQ22334455X", firmware=(0, 1, 9, 0xFF))
    meter.phase_power = [1200.0, -300.0, 450.0]
    async with udp_client(meter) as client:
        driver, store, identity = await connect(client)
    assert (identity.serial, identity.firmware, identity.hardware) == ("HQ22334455X", "v1.09", "1")
    assert store["/Ac/Power"] == 1350.0
    assert [store[f"/Ac/L{n}/Power"] for n in (1, 2, 3)] == [1200.0, -300.0, 450.0]
    assert [store[f"/Ac/L{n}/Voltage"] for n in (1, 2, 3)] == [230.0, 231.0, 229.0]
    assert store["/Ac/L1/Current"] == pytest.approx(1200 / 230, abs=0.01)
    assert store["/Ac/L2/Current"] == pytest.approx(-300 / 231, abs=0.01)
    assert store["/Ac/Frequency"] == 50.0
    assert store["/Ac/L1/VoltageLineToLine"] == pytest.approx(398.4, abs=0.1)
    assert store["/Ac/PowerFactor"] == 1.0
    assert store.item("/PhaseSequence").text == "L1-L2-L3"
    assert store["/Capabilities/HasUdpSnapshots"] == 1
    assert store["/NrOfPhases"] == 3
    assert "/IsGenericEnergyMeter" not in store
    assert isinstance(store["/Ac/N/Current"], float)
    assert store.item("/Ac/L1/Power").text == "1200.0 W"
    assert isinstance(store["/Ac/Power"], float)
    # the counters are there (near zero on a fresh meter) and typed as floats
    assert isinstance(store["/Ac/Energy/Forward"], float) and isinstance(store["/Ac/L2/Energy/Reverse"], float)


async def test_vm3p5a_reads_its_32_bit_currents() -> None:
    meter = VictronMeterSim(product_id=VM_3P5A)
    meter.phase_power = [23000.0, 0.0, 0.0]  # 100 A: beyond a 16-bit 0.01 A register
    async with udp_client(meter) as client:
        _, store, _ = await connect(client, "vm3p5a")
    assert store["/Ac/L1/Current"] == pytest.approx(100.0, abs=0.01)


async def test_single_phase_configuration_publishes_l1_only() -> None:
    meter = VictronMeterSim(phases=1)
    meter.phase_power = [500.0]
    async with udp_client(meter) as client:
        _, store, _ = await connect(client, role="acload")
    assert store["/NrOfPhases"] == 1
    assert store["/Ac/L1/Power"] == 500.0
    assert not any(p.startswith(("/Ac/L2/", "/Ac/L3/")) for p in store.items)
    assert store["/IsGenericEnergyMeter"] == 1


async def test_old_firmware_gets_only_what_it_has() -> None:
    meter = VictronMeterSim(firmware=(0, 1, 5, 0xFF))
    async with udp_client(meter) as client:
        _, store, identity = await connect(client)
    assert identity.firmware == "v1.05"
    assert "/Ac/Power" in store and "/Ac/L3/Voltage" in store
    for path in ("/Ac/N/Current", "/Ac/PowerFactor", "/Ac/L1/VoltageLineToLine", "/PhaseSequence"):
        assert path not in store
    assert store["/Capabilities/HasUdpSnapshots"] == 0


async def test_custom_name_is_written_through_vreglink_and_read_back() -> None:
    meter = VictronMeterSim(custom_name="Main")
    async with udp_client(meter) as client:
        driver, store, _ = await connect(client)
        assert store["/CustomName"] == "Main"
        assert store.write("/CustomName", "Garage Ünit") == 0
        # within the GUI's 32 characters, but 90 bytes of UTF-8: longer than the meter's 64
        assert store.write("/CustomName", "€" * 30) == 2
        await driver.service_writes(time.monotonic())
        assert meter.vregs[VREG_DESCRIPTION].value == "Garage Ünit".encode()
        await driver.poll(time.monotonic())
        assert store["/CustomName"] == "Garage Ünit"
        assert store["/Devices/0/CustomName"] == "Garage Ünit"
        # VictronConnect renames the meter itself: the service follows
        assert await driver.vreglink.set(VREG_DESCRIPTION, b"Shed") == VregReply(0)
        for sb in driver.schedule:
            sb.next_due = 0.0
        await driver.poll(time.monotonic())
        assert store["/CustomName"] == "Shed"


async def test_n2k_instance_is_written_through_vreglink() -> None:
    meter = VictronMeterSim()
    async with udp_client(meter) as client:
        driver, store, _ = await connect(client)
        assert store["/N2kSystemInstance"] == 0
        assert store.write("/N2kSystemInstance", 3) == 0
        assert store.write("/N2kSystemInstance", 300) == 2
        await driver.service_writes(time.monotonic())
        await driver.poll(time.monotonic())
    assert meter.holding[0x2023] == 3
    assert store["/N2kSystemInstance"] == 3


async def test_vreglink_companion_paths_mirror_the_service() -> None:
    async with udp_client(VictronMeterSim(serial="HQ1")) as client:
        driver, store, _ = await connect(client)
        assert await driver.vreglink.get(0x0100) == VregReply(0, bytes.fromhex("00A1B1FE"))
    assert store["/Devices/0/VregLink"] is None
    assert store["/Devices/0/DeviceInstance"] == 40
    assert store["/Devices/0/ProductId"] == 0xA1B1
    assert store.item("/Devices/0/ProductId").text == "0xA1B1"
    assert store["/Devices/0/ProductName"] == "Energy Meter VM-3P75CT"
    assert store["/Devices/0/ServiceName"] == "com.victronenergy.grid.ve_HQ1"
    store.set(sp.P_INSTANCE, 41)
    await driver.poll(time.monotonic())
    assert store["/Devices/0/DeviceInstance"] == 41
