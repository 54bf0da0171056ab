"""Runtime configuration and publication details, against the real bus and settings:
the Devices setting changed at runtime, a lost serial port, roles, persisted paths, and
the health counters under /Mgmt/Stats."""

from __future__ import annotations

import anyio
import pytest
from dbus_fast import Message, MessageType
from test_runtime_support import (
    BAUD,
    Observer,
    fast_config,
    running_supervisor,
    site_on_pty,
    spec_for,
)

from mbclient.dbus import variants
from mbclient.sim import SimBus, sdm230, serve_rtu

pytestmark = pytest.mark.asyncio

METER = "com.victronenergy.grid.eastron_23000123"
INVERTER = "com.victronenergy.pvinverter.growatt_QXB1234567"


@pytest.mark.timeout(60)
async def test_devices_setting_adds_and_removes_devices_at_runtime(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        meter_spec = spec_for(port.path, 2, "sdm230")
        config = fast_config(dbus_address, tmp_path / "settings.xml", [meter_spec], port_name="ttyUSB0")
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:
                await observer.wait_name(METER)
                assert INVERTER not in await observer.names()
                setting = "/Settings/ModbusClient/ttyUSB0/Devices"
                # the GUI (or a user) saves the inverter in the device list: started, no restart
                code = await observer.set("com.victronenergy.settings", setting, f"{spec_for(port.path, 1)}")
                assert code == 0
                await observer.wait_name(INVERTER)
                await observer.wait_for(INVERTER, "/Ac/Power", lambda v: v is not None)
                # junk in the list is ignored, the rest keeps running
                await observer.set("com.victronenergy.settings", setting, f"{spec_for(port.path, 1)},rtu:bogus")
                await anyio.sleep(0.3)
                assert INVERTER in await observer.names()
                # removed from the list: its service goes, the forced meter stays untouched
                await observer.set("com.victronenergy.settings", setting, "")
                await observer.wait_name(INVERTER, present=False)
                assert observer.disappeared(METER) == 0
                assert await observer.get(METER, "/Connected") == 1
                assert sup.device(spec_for(port.path, 1)) is None
        finally:
            observer.close()


@pytest.mark.timeout(60)
async def test_lost_serial_port_reconnects_and_other_ports_carry_on(dbus_address: str, tmp_path) -> None:
    other_bus = SimBus(BAUD)
    other_bus.add(sdm230(3, serial=23000999))
    other_meter = "com.victronenergy.grid.eastron_23000999"
    async with site_on_pty(tmp_path) as (site, port), \
            serve_rtu(other_bus, directory=tmp_path, link_name="ttyUSB1") as other_port:
        specs = [spec_for(port.path, 1, "growatt_min"), spec_for(port.path, 2, "sdm230"),
                 spec_for(other_port.path, 3, "sdm230")]
        config = fast_config(dbus_address, tmp_path / "settings.xml", specs)
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config) as sup:
                for name in (INVERTER, METER, other_meter):
                    await observer.wait_for(name, "/Connected", lambda v: v == 1)
                other_stats = sup.device(specs[2]).link.stats(3)

                port.unplug()  # the USB adapter is pulled
                await observer.wait_for(INVERTER, "/Connected", lambda v: v == 0)
                await observer.wait_for(METER, "/Connected", lambda v: v == 0)
                assert await observer.get(METER, "/Ac/Power") is None
                before = other_stats.transactions
                await anyio.sleep(1.0)
                assert other_stats.transactions > before + 2  # the other port kept polling (power: 4 reads/s)
                assert await observer.get(other_meter, "/Connected") == 1

                port.replug()  # and put back: the link reopens it by itself
                await observer.wait_for(INVERTER, "/Connected", lambda v: v == 1, timeout=20)
                await observer.wait_for(METER, "/Connected", lambda v: v == 1, timeout=20)
                await observer.wait_for(METER, "/Ac/Power", lambda v: v is not None)
                for name in (INVERTER, METER, other_meter):
                    assert observer.disappeared(name) == 0
        finally:
            observer.close()


@pytest.mark.timeout(60)
async def test_role_custom_name_and_position_persist(dbus_address: str, tmp_path) -> None:
    settings_file = tmp_path / "settings.xml"
    async with site_on_pty(tmp_path) as (site, port):
        meter_spec = spec_for(port.path, 2, "sdm230")
        config = fast_config(dbus_address, settings_file, [meter_spec])
        observer = await Observer.connect(dbus_address)
        pv_meter = "com.victronenergy.pvinverter.eastron_23000123"
        try:
            async with running_supervisor(config):
                await observer.wait_name(METER)
                assert await observer.get(METER, "/Role") == "grid"
                assert "pvinverter" in await observer.get(METER, "/AllowedRoles")
                with pytest.raises(LookupError):  # a grid meter has no /Position
                    await observer.get(METER, "/Position")
                instance = await observer.get(METER, "/DeviceInstance")
                assert await observer.set(METER, "/Role", "heatpump2") != 0  # not an allowed role
                assert await observer.set(METER, "/CustomName", "PV meter") == 0
                assert await observer.set(METER, "/Role", "pvinverter") == 0
                await observer.wait_name(pv_meter)
                await observer.wait_name(METER, present=False)
                assert await observer.get(pv_meter, "/DeviceInstance") == instance
                assert await observer.get(pv_meter, "/Position") == 0
                assert await observer.set(pv_meter, "/Position", 3) != 0
                assert await observer.set(pv_meter, "/Position", 1) == 0
                assert await observer.get(pv_meter, "/CustomName") == "PV meter"
                await observer.wait_for(pv_meter, "/Ac/Power", lambda v: v is not None)
                await anyio.sleep(0.3)  # let the settings writes land
            await observer.wait_name(pv_meter, present=False)

            async with running_supervisor(config):  # a restart keeps all three
                await observer.wait_name(pv_meter)
                assert await observer.get(pv_meter, "/Role") == "pvinverter"
                assert await observer.get(pv_meter, "/Position") == 1
                assert await observer.get(pv_meter, "/CustomName") == "PV meter"
                assert await observer.get(pv_meter, "/DeviceInstance") == instance
                assert await observer.get(pv_meter, "/IsGenericEnergyMeter") == 1
        finally:
            observer.close()


@pytest.mark.timeout(60)
async def test_health_counters_on_dbus_without_a_signal_storm(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        meter_spec = spec_for(port.path, 2, "sdm230")
        config = fast_config(dbus_address, tmp_path / "settings.xml", [meter_spec], stats_interval=0.5)
        observer = await Observer.connect(dbus_address)
        stats_signals: list[dict] = []

        def on_message(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "ItemsChanged":
                changes = msg.body[0]
                if "/Mgmt/Stats/Transactions" in changes:
                    stats_signals.append({k: variants.unwrap_published(v["Value"]) for k, v in changes.items()})

        observer.bus.add_message_handler(on_message)
        await observer.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="AddMatch", signature="s", body=["type='signal',interface='com.victronenergy.BusItem',member='ItemsChanged'"],
        ))
        try:
            async with running_supervisor(config) as sup:
                await observer.wait_name(METER)
                first = await observer.wait_for(METER, "/Mgmt/Stats/Transactions", lambda v: v and v > 0)
                stats_signals.clear()
                await anyio.sleep(2.0)
                tx = await observer.get(METER, "/Mgmt/Stats/Transactions")
                assert tx > first
                # many transactions, but the counters went out at most once per interval
                link_tx = sup.device(meter_spec).link.stats(2).transactions
                assert link_tx - first > 5  # power 4/s, the rest every 2 s or slower
                assert 1 <= len(stats_signals) <= 2.0 / config.stats_interval + 1
                # a healthy line has none, but a starved test process may miss a 50 ms test timeout:
                # what is published is the link's own count as of the last publication
                timeouts = await observer.get(METER, "/Mgmt/Stats/Timeouts")
                assert isinstance(timeouts, int) and 0 <= timeouts <= sup.device(meter_spec).link.stats(2).timeouts
                latency = await observer.get(METER, "/Mgmt/Stats/Latency")
                assert latency is not None and 0 < latency < 1000  # milliseconds
                refresh = await observer.get(METER, "/Mgmt/Stats/RefreshInterval")
                # the FAST class's own interval (0.25 s), not the cycles that read slow blocks
                assert refresh is not None and refresh >= 0.2
                assert await observer.get(METER, "/Mgmt/Stats/State") == "online"
                assert await observer.get(METER, "/Mgmt/Connection") == "Modbus RTU ttyUSB0:2"
                assert await observer.get(METER, "/Mgmt/ProcessName") == "mbclient"
        finally:
            observer.close()


@pytest.mark.timeout(60)
async def test_remote_write_reaches_the_device(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (site, port):
        inv_spec = spec_for(port.path, 1, "growatt_min")
        config = fast_config(dbus_address, tmp_path / "settings.xml", [inv_spec])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await observer.wait_for(INVERTER, "/Ac/PowerLimit", lambda v: v is not None)
                assert site.inverter.rate == 255  # no limit
                assert await observer.set(INVERTER, "/Ac/PowerLimit", 2100.0) == 0  # ESS asks for half
                # the device task wakes for the write and sends it through the priority lane
                with anyio.fail_after(3):
                    while site.inverter.rate != 50:
                        await anyio.sleep(0.01)
                await observer.wait_for(INVERTER, "/Ac/Power", lambda v: v is not None and v <= 2100 * 1.02)
        finally:
            observer.close()
