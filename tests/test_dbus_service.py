"""A device published with ServiceExport, seen from other processes and libraries.

Everything runs against the private dbus-daemon of ``fixtures_dbus``; the consumer side
is jeepney in a subprocess (``dbus_peer.py``), ``dbus-send``, or a separate dbus-fast
connection where only the round trip matters.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import pytest_asyncio
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method
from fixtures_dbus import run_peer, run_tool, start_peer

from mbclient.dbus.bus import connect_bus, name_owner
from mbclient.dbus.service import ServiceError, ServiceExport
from mbclient.items import ItemStore

pytestmark = pytest.mark.asyncio

NAME = "com.victronenergy.grid.mbtest_1234"
BUSITEM = "com.victronenergy.BusItem"


def grid_store() -> ItemStore:
    """A grid meter as a device task would fill it."""
    s = ItemStore()
    s.add("/Mgmt/ProcessName", "mbclient")
    s.add("/Mgmt/ProcessVersion", "0.1.0")
    s.add("/Mgmt/Connection", "Modbus RTU ttyUSB0:1")
    s.add("/DeviceInstance", 40)
    s.add("/ProductId", 0xB023, formatter=lambda v: f"0x{v:X}")
    s.add("/ProductName", "SDM630")
    s.add("/FirmwareVersion", "1.05")
    s.add("/HardwareVersion", None)
    s.add("/Serial", "1234")
    s.add("/Connected", True)  # a bool must go out as int32 1
    s.add("/CustomName", "", writable=True, kind=str)
    s.add("/Role", "grid", writable=True, kind=str, choices=("grid", "pvinverter", "genset", "acload"))
    s.add("/AllowedRoles", ["grid", "pvinverter", "genset", "acload"])
    s.add("/Position", 0, writable=True, kind=int, min=0, max=2)
    s.add("/Ac/Power", 1234.5, unit="W", precision=1)
    s.add("/Ac/L1/Power", 400.25, unit="W", precision=1)
    s.add("/Ac/L1/Voltage", 230.1, unit="V", precision=1)
    s.add("/Ac/L2/Power", None, unit="W")
    s.add("/Ac/Energy/Forward", 12.5, unit="kWh", precision=2)
    s.add("/Counter", 2**33)  # does not fit int32 -> 'x'
    s.add("/Done", 0)
    s.flush()
    return s


@pytest_asyncio.fixture
async def published(dbus_address: str):
    store = grid_store()
    export = ServiceExport(store, dbus_address)
    await export.start(NAME)
    try:
        yield store, export
    finally:
        await export.stop()


@pytest_asyncio.fixture
async def client(dbus_address: str):
    bus = await connect_bus(dbus_address)
    try:
        yield bus
    finally:
        bus.disconnect()


async def call(bus: MessageBus, path: str, member: str, sig: str = "", body=(), *, name=NAME, interface=BUSITEM):
    reply = await bus.call(
        Message(destination=name, path=path, interface=interface, member=member, signature=sig, body=list(body))
    )
    if reply.message_type is MessageType.ERROR:
        return ("error", reply.error_name)
    return reply.body[0] if len(reply.body) == 1 else reply.body


def expected_wire(value) -> list:
    """What jeepney shows for our variant of ``value`` ([signature, value])."""
    if value is None:
        return ["ai", []]
    if isinstance(value, bool):
        return ["i", int(value)]
    if isinstance(value, int):
        return ["i" if -(2**31) <= value < 2**31 else "x", value]
    if isinstance(value, float):
        return ["d", value]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, list):
        return ["as", value]
    raise AssertionError(value)


async def test_other_library_in_other_process_sees_every_path(published) -> None:
    store, _ = published
    out = await run_peer("scan", store_address(published), NAME, "/Ac", "/Ac/L1")
    items = out["items"]
    assert set(items) == set(store.items)  # complete, absolute keys with the leading slash
    for path, item in store.items.items():
        assert items[path]["Value"] == expected_wire(item.value), path
        assert items[path]["Text"] == ["s", item.text], path
        assert out["values"][path] == expected_wire(item.value), path
        assert out["texts"][path] == item.text, path
        assert out["nointerface"][path] == expected_wire(item.value), path  # velib-style call
    assert items["/Connected"]["Value"] == ["i", 1]
    assert items["/Ac/L2/Power"]["Value"] == ["ai", []]
    assert items["/Counter"]["Value"] == ["x", 2**33]
    assert items["/ProductId"]["Text"] == ["s", "0xB023"]

    root = out["nodes"]["/"]
    assert root["value"][0] == "a{sv}"
    assert root["value"][1] == {p[1:]: expected_wire(it.value) for p, it in store.items.items()}
    assert root["text"] == ["a{ss}", {p[1:]: it.text for p, it in store.items.items()}]
    assert root["value_nointerface"] == root["value"]
    ac = out["nodes"]["/Ac"]["value"]
    assert ac == ["a{sv}", {"Power": ["d", 1234.5], "L1/Power": ["d", 400.25], "L1/Voltage": ["d", 230.1],
                            "L2/Power": ["ai", []], "Energy/Forward": ["d", 12.5]}]
    assert out["nodes"]["/Ac/L1"]["text"] == ["a{ss}", {"Power": "400.2W", "Voltage": "230.1V"}]
    assert out["root_items_nointerface"] == sorted(store.items)
    assert out["missing"] == {"error": "org.freedesktop.DBus.Error.UnknownObject"}


def store_address(published) -> str:
    return published[1].bus_address


async def test_dbus_send_prints_the_value(published) -> None:
    address = store_address(published)
    out = await run_tool(
        "dbus-send", f"--bus={address}", "--print-reply", f"--dest={NAME}", "/Ac/Power", f"{BUSITEM}.GetValue"
    )
    assert re.search(r"variant\s+double 1234\.5\b", out), out
    out = await run_tool(
        "dbus-send", f"--bus={address}", "--print-reply", f"--dest={NAME}", "/Ac/Power", f"{BUSITEM}.GetText"
    )
    assert '"1234.5W"' in out


async def read_signals(proc: asyncio.subprocess.Process) -> list[dict]:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def wait_ready(proc: asyncio.subprocess.Process) -> None:
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"READY", line


async def test_one_items_changed_per_flush_and_nothing_for_unchanged(published) -> None:
    store, export = published
    peer = await start_peer("listen", store_address(published), NAME, "/Done")
    await wait_ready(peer)

    store.update({"/Ac/Power": 100.0, "/Ac/L1/Power": 50.0})
    store.flush()
    await asyncio.sleep(0.05)
    store.update({"/Ac/Power": 100.0, "/Ac/L1/Voltage": 231.0})  # /Ac/Power unchanged
    store.flush()
    await asyncio.sleep(0.05)
    store.update({"/Ac/Power": 100.0})  # nothing changed: no signal at all
    assert store.flush() == {}
    store.remove("/Counter")  # a vanished path is announced as invalid
    await asyncio.sleep(0.05)
    store["/Done"] = 1
    store.flush()

    signals = await read_signals(peer)
    assert [s["member"] for s in signals] == ["ItemsChanged"] * 4  # never a PropertiesChanged
    assert all(s["path"] == "/" for s in signals)
    first, second, removed, done = (s["body"] for s in signals)
    assert first == {
        "/Ac/Power": {"Value": ["d", 100.0], "Text": ["s", "100.0W"]},
        "/Ac/L1/Power": {"Value": ["d", 50.0], "Text": ["s", "50.0W"]},
    }
    assert second == {"/Ac/L1/Voltage": {"Value": ["d", 231.0], "Text": ["s", "231.0V"]}}
    assert removed == {"/Counter": {"Value": ["ai", []], "Text": ["s", ""]}}
    assert done == {"/Done": {"Value": ["i", 1], "Text": ["s", "1"]}}


async def test_setvalue_coerces_numbers_and_rejects_wrong_type_or_range(published, client) -> None:
    store, _ = published
    calls: list = []
    store.item("/Position").on_write = lambda v: calls.append(v) or True
    changes: list = []
    store.subscribe(changes.append)

    rejected = [
        ("/Position", Variant("s", "1")),  # wrong type
        ("/Position", Variant("i", 3)),  # out of range
        ("/Position", Variant("d", 1.5)),  # not an integer
        ("/Position", Variant("ai", [])),  # nobody may invalidate our data
        ("/CustomName", Variant("i", 5)),
        ("/Role", Variant("s", "battery")),  # not an allowed role
        ("/Ac/Power", Variant("d", 1.0)),  # read-only
    ]
    for path, value in rejected:
        before = store[path]
        assert await call(client, path, "SetValue", "v", [value]) != 0, (path, value)
        assert store[path] == before
        assert await call(client, path, "GetValue") == Variant(*expected_wire(before))
    assert calls == [] and changes == []

    # a write equal to the current value: answered 0, triggers nothing
    assert await call(client, "/Position", "SetValue", "v", [Variant("i", 0)]) == 0
    assert calls == [] and changes == []

    # every numeric D-Bus type is accepted for a numeric path and coerced to its kind
    for i, sig in enumerate(["u", "d", "y", "n", "q", "x", "t", "i"]):
        target = [1, 2][i % 2]
        assert await call(client, "/Position", "SetValue", "v", [Variant(sig, float(target) if sig == "d" else target)]) == 0
        assert store["/Position"] == target and type(store["/Position"]) is int
    assert len(calls) == 8 and len(changes) == 8
    assert await call(client, "/Position", "GetValue") == Variant("i", 2)

    assert await call(client, "/CustomName", "SetValue", "v", [Variant("s", "Kitchen")]) == 0
    assert await call(client, "/CustomName", "GetText") == "Kitchen"
    assert await call(client, "/", "SetValue", "v", [Variant("i", 1)]) != 0


async def test_setvalue_without_interface_from_jeepney(published) -> None:
    store, _ = published
    address = store_address(published)
    assert await run_peer("call", address, NAME, "/Position", "SetValue", "v", '[["q", 2]]') == 0
    assert store["/Position"] == 2
    assert await run_peer("call", address, NAME, "/Position", "SetValue", "v", '[["s", "x"]]') != 0
    assert store["/Position"] == 2


async def test_whole_tree_answers_when_the_name_appears(dbus_address: str, client) -> None:
    """Consumers scan once, on NameOwnerChanged: /DeviceInstance must already answer."""
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_signal(msg: Message) -> None:
        if msg.member == "NameOwnerChanged" and msg.body[0] == NAME and msg.body[2] and not seen.done():
            # ask at once, as dbusmonitor does
            seen.set_result(asyncio.ensure_future(call(client, "/DeviceInstance", "GetValue", name=msg.body[2])))

    client.add_message_handler(on_signal)
    await client.call(
        Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                member="AddMatch", signature="s", body=[f"type='signal',member='NameOwnerChanged',arg0='{NAME}'"])
    )
    export = ServiceExport(grid_store(), dbus_address)
    await export.start(NAME)
    try:
        answer = await asyncio.wait_for(await asyncio.wait_for(seen, 10), 10)
        assert answer == Variant("i", 40)
    finally:
        await export.stop()


async def test_refuses_taken_name_and_incomplete_tree(published, dbus_address: str, client) -> None:
    _, first = published
    second = ServiceExport(grid_store(), dbus_address)
    with pytest.raises(ServiceError, match="already published"):
        await second.start(NAME)
    assert await name_owner(client, NAME) == first.unique_name  # the first one is untouched
    assert await call(client, "/Ac/Power", "GetValue") == Variant("d", 1234.5)

    bare = ItemStore()
    bare.add("/ProductName", "x")
    with pytest.raises(ServiceError, match="/DeviceInstance"):
        await ServiceExport(bare, dbus_address).start("com.victronenergy.grid.bare")
    with pytest.raises(ServiceError, match="invalid D-Bus service name"):
        await ServiceExport(grid_store(), dbus_address).start("com.victronenergy.grid.1bad")


class VregLink(ServiceInterface):
    def __init__(self) -> None:
        super().__init__("com.victronenergy.VregLink")

    @method()
    def GetVreg(self, vreg: "q") -> "qay":  # noqa: F821 - dbus-fast signature annotations
        return [0, bytes([vreg & 0xFF, 1])]


async def test_rename_moves_service_and_keeps_extras(published, client) -> None:
    store, export = published
    store.add("/Devices/0/VregLink", None)
    export.export_extra("/Devices/0/VregLink", VregLink())
    old_unique = export.unique_name
    new = "com.victronenergy.pvinverter.mbtest_1234"
    await export.rename(new)
    assert export.name == new and export.unique_name != old_unique
    assert await name_owner(client, NAME) is None
    assert await name_owner(client, new) == export.unique_name
    assert await call(client, "/DeviceInstance", "GetValue", name=new) == Variant("i", 40)
    vreg = await call(client, "/Devices/0/VregLink", "GetVreg", "q", [0x10], name=new, interface=None)
    assert vreg == [0, b"\x10\x01"]
    assert await call(client, "/Devices/0/VregLink", "GetValue", name=new, interface=None) == Variant("ai", [])
    node = await client.introspect(new, "/")
    assert {"Ac", "Mgmt", "Devices", "DeviceInstance"} <= {n.name for n in node.nodes}
    assert "com.victronenergy.BusItem" in {i.name for i in node.interfaces}
