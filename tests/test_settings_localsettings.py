"""The embedded com.victronenergy.settings answers like Victron's localsettings.

Calls go over the private dbus-daemon from a separate dbus-fast connection (raw
messages, so the exact D-Bus types are visible), or from jeepney for interface-less calls.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import pytest_asyncio
from dbus_fast import Message, MessageType, Variant
from fixtures_dbus import run_peer

from mbclient.dbus.bus import connect_bus
from mbclient.dbus.localsettings import SERVICE, LocalSettings
from mbclient.dbus.service import ServiceError

pytestmark = pytest.mark.asyncio
SETTINGS = "com.victronenergy.Settings"
BUSITEM = "com.victronenergy.BusItem"


@pytest_asyncio.fixture
async def embedded(dbus_address: str, tmp_path):
    service = LocalSettings(tmp_path / "settings.json", dbus_address, save_delay=0.05)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest_asyncio.fixture
async def bus(dbus_address: str):
    b = await connect_bus(dbus_address)
    try:
        yield b
    finally:
        b.disconnect()


async def call(bus, path: str, member: str, sig: str = "", body=(), interface=BUSITEM):
    reply = await bus.call(
        Message(destination=SERVICE, path=path, interface=interface, member=member, signature=sig, body=list(body))
    )
    if reply.message_type is MessageType.ERROR:
        return ("error", reply.error_name)
    return reply.body[0] if len(reply.body) == 1 else reply.body


async def add_settings(bus, *entries: dict, path: str = "/") -> list[dict]:
    return await call(bus, path, "AddSettings", "aa{sv}", [list(entries)], interface=SETTINGS)


def entry(path, default: Variant, **extra: Variant) -> dict:
    return {"path": Variant("s", path), "default": default, **extra}


class Signals:
    """PropertiesChanged signals from the settings service, as (path, changes)."""

    def __init__(self, bus) -> None:
        self.seen: list[tuple[str, dict]] = []
        self.event = asyncio.Event()
        bus.add_message_handler(self.on_message)

    def on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "PropertiesChanged":
            self.seen.append((msg.path, msg.body[0]))
            self.event.set()

    async def subscribe(self, bus) -> None:
        rule = f"type='signal',sender='{SERVICE}',interface='{BUSITEM}',member='PropertiesChanged'"
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch", signature="s", body=[rule]))

    async def wait_for(self, count: int) -> list[tuple[str, dict]]:
        async with asyncio.timeout(10):
            while len(self.seen) < count:
                self.event.clear()
                await self.event.wait()
        return self.seen


async def test_add_settings_types_values_and_error_codes(embedded, bus) -> None:
    results = await add_settings(
        bus,
        entry("/Settings/Test/Int", Variant("i", 5), min=Variant("i", 0), max=Variant("i", 10)),
        entry("/Settings/Test/Big", Variant("x", 2**40)),
        entry("/Settings/Test/Float", Variant("d", 1.5)),
        entry("/Settings/Test/Str", Variant("s", "hello")),
        entry("/Settings/Test/_Bad", Variant("i", 1)),  # -2
        entry("/Settings/Test/Bool", Variant("b", True)),  # -3: only int32/int64/double/string
        entry("/Settings/Test/Unsigned", Variant("u", 1)),  # -3
        {"path": Variant("i", 3), "default": Variant("i", 1)},  # -4: path not a string
        entry("/Settings/Test/Bad-Name", Variant("i", 1)),  # -4
        entry("/Settings/Test/Int", Variant("s", "x")),  # -5: exists with another type
        entry("/Settings/Devices/x_1/ClassAndVrmInstance", Variant("s", "nonsense")),  # -6
        entry("/Settings/Test/Range", Variant("i", 11), min=Variant("i", 0), max=Variant("i", 10)),  # -7
        entry("/Settings/Test", Variant("i", 1)),  # -8: a group
        entry("/Other/Thing", Variant("i", 1)),  # -9
    )
    errors = [r["error"].value for r in results]
    assert errors == [0, 0, 0, 0, -2, -3, -3, -4, -4, -5, -6, -7, -8, -9]
    assert results[0]["value"] == Variant("i", 5)
    assert results[1]["value"] == Variant("x", 2**40)
    assert results[2]["value"] == Variant("d", 1.5)
    assert results[3]["value"] == Variant("s", "hello")
    assert results[0]["path"] == Variant("s", "/Settings/Test/Int")

    # declaring again never changes the value, even with another default
    assert await call(bus, "/Settings/Test/Int", "SetValue", "v", [Variant("i", 7)]) == 0
    again = await add_settings(bus, entry("/Settings/Test/Int", Variant("i", 6), min=Variant("i", 0), max=Variant("i", 10)))
    assert again[0]["error"] == Variant("i", 0) and again[0]["value"] == Variant("i", 7)
    assert await call(bus, "/Settings/Test/Int", "GetDefault") == Variant("i", 6)

    # relative to the group called
    rel = await add_settings(bus, entry("Rel/Value", Variant("i", 1)), path="/Settings/Test")
    assert rel[0]["error"] == Variant("i", 0)
    assert await call(bus, "/Settings/Test/Rel/Value", "GetValue") == Variant("i", 1)


async def test_setvalue_converts_validates_and_signals(embedded, bus) -> None:
    signals = Signals(bus)
    await signals.subscribe(bus)
    await add_settings(bus, entry("/Settings/T/Pos", Variant("i", 0), min=Variant("i", 0), max=Variant("i", 2)),
                       entry("/Settings/T/Name", Variant("s", "")))
    await signals.wait_for(2)  # creation is announced with Value/Text and the attributes
    assert signals.seen[0][0] == "/Settings/T/Pos"
    assert set(signals.seen[0][1]) == {"Value", "Text", "Default", "Min", "Max"}
    signals.seen.clear()

    for bad in (Variant("i", 3), Variant("i", -1), Variant("s", "x"), Variant("ai", []), Variant("d", float("nan"))):
        assert await call(bus, "/Settings/T/Pos", "SetValue", "v", [bad]) == -1, bad
    assert await call(bus, "/Settings/T/Pos", "GetValue") == Variant("i", 0)
    assert await call(bus, "/Settings/T/Pos", "SetValue", "v", [Variant("i", 0)]) == 0  # unchanged: no signal
    assert await call(bus, "/Settings/T/Pos", "SetValue", "v", [Variant("u", 2)]) == 0
    assert await call(bus, "/Settings/T/Name", "SetValue", "v", [Variant("s", "Roof")]) == 0
    seen = await signals.wait_for(2)
    await asyncio.sleep(0.1)
    assert seen == [
        ("/Settings/T/Pos", {"Value": Variant("i", 2), "Text": Variant("s", "2")}),
        ("/Settings/T/Name", {"Value": Variant("s", "Roof"), "Text": Variant("s", "Roof")}),
    ]
    assert await call(bus, "/Settings/T/Pos", "GetText") == "2"
    assert await call(bus, "/Settings/T/Pos", "GetMin") == Variant("i", 0)
    assert await call(bus, "/Settings/T/Pos", "GetMax") == Variant("i", 2)
    assert await call(bus, "/Settings/T/Name", "GetMax") == Variant("i", 0)  # none: int 0
    assert await call(bus, "/Settings/T/Pos", "GetAttributes", interface=SETTINGS) == [
        Variant("i", 0), Variant("i", 0), Variant("i", 2), 0]
    assert await call(bus, "/Settings/T/Pos", "SetDefault") == 0
    assert await call(bus, "/Settings/T/Pos", "GetValue") == Variant("i", 0)

    # removal: the setting answers no more, and its last signal is an invalid value
    signals.seen.clear()
    assert await call(bus, "/", "RemoveSettings", "as", [["/Settings/T/Name", "/Settings/T/Nope"]], SETTINGS) == [0, -1]
    assert (await signals.wait_for(1))[0] == ("/Settings/T/Name", {"Value": Variant("ai", []), "Text": Variant("s", "")})
    assert (await call(bus, "/Settings/T/Name", "GetValue"))[0] == "error"


async def test_groups_root_and_legacy_add_without_interface(embedded, bus, dbus_address: str) -> None:
    # velib's old SettingsDevice: AddSetting(group, name, default, type, min, max) with no interface
    code = await run_peer("call", dbus_address, SERVICE, "/Settings", "AddSetting", "ssvsvv",
                          json.dumps(["Legacy", "Level", ["i", 50], "i", ["i", 0], ["i", 100]]))
    assert code == 0
    assert await run_peer("call", dbus_address, SERVICE, "/Settings/Legacy/Level", "GetValue") == ["i", 50]
    assert await call(bus, "/Settings", "AddSetting", "ssvsvv",
                      ["Legacy", "Ratio", Variant("d", 0.5), "f", Variant("i", 0), Variant("i", 0)], SETTINGS) == 0
    await add_settings(bus, entry("/Settings/Devices/mb_1/CustomName", Variant("s", "PV")))

    assert await call(bus, "/Settings/Legacy", "GetValue") == Variant("a{sv}", {"Level": Variant("i", 50), "Ratio": Variant("d", 0.5)})
    assert await call(bus, "/Settings/Legacy", "GetText") == Variant("a{ss}", {"Level": "50", "Ratio": "0.5"})
    devices = await call(bus, "/Settings/Devices", "GetValue")
    assert devices.value == {"mb_1/CustomName": Variant("s", "PV")}
    root = (await call(bus, "/", "GetValue")).value
    assert set(root) == {"Settings/Legacy/Level", "Settings/Legacy/Ratio", "Settings/Devices/mb_1/CustomName"}
    items = await call(bus, "/", "GetItems")
    assert items["/Settings/Legacy/Level"] == {"Value": Variant("i", 50), "Text": Variant("s", "50"),
                                               "Min": Variant("i", 0), "Max": Variant("i", 100),
                                               "Default": Variant("i", 50)}
    assert items["/Settings/Legacy/Ratio"] == {"Value": Variant("d", 0.5), "Text": Variant("s", "0.5"),
                                               "Default": Variant("d", 0.5)}  # min = max = 0: no limits


async def test_class_and_vrm_instance_is_unique_per_class(embedded, bus) -> None:
    def cavi(ident: str, value: str) -> dict:
        return entry(f"/Settings/Devices/{ident}/ClassAndVrmInstance", Variant("s", value))

    res = await add_settings(bus, cavi("a", "grid:40"), cavi("b", "grid:40"), cavi("c", "pvinverter:40"))
    assert [r["value"].value for r in res] == ["grid:40", "grid:41", "pvinverter:40"]
    # a known ident keeps its record, whatever default it brings
    res = await add_settings(bus, cavi("b", "grid:40"), cavi("a", "grid:45"))
    assert [r["value"].value for r in res] == ["grid:41", "grid:40"]
    # asking for a taken number gives the next free one, never a duplicate
    assert await call(bus, "/Settings/Devices/b/ClassAndVrmInstance", "SetValue", "v", [Variant("s", "grid:40")]) == 0
    assert await call(bus, "/Settings/Devices/b/ClassAndVrmInstance", "GetValue") == Variant("s", "grid:41")
    # class change: checked against the new class
    assert await call(bus, "/Settings/Devices/a/ClassAndVrmInstance", "SetValue", "v", [Variant("s", "pvinverter:40")]) == 0
    assert await call(bus, "/Settings/Devices/a/ClassAndVrmInstance", "GetValue") == Variant("s", "pvinverter:41")
    assert await call(bus, "/Settings/Devices/b/ClassAndVrmInstance", "SetValue", "v", [Variant("s", "grid:40")]) == 0
    assert await call(bus, "/Settings/Devices/b/ClassAndVrmInstance", "GetValue") == Variant("s", "grid:40")
    for bad in ("grid", "grid:x", "a:b:c", ":3"):
        assert await call(bus, "/Settings/Devices/b/ClassAndVrmInstance", "SetValue", "v", [Variant("s", bad)]) == -1
    assert await call(bus, "/Settings/Devices/b/ClassAndVrmInstance", "SetDefault") == -1
    values = (await call(bus, "/Settings/Devices", "GetValue")).value
    assert sorted(v.value for v in values.values()) == ["grid:40", "pvinverter:40", "pvinverter:41"]


async def test_persisted_and_a_second_instance_is_refused(dbus_address: str, tmp_path, bus) -> None:
    path = tmp_path / "conf" / "settings.json"
    first = LocalSettings(path, dbus_address, save_delay=5)
    await first.start()
    await add_settings(bus, entry("/Settings/P/A", Variant("i", 1)), entry("/Settings/P/B", Variant("s", "x")))
    assert await call(bus, "/Settings/P/A", "SetValue", "v", [Variant("i", 9)]) == 0
    with pytest.raises(ServiceError, match="already runs"):
        await LocalSettings(tmp_path / "other.json", dbus_address).start()
    assert not path.exists()  # saving waits for the coalescing delay ...
    await first.stop()  # ... and stop() writes what is pending
    doc = json.loads(path.read_text())
    assert doc["settings"]["/Settings/P/A"]["value"] == 9

    second = LocalSettings(path, dbus_address)
    await second.start()
    try:
        assert await call(bus, "/Settings/P/A", "GetValue") == Variant("i", 9)
        assert await call(bus, "/Settings/P/B", "GetValue") == Variant("s", "x")
    finally:
        await second.stop()


async def test_corrupt_file_is_kept_aside_with_one_warning(dbus_address: str, tmp_path, bus, caplog) -> None:
    path = tmp_path / "settings.json"
    path.write_text('{"format": "mbclient-settings", "settings": {"/Settings/X": {"type": "i", "val')
    (tmp_path / ".settings.json.abc.tmp").write_text("half a save")  # left by a kill -9
    caplog.set_level(logging.WARNING)
    service = LocalSettings(path, dbus_address)
    await service.start()
    try:
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "kept as settings.json.corrupt-" in warnings[0].getMessage()
        assert "\n" not in warnings[0].getMessage()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith("settings.json.corrupt-")]
        assert not path.exists() and not (tmp_path / ".settings.json.abc.tmp").exists()
        assert await call(bus, "/", "GetItems") == {}
    finally:
        await service.stop()


async def test_one_bad_record_drops_only_that_record(dbus_address: str, tmp_path, bus, caplog) -> None:
    """A hand edit that breaks one record must not cost the other 30 (device instances, the
    zero-export configuration): that record is dropped with one line, the original kept."""
    path = tmp_path / "settings.json"
    records = {f"/Settings/Devices/d{n}/ClassAndVrmInstance": {"type": "s", "value": f"grid:{30 + n}", "default": ""}
               for n in range(28)}
    records["/Settings/DynamicGeneration/energyDifference"] = {"type": "f", "value": 12.5, "default": 0.0}
    records["/Settings/DynamicGeneration/derateGeneration"] = {"type": "i", "value": 1, "default": 0}
    records["/Settings/DynamicGeneration/safeLimit"] = {"type": "i", "value": "a lot", "default": 0}  # the bad one
    path.write_text(json.dumps({"format": "mbclient-settings", "version": 1, "settings": records}))
    caplog.set_level(logging.WARNING)
    service = LocalSettings(path, dbus_address, save_delay=0.01)
    await service.start()
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "dropped 1 bad record" in warnings[0] and "safeLimit" in warnings[0], warnings
        assert await call(bus, "/Settings/DynamicGeneration/energyDifference", "GetValue") == Variant("d", 12.5)
        assert await call(bus, "/Settings/DynamicGeneration/derateGeneration", "GetValue") == Variant("i", 1)
        assert await call(bus, "/Settings/Devices/d27/ClassAndVrmInstance", "GetValue") == Variant("s", "grid:57")
        assert len(await call(bus, "/", "GetItems")) == 30
        [aside] = tmp_path.glob("settings.json.corrupt-*")
        assert json.loads(aside.read_text())["settings"] == records  # the original, for the user
    finally:
        await service.stop()


async def test_a_read_only_settings_location_fails_at_start(dbus_address: str, tmp_path) -> None:
    """Not silently on the first write, minutes later: one line at start."""
    from mbclient.errors import ConfigError

    service = LocalSettings("/proc/mbclient-settings.json", dbus_address)  # no file can be created there
    with pytest.raises(ConfigError, match=r"^settings location /proc is not writable: "):
        await service.start()
    assert service.bus is None
