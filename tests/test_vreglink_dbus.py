"""GetVreg/SetVreg over a real private D-Bus, called from other processes.

The service side is the real stack: a ``ServiceExport`` of an ItemStore with the VregLink
interface attached, a ``VregLink`` over Modbus UDP, and the simulated meter behind it.
Callers are ``dbus-send`` (libdbus) and jeepney in a subprocess (an interface-less call,
as velib-style proxies make), so nothing in-process can make a test pass by accident.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from fixtures_dbus import run_tool

from mbclient.dbus.service import ServiceExport
from mbclient.dbus.vreglink import attach_vreglink
from mbclient.items import ItemStore
from mbclient.runtime import service_paths as sp
from mbclient.sim import serve_udp
from mbclient.sim.vreg import VREG_DESCRIPTION, Vreg, VictronMeterSim
from mbclient.transports.base import UnitClient
from mbclient.transports.udp import UdpLink
from mbclient.vreglink import VregLink, add_vreglink_items, mirror_vreglink_items

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

NAME = "com.victronenergy.grid.ve_HQ0001"
PATH = "/Devices/0/VregLink"
IFACE = "com.victronenergy.VregLink"


@asynccontextmanager
async def published(address: str, meter: VictronMeterSim) -> AsyncIterator[ServiceExport]:
    async with serve_udp(meter, turnaround=False) as server:
        link = UdpLink(server.host, server.port)
        store = ItemStore()
        sp.add_generic_paths(store, process_name="mbclient", connection="Modbus UDP", instance=40,
                             product_id=0xA1B1, product_name="Energy Meter VM-3P75CT", known=None,
                             custom_name="", on_custom_name=lambda v: True)
        add_vreglink_items(store)
        mirror_vreglink_items(store, NAME)
        export = ServiceExport(store, address)
        attach_vreglink(export, VregLink(UnitClient(link, 1), 0x4000, 32, timeout=0.3))
        await export.start(NAME)
        try:
            yield export
        finally:
            await export.stop()
            await link.aclose()


async def dbus_send(address: str, member: str, *args: str) -> tuple[int, bytes]:
    """Call ``member`` with dbus-send and parse '(q status, ay data)' from its output."""
    out = await run_tool("dbus-send", f"--bus={address}", "--print-reply", f"--dest={NAME}", PATH,
                         f"{IFACE}.{member}", *args)
    status = int(re.search(r"uint16 (\d+)", out).group(1))
    text = re.search(r'array of bytes "(.*)"', out)
    if text is not None:  # dbus-send prints printable byte arrays as a string
        return status, text.group(1).encode()
    hexes = re.search(r"array of bytes \[(.*?)\]", out, re.S)
    return status, bytes.fromhex(hexes.group(1)) if hexes else b""


def byte_arg(data: bytes) -> str:
    return "array:byte:" + ",".join(f"0x{b:02x}" for b in data)


async def test_get_and_set_vreg_from_dbus_send(dbus_address: str) -> None:
    meter = VictronMeterSim()
    async with published(dbus_address, meter):
        assert await dbus_send(dbus_address, "GetVreg", "uint16:256") == (0, bytes.fromhex("00A1B1FE"))
        assert await dbus_send(dbus_address, "SetVreg", "uint16:268", byte_arg(b"My Precious")) == (0, b"")
        assert meter.vregs[VREG_DESCRIPTION].value == b"My Precious"
        assert meter.holding[0x2002] == 0x4D79  # "My": the meter shows its new name
        assert await dbus_send(dbus_address, "GetVreg", "uint16:268") == (0, b"My Precious")


async def test_every_status_reaches_the_dbus_caller(dbus_address: str) -> None:
    meter = VictronMeterSim()
    meter.vregs[0x0004] = Vreg(readable=False, writable=True)
    async with published(dbus_address, meter):
        assert await dbus_send(dbus_address, "GetVreg", "uint16:2457") == (0x8001, b"")  # 0x0999
        assert await dbus_send(dbus_address, "GetVreg", "uint16:4") == (0x8002, b"")
        assert await dbus_send(dbus_address, "SetVreg", "uint16:2457", byte_arg(b"\1")) == (0x8101, b"")
        assert await dbus_send(dbus_address, "SetVreg", "uint16:256", byte_arg(b"\0\0\0\0")) == (0x8102, b"")
        assert await dbus_send(dbus_address, "SetVreg", "uint16:274", byte_arg(b"\1\2")) == (0x8104, b"")
        # a silent device and a confused one: statuses, never D-Bus errors
        meter.asleep = True
        assert await dbus_send(dbus_address, "GetVreg", "uint16:256") == (0x8000, b"")
        assert await dbus_send(dbus_address, "SetVreg", "uint16:268", byte_arg(b"x")) == (0x8100, b"")
        meter.asleep = False
        meter.vreg_wrong_id = True
        assert await dbus_send(dbus_address, "GetVreg", "uint16:256") == (0x8000, b"")
        meter.vreg_wrong_id = False
        # odd length, and data longer than the block (refused before the bus)
        assert await dbus_send(dbus_address, "SetVreg", "uint16:268", byte_arg(b"odd")) == (0, b"")
        assert await dbus_send(dbus_address, "GetVreg", "uint16:268") == (0, b"odd")
        assert await dbus_send(dbus_address, "SetVreg", "uint16:268", byte_arg(b"y" * 65)) == (0x8104, b"")


JEEPNEY_CALLER = """
import json, sys
from jeepney import DBusAddress, new_method_call
from jeepney.io.blocking import open_dbus_connection
address, name, path = sys.argv[1:4]
conn = open_dbus_connection(address)
out = {}
for member, sig, body in (("GetVreg", "q", (0x100,)), ("SetVreg", "qay", (0x10C, b"Shed")),
                          ("GetVreg", "q", (0x10C,))):
    msg = new_method_call(DBusAddress(path, bus_name=name), member, sig, body)  # no interface
    reply = conn.send_and_get_reply(msg, timeout=30)
    out.setdefault(member, []).append([reply.body[0], reply.body[1].hex()])
busitem = DBusAddress(path, bus_name=name, interface="com.victronenergy.BusItem")
out["value"] = conn.send_and_get_reply(new_method_call(busitem, "GetValue"), timeout=30).body[0]
root = DBusAddress("/", bus_name=name, interface="com.victronenergy.BusItem")
items = conn.send_and_get_reply(new_method_call(root, "GetItems"), timeout=30).body[0]
out["items"] = {k: v["Value"][1] for k, v in items.items() if k.startswith("/Devices/0/")}
conn.close()
print(json.dumps(out))
"""


async def test_interface_less_calls_from_jeepney_and_the_busitem_side(dbus_address: str) -> None:
    meter = VictronMeterSim()
    async with published(dbus_address, meter):
        out = json.loads(await run_tool(sys.executable, "-c", JEEPNEY_CALLER, dbus_address, NAME, PATH))
    assert out["GetVreg"] == [[0, "00a1b1fe"], [0, b"Shed".hex()]]
    assert out["SetVreg"] == [[0, ""]]
    assert out["value"] == ["ai", []]  # the VregLink object is a BusItem without value
    assert out["items"] == {
        "/Devices/0/VregLink": [],
        "/Devices/0/DeviceInstance": 40,
        "/Devices/0/ProductId": 0xA1B1,
        "/Devices/0/ProductName": "Energy Meter VM-3P75CT",
        "/Devices/0/ServiceName": NAME,
        "/Devices/0/CustomName": "",
        "/Devices/0/FirmwareVersion": [],
    }


async def test_the_runtime_publishes_a_victron_meter_with_vreglink(dbus_address: str, tmp_path) -> None:  # noqa: ANN001
    """The whole service: supervisor, identify by product id, VregLink attached before the
    name appears, /CustomName written to the meter through VREG 0x010C."""
    import anyio

    from mbclient.runtime.config import RuntimeConfig
    from mbclient.runtime.supervisor import Supervisor
    from mbclient.spec import parse_spec

    meter = VictronMeterSim(serial="HQ7777")
    meter.phase_power = [100.0, 200.0, 300.0]
    async with serve_udp(meter, turnaround=False) as server:
        spec = parse_spec(f"udp:{server.host}:{server.port}:1")
        cfg = RuntimeConfig(bus_address=dbus_address, settings_file=str(tmp_path / "settings.xml"),
                            settings_wait=0.2, force_devices=[spec], stall_timeout=0, max_rss=0)
        async with anyio.create_task_group() as tg:
            supervisor = await tg.start(Supervisor(cfg).run)
            with anyio.fail_after(20):
                while supervisor.device(spec) is None:
                    await anyio.sleep(0.05)
                await supervisor.device(spec).published.wait()
            name = "com.victronenergy.grid.ve_HQ7777"
            out = await run_tool("dbus-send", f"--bus={dbus_address}", "--print-reply", f"--dest={name}", PATH,
                                 f"{IFACE}.GetVreg", "uint16:256")
            assert "uint16 0" in out and "00 a1 b1 fe" in out
            out = await run_tool("dbus-send", f"--bus={dbus_address}", "--print-reply", f"--dest={name}",
                                 "/CustomName", "com.victronenergy.BusItem.SetValue", "variant:string:Barn")
            assert "int32 0" in out
            with anyio.fail_after(10):
                while meter.vregs[VREG_DESCRIPTION].value != b"Barn":
                    await anyio.sleep(0.05)
            out = await run_tool("dbus-send", f"--bus={dbus_address}", "--print-reply", f"--dest={name}",
                                 "/Ac/L3/Power", "com.victronenergy.BusItem.GetValue")
            assert "double 300" in out
            tg.cancel_scope.cancel()
