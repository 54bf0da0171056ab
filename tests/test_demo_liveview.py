"""The demo's live view: a D-Bus consumer like the GX GUI (GetItems, then ItemsChanged)."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from mbclient.demo import private_bus
from mbclient.liveview import BusMirror, LiveView, ServiceMirror, render_plain, render_screen, unwrap

BUSITEM = "com.victronenergy.BusItem"


class TinyService:
    """A hand-rolled BusItem producer (root GetItems + ItemsChanged), independent of
    mbclient's own D-Bus layer, so the view is tested against the conventions alone."""

    def __init__(self, name: str, items: dict[str, tuple[object, str]]) -> None:
        self.name = name
        self.items = dict(items)
        self.bus: MessageBus | None = None

    @staticmethod
    def variant(value: object) -> Variant:
        if value is None:
            return Variant("ai", [])
        if isinstance(value, float):
            return Variant("d", value)
        if isinstance(value, int):
            return Variant("i", value)
        return Variant("s", str(value))

    def _entries(self, paths) -> dict[str, dict[str, Variant]]:
        return {p: {"Value": self.variant(self.items[p][0]), "Text": Variant("s", self.items[p][1])} for p in paths}

    def _handler(self, msg: Message):
        if msg.message_type == MessageType.METHOD_CALL and msg.member == "GetItems" and msg.path == "/":
            return Message.new_method_return(msg, "a{sa{sv}}", [self._entries(self.items)])
        return None

    async def start(self, address: str) -> None:
        self.bus = await MessageBus(bus_address=address).connect()
        self.bus.add_message_handler(self._handler)
        await self.bus.request_name(self.name)

    async def change(self, **values: tuple[object, str]) -> None:
        changed = {}
        for key, v in values.items():
            path = "/" + key.replace("__", "/")
            self.items[path] = v
            changed[path] = v
        assert self.bus is not None
        await self.bus.send(Message.new_signal("/", BUSITEM, "ItemsChanged", "a{sa{sv}}", [self._entries(changed)]))

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_mirror_follows_services_like_the_gui(tmp_path: Path) -> None:
    async with private_bus(tmp_path) as address:
        meter = TinyService("com.victronenergy.grid.cgwacs_ttyUSB0_mb2", {
            "/Connected": (1, "1"), "/DeviceInstance": (30, "30"), "/ProductName": ("Eastron SDM230", "Eastron SDM230"),
            "/Ac/Power": (-2200.0, "-2200 W"), "/Ac/Energy/Forward": (None, ""),
        })
        await meter.start(address)  # before the view: found by ListNames
        settings = TinyService("com.victronenergy.settings", {"/Settings/X": (1, "1")})
        await settings.start(address)

        viewer = await MessageBus(bus_address=address).connect()
        mirror = BusMirror(viewer)
        await mirror.start()
        try:
            await until(lambda: "com.victronenergy.grid.cgwacs_ttyUSB0_mb2" in mirror.services
                        and mirror.services["com.victronenergy.grid.cgwacs_ttyUSB0_mb2"].scanned)
            grid = mirror.services["com.victronenergy.grid.cgwacs_ttyUSB0_mb2"]
            assert grid.values["/Ac/Power"] == -2200.0 and grid.text("/Ac/Power") == "-2200 W"
            assert grid.values["/Ac/Energy/Forward"] is None and grid.text("/Ac/Energy/Forward") == "--"
            assert "com.victronenergy.settings" not in mirror.services

            # a service that appears later (NameOwnerChanged), then changes (ItemsChanged)
            pv = TinyService("com.victronenergy.pvinverter.pv_GW1", {"/Connected": (1, "1"), "/Ac/Power": (1800.0, "1800 W")})
            await pv.start(address)
            await until(lambda: mirror.services.get("com.victronenergy.pvinverter.pv_GW1", ServiceMirror("x")).scanned)
            await pv.change(Connected=(0, "0"), Ac__Power=(None, ""))
            pvm = mirror.services["com.victronenergy.pvinverter.pv_GW1"]
            await until(lambda: pvm.values.get("/Connected") == 0)
            assert pvm.values["/Ac/Power"] is None
            await meter.change(Ac__Power=(150.0, "150 W"))
            await until(lambda: grid.values["/Ac/Power"] == 150.0)

            frame = render_screen(mirror.services.values(), now=time.monotonic(), width=120, color=False)
            text = "\n".join(frame)
            assert "com.victronenergy.grid.cgwacs_ttyUSB0_mb2  Eastron SDM230 · instance 30  [Connected 1]" in text
            assert "/Ac/Power" in text and "150 W" in text and "[Connected 0]" in text
            plain = render_plain(mirror.services.values(), elapsed=1.5)
            assert plain == [
                "[   1.5s] grid.cgwacs_ttyUSB0_mb2 Connected=1  /Ac/Power=150 W  /Ac/Energy/Forward=--",
                "[   1.5s] pvinverter.pv_GW1 Connected=0  /Ac/Power=--",
            ]

            # the name goes away: the view says so instead of showing stale values as live
            pv.stop()
            await until(lambda: not pvm.present)
            assert "gone from the bus" in "\n".join(render_screen(mirror.services.values(), now=0, color=False))
        finally:
            await mirror.stop()
            viewer.disconnect()
            meter.stop()
            settings.stop()


@pytest.mark.asyncio
async def test_view_redraws_in_place_on_a_terminal_and_prints_lines_otherwise() -> None:
    class FakeTerminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    m = ServiceMirror("com.victronenergy.grid.x", values={"/Connected": 1, "/Ac/Power": 5.0}, texts={"/Ac/Power": "5 W"})
    mirror = BusMirror.__new__(BusMirror)
    mirror.services = {m.name: m}
    out = FakeTerminal()
    stop = asyncio.Event()
    view = LiveView(mirror, out=out, interval=0.01, header=lambda: ["head"])
    task = asyncio.create_task(view.run(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await task
    text = out.getvalue()
    assert view.frames >= 2
    assert text.startswith("\x1b[?25l\x1b[2J\x1b[H") and text.endswith("\x1b[?25h")  # cursor restored
    assert text.count("\x1b[H") == view.frames and "\x1b[J" in text and "5 W" in text

    piped = io.StringIO()
    LiveView(mirror, out=piped).draw()
    assert "\x1b" not in piped.getvalue() and "grid.x Connected=1  /Ac/Power=5 W" in piped.getvalue()


def test_clipping_keeps_escape_sequences() -> None:
    m = ServiceMirror("com.victronenergy.pvinverter." + "x" * 200, values={"/Connected": 1})
    for line in render_screen([m], now=0.0, width=40):
        visible = line
        for code in ("\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[0m"):
            visible = visible.replace(code, "")
        assert len(visible) <= 40


def test_unwrap_invalid() -> None:
    assert unwrap(Variant("ai", [])) is None
    assert unwrap(Variant("d", float("nan"))) is None
    assert unwrap(Variant("i", 3)) == 3
