"""The Venus GUI's "Modbus devices" pages against the running service, on a private bus.

Every test acts exactly as the GUI pages do: it writes the settings strings the GUI
writes (appended ``proto:ip:port:unit`` entries, removal by exact match), toggles
``/Scan`` with a D-Bus boolean, reads ``/ScanProgress`` and its text, switches
``/Devices/<ident>/Enabled`` with int 1/0 - and checks the services that appear.
Devices are simulated on loopback addresses (127.0.0.0/8) and pseudo-terminals.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import string
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from dbus_fast import Message, MessageType, Variant
from test_runtime_support import Observer, fast_config, running_supervisor, wait_until

from mbclient.dbus import variants
from mbclient.discovery.config import DiscoveryConfig
from mbclient.sim import SimBus, SimUnit, growatt_min, sdm230, serve_rtu, serve_tcp
from mbclient.sim.net import serve_silent

BUSITEM = "com.victronenergy.BusItem"
SETTINGS = "com.victronenergy.settings"
TCP_MGMT = "com.victronenergy.modbusclient.tcp"
DEVICES = "/Settings/ModbusClient/tcp/Devices"
AUTOSCAN = "/Settings/ModbusClient/tcp/AutoScan"


def unique_serial() -> str:
    """mDNS on loopback is shared by every process of this machine (another test run may
    announce meters at the same time): each test's meter gets a serial of its own."""
    return "HQ" + "".join(random.choices(string.ascii_uppercase + string.digits, k=9))


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def call(obs: Observer, name: str, path: str, member: str, signature: str = "", body: list | None = None) -> Any:
    reply = await obs.bus.call(Message(destination=name, path=path, interface=BUSITEM, member=member,
                                       signature=signature, body=body or []))
    if reply.message_type is MessageType.ERROR:
        raise LookupError(f"{name} {path} {member}: {reply.error_name} {reply.body}")
    return reply.body[0]


async def gui_set(obs: Observer, name: str, path: str, variant: Variant) -> int:
    """SetValue with the exact D-Bus type the GUI sends."""
    return await call(obs, name, path, "SetValue", "v", [variant])


async def raw_value(obs: Observer, name: str, path: str) -> Variant:
    return await call(obs, name, path, "GetValue")


@contextlib.asynccontextmanager
async def net_devices(hosts: dict[str, Any], port: int) -> AsyncIterator[None]:
    """One simulated Modbus TCP device per loopback host."""
    async with contextlib.AsyncExitStack() as stack:
        for host, unit in hosts.items():
            await stack.enter_async_context(serve_tcp(SimBus(units=[unit]), host=host, port=port))
        yield


def net_config(dbus_address: str, tmp_path, port: int, **discovery: Any):
    d = dict(networks=("127.77.1.0/29",), port=port, start_delay=0.2, net_timeout=0.25, mdns=False)
    d.update(discovery)
    return fast_config(dbus_address, tmp_path / "settings.json", [], discovery=DiscoveryConfig(**d))


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_gui_scan_button_finds_saves_and_publishes_network_devices(dbus_address: str, tmp_path) -> None:
    port = free_port("127.77.1.2")
    meter, inverter = sdm230(1, serial=23000777), growatt_min(1, serial="QXB7770001")
    async with net_devices({"127.77.1.2": meter, "127.77.1.3": inverter}, port):
        obs = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(net_config(dbus_address, tmp_path, port)) as sup:
                await obs.wait_name(TCP_MGMT)
                # The management service: no /DeviceInstance (MQTT files it as instance 0)
                assert "/DeviceInstance" not in await call(obs, TCP_MGMT, "/", "GetItems")
                scan = await raw_value(obs, TCP_MGMT, "/Scan")
                assert scan.signature == "b" and scan.value is False
                assert (await raw_value(obs, TCP_MGMT, "/ScanProgress")).signature == "ai"  # invalid
                assert await call(obs, TCP_MGMT, "/ScanProgress", "GetText") == "---"
                # AutoScan of the network instance is created off (0), range 0..1
                assert await obs.get(SETTINGS, AUTOSCAN) == 0

                # "Scan for devices": the GUI writes !value as a boolean
                assert await gui_set(obs, TCP_MGMT, "/Scan", Variant("b", True)) == 0
                seen: list[tuple[bool, Any, str]] = []
                with anyio.fail_after(20):
                    while True:
                        v = await raw_value(obs, TCP_MGMT, "/Scan")
                        prog = await obs.get(TCP_MGMT, "/ScanProgress")
                        text = await call(obs, TCP_MGMT, "/ScanProgress", "GetText")
                        seen.append((v.value, prog, text))
                        if sup.discovery.scans >= 1 and not v.value:
                            break
                        await anyio.sleep(0.01)
                running = [(p, t) for v, p, t in seen if v and p is not None]
                assert running, "the scan was never seen running"
                for p, t in running:  # value and text are two calls: the scan may move between them
                    assert isinstance(p, float) and 0.0 <= p <= 100.0
                    assert re.fullmatch(r"\d{1,3}%|---", t), t
                assert any(t == f"{int(p)}%" for p, t in running)
                assert await obs.get(TCP_MGMT, "/ScanProgress") is None  # invalid again at the end

                # Found devices are saved (canonical, sorted) and started
                want = f"tcp:127.77.1.2:{port}:1,tcp:127.77.1.3:{port}:1"
                await obs.wait_for(SETTINGS, DEVICES, lambda v: v == want)
                await obs.wait_name("com.victronenergy.grid.eastron_23000777")
                await obs.wait_name("com.victronenergy.pvinverter.growatt_QXB7770001")
                # saved devices are Enabled (the stock rule: forced to 1)
                await obs.wait_for(SETTINGS, "/Settings/Devices/eastron_23000777/Enabled", lambda v: v == 1)

                # a second scan leaves configured hosts alone: nothing new is found
                assert await gui_set(obs, TCP_MGMT, "/Scan", Variant("b", True)) == 0
                await wait_until(lambda: sup.discovery.scans >= 2, 20, "second scan")
                assert sup.discovery.last_found == []
        finally:
            obs.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_gui_device_list_edits_apply_and_are_rewritten(dbus_address: str, tmp_path, caplog) -> None:
    port = free_port("127.77.1.2")
    meter = sdm230(1, serial=23000888)
    async with net_devices({"127.77.1.2": meter}, port):
        obs = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(net_config(dbus_address, tmp_path, port)):
                await obs.wait_name(TCP_MGMT)
                # "Add device" appends what the user typed: leading zeros, a duplicate, junk,
                # and a device that is not there (no listener on .5)
                typed = (f"tcp:127.77.1.2:0{port}:01,tcp:127.77.1.5:{port}:1,not-a-device,"
                         f"tcp:127.77.1.2:{port}:1")
                caplog.set_level(logging.WARNING)
                assert await gui_set(obs, SETTINGS, DEVICES, Variant("s", typed)) == 0
                await obs.wait_name("com.victronenergy.grid.eastron_23000888")
                want = f"tcp:127.77.1.2:{port}:1,tcp:127.77.1.5:{port}:1"  # failing entry kept
                await obs.wait_for(SETTINGS, DEVICES, lambda v: v == want)
                junk = [r for r in caplog.records if "not-a-device" in r.getMessage()]
                assert len(junk) == 1, [r.getMessage() for r in caplog.records]

                # "Remove": the GUI deletes the entry that matches exactly and joins the rest
                entries = (await obs.get(SETTINGS, DEVICES)).split(",")
                entries.remove(f"tcp:127.77.1.2:{port}:1")
                assert await gui_set(obs, SETTINGS, DEVICES, Variant("s", ",".join(entries))) == 0
                await obs.wait_name("com.victronenergy.grid.eastron_23000888", present=False)
                assert await obs.get(SETTINGS, DEVICES) == f"tcp:127.77.1.5:{port}:1"

                # "Automatic scanning" switch: writes 1/0 into an int setting limited to 0..1
                assert await gui_set(obs, SETTINGS, AUTOSCAN, Variant("i", 1)) == 0
                assert (await raw_value(obs, SETTINGS, AUTOSCAN)).value == 1
                assert await gui_set(obs, SETTINGS, AUTOSCAN, Variant("i", 2)) != 0
        finally:
            obs.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_scan_request_while_scanning_and_stop(dbus_address: str, tmp_path, caplog) -> None:
    """A second request while a scan runs is one log line; writing false stops the scan."""
    port = free_port("127.77.2.1")
    obs = await Observer.connect(dbus_address)
    try:
        # hosts that accept and never answer, a long timeout, little concurrency: a long scan
        cfg = net_config(dbus_address, tmp_path, port, networks=("127.77.2.0/28",), net_timeout=1.0,
                         net_concurrency=2)
        async with serve_silent([f"127.77.2.{i}" for i in range(1, 15)], port), running_supervisor(cfg) as sup:
            await obs.wait_name(TCP_MGMT)
            caplog.set_level(logging.INFO, logger="mbclient.discovery")
            assert await gui_set(obs, TCP_MGMT, "/Scan", Variant("b", True)) == 0
            await obs.wait_for(TCP_MGMT, "/Scan", lambda v: v is True)
            # a second press (an int this time: accepted like the stock client) is ignored
            assert await gui_set(obs, TCP_MGMT, "/Scan", Variant("i", 1)) == 0
            await wait_until(lambda: any("already running" in r.getMessage() for r in caplog.records), 5,
                             "log line")
            assert await obs.get(TCP_MGMT, "/Scan") is True
            # a bad type is refused without effect
            assert await gui_set(obs, TCP_MGMT, "/Scan", Variant("s", "yes")) == 1
            assert await gui_set(obs, TCP_MGMT, "/Scan", Variant("b", False)) == 0
            await obs.wait_for(TCP_MGMT, "/Scan", lambda v: v is False, timeout=5)
            assert await obs.get(TCP_MGMT, "/ScanProgress") is None
            assert sup.discovery.scanner is None
    finally:
        obs.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_serial_port_autoscan_and_management_service(dbus_address: str, tmp_path) -> None:
    """A serial instance: AutoScan (default 1) finds the unit at its rate at start; the
    port's own management service runs a full scan on request and saves what it finds."""
    # unit 7 answers within 5 ms: the full scan's 40 ms timeout keeps a margin on a loaded machine
    bus = SimBus(baud=38400, units=[growatt_min(1, serial="QXB2400001"), sdm230(7, serial=24000007, turnaround=0.005)])
    async with serve_rtu(bus, directory=tmp_path, strict_baud=True) as port:
        obs = await Observer.connect(dbus_address)
        try:
            cfg = fast_config(dbus_address, tmp_path / "settings.json", [], port_name="ttyUSB0",
                              discovery=DiscoveryConfig(serial_port=port.path, rates=(9600, 38400),
                                                        start_delay=0.2, full_timeout=0.04, mdns=False))
            async with running_supervisor(cfg) as sup:
                mgmt = "com.victronenergy.modbusclient.ttyUSB0"
                await obs.wait_name(mgmt)
                assert await obs.get(SETTINGS, "/Settings/ModbusClient/ttyUSB0/AutoScan") == 1
                # quick scan: 9600 first (nothing: the units hear noise), then 38400
                saved = "/Settings/ModbusClient/ttyUSB0/Devices"
                await obs.wait_for(SETTINGS, saved, lambda v: v == f"rtu:{port.path}:38400:1", timeout=20)
                await obs.wait_name("com.victronenergy.pvinverter.growatt_QXB2400001")
                assert port.misheard > 0
                # unit 7 is no default unit: only a full scan finds it; the GUI-style request
                assert await gui_set(obs, mgmt, "/Scan", Variant("b", True)) == 0
                # the serial scan's progress is visible like the network one's
                await obs.wait_for(mgmt, "/ScanProgress", lambda v: isinstance(v, float) and 0 < v < 100)
                await obs.wait_for(SETTINGS, saved, lambda v: "38400:7" in v, timeout=60)
                assert await obs.get(SETTINGS, saved) == f"rtu:{port.path}:38400:1,rtu:{port.path}:38400:7"
                await obs.wait_name("com.victronenergy.grid.eastron_24000007")
                await obs.wait_for(mgmt, "/Scan", lambda v: v is False, timeout=60)
                # the running inverter was polled throughout, and nothing was written by the scan
                assert bus.collided_frames() == []
                assert bus[7].counters.writes == 0
                assert sup.discovery.scans >= 2
        finally:
            obs.close()


def test_item_boolean_flag_is_published_as_b() -> None:
    from mbclient.items import ItemStore

    store = ItemStore()
    item = store.add("/Scan", False, writable=True, kind=int, boolean=True)
    assert variants.wrap_item(item).signature == "b"
    assert store.write("/Scan", True) == 0 and variants.wrap_item(item).value is True
    plain = store.add("/Flag", True)
    assert variants.wrap_item(plain).signature == "i"  # everything else: ints, never booleans


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_serial_starter_cycle_exit_1_when_nothing_answers(dbus_address: str, tmp_path) -> None:
    """serial-starter runs ``-x -s <tty>``: nothing on the port -> exit status 1 (next driver)."""
    from test_cli_run import finish, start_cli

    # unit 1 answers, but like no model we know (another driver's device): not ours either
    stranger = SimUnit(1, holding={i: 0xFFFF for i in range(0, 64)}, strict=False)
    async with serve_rtu(SimBus(baud=9600, units=[stranger]), directory=tmp_path) as port:
        proc = await start_cli("-x", "-s", port.path, "--dbus", dbus_address, "--settings",
                               str(tmp_path / "s.json"))
        code, _out, err = await finish(proc, 30)
    assert code == 1, err
    assert "matches no known model" in err  # it did answer
    assert "nothing answers on" in err and "Traceback" not in err


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_serial_starter_cycle_keeps_running_when_the_scan_finds_a_device(dbus_address: str, tmp_path) -> None:
    from test_cli_run import finish, running_cli

    bus = SimBus(baud=9600, units=[sdm230(1, serial=23000991)])
    async with serve_rtu(bus, directory=tmp_path, link_name="ttyUSB3") as port:
        obs = await Observer.connect(dbus_address)
        try:
            async with running_cli("-x", "-s", port.path, "--dbus", dbus_address, "--settings",
                                   str(tmp_path / "s.json")) as proc:
                await obs.wait_name("com.victronenergy.grid.eastron_23000991", timeout=20)
                await obs.wait_for(SETTINGS, "/Settings/ModbusClient/ttyUSB3/Devices",
                                   lambda v: v == f"rtu:{port.path}:9600:1")
                assert proc.returncode is None
                proc.terminate()
                code, _out, err = await finish(proc)
            assert code == 0, err
        finally:
            obs.close()


@contextlib.asynccontextmanager
async def mdns_responder(name: str, host: str, port: int) -> AsyncIterator[Any]:
    """A real mDNS responder (zeroconf) on the loopback interface only, announcing a
    Victron energy meter the way the meter itself does."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo("_victron-energy-meter._udp.local.", f"{name}._victron-energy-meter._udp.local.",
                            addresses=[socket.inet_aton(host)], port=port, server=f"{name}.local.")
    await zc.async_register_service(info, strict=False, allow_name_change=True)
    try:
        yield zc, info
    finally:
        with contextlib.suppress(Exception):
            await zc.async_unregister_service(info)
        await zc.async_close()


async def items_changed_listener(obs: Observer, sender: str) -> list[dict[str, Any]]:
    """Collect ItemsChanged bodies of ``sender`` (a unique or well-known name)."""
    from mbclient.dbus.bus import call_dbus

    signals: list[dict[str, Any]] = []
    unique = (await call_dbus(obs.bus, "GetNameOwner", "s", [sender]))[0]

    def on_message(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "ItemsChanged" and msg.sender == unique:
            signals.append({k: variants.unwrap_published(v["Value"]) for k, v in msg.body[0].items()})

    obs.bus.add_message_handler(on_message)
    await call_dbus(obs.bus, "AddMatch", "s", [f"type='signal',sender='{sender}',member='ItemsChanged'"])
    return signals


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_mdns_discovered_meter_is_listed_and_switched_by_the_gui(dbus_address: str, tmp_path) -> None:
    from mbclient.sim import serve_udp
    from mbclient.sim.vreg import VictronMeterSim

    host = "127.77.5.2"
    serial = unique_serial()
    meter = VictronMeterSim(serial=serial)
    async with serve_udp(meter, host=host, port=0) as server, \
            mdns_responder(f"VM-3P75CT {serial}", host, server.port) as (_zc, info):
        obs = await Observer.connect(dbus_address)
        try:
            cfg = net_config(dbus_address, tmp_path, 502, mdns=True, mdns_interfaces=("127.0.0.1",))
            async with running_supervisor(cfg) as sup:
                await obs.wait_name(TCP_MGMT)
                changes = await items_changed_listener(obs, TCP_MGMT)
                base = f"/Devices/ve_{serial}"
                await obs.wait_for(TCP_MGMT, f"{base}/Enabled", lambda v: v == 0, timeout=20)
                raw = await raw_value(obs, TCP_MGMT, f"{base}/Enabled")
                assert raw.signature == "i"  # gui-v2 compares with === 1
                assert await obs.get(TCP_MGMT, f"{base}/Serial") == serial
                assert "VM-3P75CT" in await obs.get(TCP_MGMT, f"{base}/Name")
                added = [c for c in changes if f"{base}/Enabled" in c]
                assert added and set(added[0]) >= {f"{base}/Enabled", f"{base}/Name", f"{base}/Serial"}
                # never written to the Devices list, and not running while disabled
                assert await obs.get(SETTINGS, DEVICES) == ""
                assert await obs.get(SETTINGS, f"/Settings/Devices/ve_{serial}/Enabled") == 0
                names = [n for n in await obs.names() if n.endswith(f"ve_{serial}")]
                assert names == []

                # the GUI's switch: int 1 starts the device's own service, 0 removes it
                assert await gui_set(obs, TCP_MGMT, f"{base}/Enabled", Variant("i", 1)) == 0
                await obs.wait_name(f"com.victronenergy.grid.ve_{serial}", timeout=20)
                await obs.wait_for(SETTINGS, f"/Settings/Devices/ve_{serial}/Enabled", lambda v: v == 1)
                assert await gui_set(obs, TCP_MGMT, f"{base}/Enabled", Variant("i", 0)) == 0
                await obs.wait_name(f"com.victronenergy.grid.ve_{serial}", present=False, timeout=20)
                assert await gui_set(obs, TCP_MGMT, f"{base}/Enabled", Variant("i", 2)) == 2  # 0/1 only
                assert await obs.get(SETTINGS, DEVICES) == ""

                # the meter says goodbye: its subtree leaves in one ItemsChanged
                await _zc.async_unregister_service(info)
                await wait_until(lambda: any(f"{base}/Enabled" in c and c[f"{base}/Enabled"] is None
                                             for c in changes), 20, "removal signal")
                gone = [c for c in changes if f"{base}/Enabled" in c and c[f"{base}/Enabled"] is None]
                assert set(gone[0]) == {f"{base}/Enabled", f"{base}/Name", f"{base}/Serial"}
                assert all(v is None for v in gone[0].values())
                items = await call(obs, TCP_MGMT, "/", "GetItems")
                assert not any(p.startswith(base) for p in items)
                del sup
        finally:
            obs.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_mdns_device_this_gx_knew_starts_enabled(dbus_address: str, tmp_path) -> None:
    """The stock default rule: Enabled defaults to 1 when /Settings/Devices/<ident> exists."""
    from mbclient.dbus.settings import SettingsClient
    from mbclient.sim import serve_udp
    from mbclient.sim.vreg import VictronMeterSim

    store = SettingsClient
    sc = await store.connect(dbus_address, embedded_path=tmp_path / "settings.json", force_embedded=True,
                             save_delay=0)
    serial = unique_serial()
    await sc.claim_device(f"ve_{serial}", "grid", 40)  # a device this GX had before
    await sc.close()
    host = "127.77.5.3"
    async with serve_udp(VictronMeterSim(serial=serial), host=host, port=0) as server, \
            mdns_responder(f"VM-3P75CT {serial}", host, server.port):
        obs = await Observer.connect(dbus_address)
        try:
            cfg = net_config(dbus_address, tmp_path, 502, mdns=True, mdns_interfaces=("127.0.0.1",))
            async with running_supervisor(cfg):
                await obs.wait_name(f"com.victronenergy.grid.ve_{serial}", timeout=20)
                assert await obs.get(TCP_MGMT, f"/Devices/ve_{serial}/Enabled") == 1
                assert await obs.get(SETTINGS, f"/Settings/Devices/ve_{serial}/Enabled") == 1
                assert await obs.get(SETTINGS, DEVICES) == ""
        finally:
            obs.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_autoscan_repeats_while_a_saved_device_is_missing(dbus_address: str, tmp_path) -> None:
    from mbclient.dbus.settings import Setting, SettingsClient

    bus = SimBus(baud=38400, units=[sdm230(1, serial=23000111)])
    async with serve_rtu(bus, directory=tmp_path, link_name="ttyUSB4", strict_baud=True) as port:
        saved = "/Settings/ModbusClient/ttyUSB4/Devices"
        sc = await SettingsClient.connect(dbus_address, embedded_path=tmp_path / "settings.json",
                                          force_embedded=True, save_delay=0)
        await sc.add([Setting(saved, f"rtu:{port.path}:38400:5")])  # saved earlier; unit 5 is gone
        await sc.close()
        obs = await Observer.connect(dbus_address)
        try:
            cfg = fast_config(dbus_address, tmp_path / "settings.json", [], port_name="ttyUSB4",
                              discovery=DiscoveryConfig(serial_port=port.path, rates=(38400,), start_delay=0.3,
                                                        rescan_interval=0.5, mdns=False))
            async with running_supervisor(cfg) as sup:
                # the missing unit triggers the start-up scan, which finds unit 1; unit 5 is kept
                await obs.wait_for(SETTINGS, saved,
                                   lambda v: v == f"rtu:{port.path}:38400:1,rtu:{port.path}:38400:5")
                await obs.wait_name("com.victronenergy.grid.eastron_23000111")
                await wait_until(lambda: sup.discovery.scans >= 3, 10, "rescans while unit 5 is missing")
                # "Automatic scanning" off: no more scans
                assert await gui_set(obs, SETTINGS, "/Settings/ModbusClient/ttyUSB4/AutoScan", Variant("i", 0)) == 0
                await wait_until(lambda: sup.discovery.autoscan == 0, 5, "AutoScan off")
                await wait_until(lambda: not sup.discovery.busy, 5, "scan over")
                n = sup.discovery.scans
                await anyio.sleep(1.5)
                assert sup.discovery.scans == n
                assert bus[1].counters.writes == 0
        finally:
            obs.close()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_stands_aside_when_another_client_serves_the_gui(dbus_address: str, tmp_path) -> None:
    """The stock client kept running owns modbusclient.tcp: no second scanner, no rewrite."""
    from dbus_fast import NameFlag

    from mbclient.dbus.bus import connect_bus
    from mbclient.dbus.settings import Setting, SettingsClient

    sc = await SettingsClient.connect(dbus_address, embedded_path=tmp_path / "settings.json", force_embedded=True,
                                      save_delay=0)
    messy = "tcp:127.77.6.2:0502:01,junk"
    await sc.add([Setting(DEVICES, messy), Setting(AUTOSCAN, 1, 0, 1)])
    await sc.close()
    stock = await connect_bus(dbus_address)
    await stock.request_name(TCP_MGMT, NameFlag.DO_NOT_QUEUE)
    obs = await Observer.connect(dbus_address)
    try:
        cfg = net_config(dbus_address, tmp_path, 502, start_delay=0.1, mdns=True, mdns_interfaces=("127.0.0.1",))
        async with running_supervisor(cfg) as sup:
            await wait_until(lambda: sup.discovery is not None and sup.discovery.passive, 5, "passive")
            await anyio.sleep(0.5)
            assert sup.discovery.scans == 0 and sup.discovery.mdns is None
            assert await obs.get(SETTINGS, DEVICES) == messy  # the stock client's to rewrite
    finally:
        stock.disconnect()
        obs.close()
