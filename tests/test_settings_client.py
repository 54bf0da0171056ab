"""SettingsClient against the embedded settings service, and devices built on both.

The device part does at this level what the runtime does for real: claim an instance,
publish a store, mirror CustomName/Position into settings, move the service when /Role
is written, follow instance changes made in the GUI, and find it all again after a
restart of the settings store.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from dbus_fast import Message, MessageType, Variant
from fixtures_dbus import run_peer

from mbclient.dbus.bus import connect_bus, name_owner, wait_for_name
from mbclient.dbus.localsettings import SERVICE, LocalSettings
from mbclient.dbus.service import ServiceExport
from mbclient.dbus.settings import (
    ClassAndInstance,
    Setting,
    SettingsClient,
    SettingsError,
    device_setting,
    mirror_setting,
)
from mbclient.errors import ConfigError
from mbclient.items import ItemStore

pytestmark = pytest.mark.asyncio
ROLES = ["grid", "pvinverter", "genset", "acload"]


@pytest_asyncio.fixture
async def bus(dbus_address: str):
    b = await connect_bus(dbus_address)
    try:
        yield b
    finally:
        b.disconnect()


async def eventually(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_embedded_when_none_appears_add_get_set_watch_remove(dbus_address: str, tmp_path, bus) -> None:
    settings = await SettingsClient.connect(dbus_address, wait=0.2, embedded_path=tmp_path / "s.json", save_delay=0.05)
    try:
        assert settings.is_embedded
        values = await settings.add([
            Setting("/Settings/Mb/Int", 3, min=0, max=10),
            Setting("/Settings/Mb/Flag", True),  # a bool goes out as int, never 'b'
            Setting("/Settings/Mb/Float", 0.5, min=0.0, max=1.0),
            Setting("/Settings/Mb/Text", "abc", silent=True),
        ])
        assert values == {"/Settings/Mb/Int": 3, "/Settings/Mb/Flag": 1, "/Settings/Mb/Float": 0.5, "/Settings/Mb/Text": "abc"}
        assert type(values["/Settings/Mb/Flag"]) is int

        seen: list = []
        unwatch = settings.watch("/Settings/Mb", lambda p, v: seen.append((p, v)))
        only_int: list = []
        settings.watch("/Settings/Mb/Int", lambda p, v: only_int.append(v))
        assert await settings.set("/Settings/Mb/Int", 11) != 0  # outside max
        assert await settings.set("/Settings/Mb/Int", "x") != 0
        assert await settings.set("/Settings/Mb/Nope", 1) != 0
        assert await settings.get("/Settings/Mb/Int") == 3
        assert await settings.set("/Settings/Mb/Int", 7) == 0
        assert await settings.set("/Settings/Mb/Float", 0.25) == 0
        await eventually(lambda: _true(len(seen) == 2))
        assert seen == [("/Settings/Mb/Int", 7), ("/Settings/Mb/Float", 0.25)]
        assert only_int == [7]
        assert await settings.get("/Settings/Mb") == {"Int": 7, "Flag": 1, "Float": 0.25, "Text": "abc"}

        assert await settings.remove(["/Settings/Mb/Text", "/Settings/Mb/Gone"]) == [0, -1]
        await eventually(lambda: _true(("/Settings/Mb/Text", None) in seen))
        unwatch()
        assert await settings.get("/Settings/Mb/Text") is None
        with pytest.raises(SettingsError, match="/Settings/Mb/Int: -5"):
            await settings.add([Setting("/Settings/Mb/Int", "now a string")])
    finally:
        await settings.close()
    assert await name_owner(bus, SERVICE) is None  # the embedded service left with the client
    assert '"/Settings/Mb/Int"' in (tmp_path / "s.json").read_text()


async def _true(value: bool) -> bool:
    return value


async def test_uses_an_existing_settings_service(dbus_address: str, tmp_path, bus) -> None:
    other = LocalSettings(tmp_path / "other.json", dbus_address)
    await other.start()
    try:
        settings = await SettingsClient.connect(dbus_address, wait=5, embedded_path=tmp_path / "mine.json")
        try:
            assert not settings.is_embedded
            assert await settings.add([Setting("/Settings/X/Y", 1)]) == {"/Settings/X/Y": 1}
            assert "/Settings/X/Y" in other.records
        finally:
            await settings.close()
        with pytest.raises(ConfigError, match="already runs"):
            await SettingsClient.connect(dbus_address, embedded_path=tmp_path / "mine.json", force_embedded=True)
    finally:
        await other.stop()
    assert not (tmp_path / "mine.json").exists()


class Device:
    """What the runtime does with one device: settings, store, export, role changes."""

    def __init__(self, settings: SettingsClient, ident: str, address: str) -> None:
        self.settings, self.ident, self.address = settings, ident, address
        self.store = ItemStore()
        self.export = ServiceExport(self.store, address)
        self.tasks: set[asyncio.Task] = set()

    async def start(self, role: str, preferred: int) -> None:
        claim = await self.settings.claim_device(self.ident, role, preferred)
        values = await self.settings.add([
            Setting(device_setting(self.ident, "CustomName"), ""),
            Setting(device_setting(self.ident, "Position"), 0, min=0, max=2),
        ])
        s = self.store
        s.add("/Mgmt/ProcessName", "mbclient")
        s.add("/DeviceInstance", claim.instance)
        s.add("/ProductName", "Test meter")
        s.add("/Connected", 1)
        s.add("/CustomName", values[device_setting(self.ident, "CustomName")], writable=True, kind=str)
        s.add("/Position", values[device_setting(self.ident, "Position")], writable=True, kind=int, min=0, max=2)
        s.add("/Role", claim.role, writable=True, kind=str, choices=tuple(ROLES), on_write=self._on_role)
        s.add("/AllowedRoles", ROLES)
        s.add("/Ac/Power", 100.0)
        s.flush()
        mirror_setting(self.settings, s, "/CustomName", device_setting(self.ident, "CustomName"))
        mirror_setting(self.settings, s, "/Position", device_setting(self.ident, "Position"))
        self.settings.watch_device(self.ident, self._on_class_and_instance)
        await self.export.start(self.service_name(claim.role))

    def service_name(self, role: str) -> str:
        return f"com.victronenergy.{role}.{self.ident}"

    def _on_role(self, role: str) -> bool:
        task = asyncio.get_running_loop().create_task(self._change_role(role))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    async def _change_role(self, role: str) -> None:
        new = await self.settings.set_class_and_instance(self.ident, role, self.store["/DeviceInstance"])
        self.store["/DeviceInstance"] = new.instance
        self.store.flush()
        await self.export.rename(self.service_name(new.role))

    def _on_class_and_instance(self, value: ClassAndInstance) -> None:
        if value.role == self.store["/Role"] and self.store.set("/DeviceInstance", value.instance):
            self.store.flush()

    async def stop(self) -> None:
        await self.export.stop()


async def busitem(bus, name: str, path: str, member: str = "GetValue"):
    reply = await bus.call(Message(destination=name, path=path, interface="com.victronenergy.BusItem", member=member))
    return None if reply.message_type is MessageType.ERROR else reply.body[0]


async def test_devices_instances_role_change_and_restart(dbus_address: str, tmp_path, bus) -> None:
    file = tmp_path / "settings.json"
    settings = await SettingsClient.connect(dbus_address, wait=0.2, embedded_path=file, save_delay=0.05)
    a, b = Device(settings, "mb_a", dbus_address), Device(settings, "mb_b", dbus_address)
    try:
        await a.start("grid", 40)
        await b.start("grid", 40)
        assert (a.store["/DeviceInstance"], b.store["/DeviceInstance"]) == (40, 41)  # never a duplicate

        # the user names and places A from another process, then makes it a PV inverter
        old_name, new_name = a.service_name("grid"), a.service_name("pvinverter")
        assert await run_peer("call", dbus_address, old_name, "/CustomName", "SetValue", "v", '[["s", "Roof"]]') == 0
        assert await run_peer("call", dbus_address, old_name, "/Position", "SetValue", "v", '[["i", 2]]') == 0
        assert await run_peer("call", dbus_address, old_name, "/Position", "SetValue", "v", '[["i", 3]]') != 0
        assert await run_peer("call", dbus_address, old_name, "/Role", "SetValue", "v", '[["s", "pvinverter"]]') == 0
        assert await wait_for_name(bus, new_name, 10) is not None
        await eventually(lambda: _is_none(name_owner(bus, old_name)))
        assert await busitem(bus, new_name, "/DeviceInstance") == Variant("i", 40)  # same number
        assert await busitem(bus, new_name, "/Role") == Variant("s", "pvinverter")
        assert await busitem(bus, new_name, "/CustomName") == Variant("s", "Roof")
        assert await settings.get(device_setting("mb_a", "ClassAndVrmInstance")) == "pvinverter:40"

        # the GUI's VRM-instance page changes the number: the service follows
        assert await settings.set(device_setting("mb_a", "ClassAndVrmInstance"), "pvinverter:45") == 0
        await eventually(lambda: _equals(busitem(bus, new_name, "/DeviceInstance"), Variant("i", 45)))
        # and a CustomName changed in settings shows up on the device
        assert await settings.set(device_setting("mb_b", "CustomName"), "Meter") == 0
        await eventually(lambda: _equals(busitem(bus, b.service_name("grid"), "/CustomName"), Variant("s", "Meter")))
    finally:
        await a.stop()
        await b.stop()
        await settings.close()

    # restart of the settings store: role, instance, name and position are all still there
    settings = await SettingsClient.connect(dbus_address, embedded_path=file, force_embedded=True)
    try:
        assert await settings.claim_device("mb_a", "grid", 40) == ClassAndInstance("pvinverter", 45)
        assert await settings.claim_instance("mb_b", "grid", 40) == 41
        values = await settings.add([Setting(device_setting("mb_a", "CustomName"), ""),
                                     Setting(device_setting("mb_a", "Position"), 0, min=0, max=2)])
        assert values == {device_setting("mb_a", "CustomName"): "Roof", device_setting("mb_a", "Position"): 2}
        assert await settings.claim_device("mb_c", "grid", 40) == ClassAndInstance("grid", 40)  # 40 is free again
    finally:
        await settings.close()


async def _is_none(awaitable) -> bool:
    return (await awaitable) is None


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected
