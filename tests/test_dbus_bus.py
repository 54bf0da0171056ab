"""Which bus connect_bus picks, a one-line error when there is none, and a quiet goodbye."""

from __future__ import annotations

import asyncio
import logging
import select

import pytest
from dbus_fast import Message, Variant

from mbclient.dbus.bus import call_dbus, connect_bus, name_owner
from mbclient.dbus.localsettings import SERVICE, LocalSettings
from mbclient.errors import ConfigError

pytestmark = pytest.mark.asyncio


async def on_our_daemon(bus, address: str) -> bool:
    """True if ``bus`` is a connection to the test daemon at ``address``."""
    probe = await connect_bus(address)
    try:
        return await name_owner(probe, bus.unique_name) == bus.unique_name
    finally:
        probe.disconnect()


async def test_session_bus_when_announced_else_system_bus(dbus_address: str, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", dbus_address)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-system-bus")
    bus = await connect_bus()
    assert await on_our_daemon(bus, dbus_address)
    bus.disconnect()

    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    with pytest.raises(ConfigError, match="system bus"):
        await connect_bus()
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", dbus_address)
    bus = await connect_bus()
    assert await on_our_daemon(bus, dbus_address)
    bus.disconnect()


async def test_explicit_address_wins_and_errors_are_one_line(dbus_address: str, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path}/no-session-bus")
    bus = await connect_bus(dbus_address)
    assert await on_our_daemon(bus, dbus_address)
    bus.disconnect()
    for bad in (f"unix:path={tmp_path}/nothing-here", "bogus:foo=bar"):
        with pytest.raises(ConfigError) as err:
            await connect_bus(bad)
        assert bad in str(err.value) and "\n" not in str(err.value)


async def test_leaving_while_calls_arrive_prints_nothing(dbus_address: str, tmp_path, caplog) -> None:
    """Ctrl-C while our own settings client (or a GUI) is calling us: no tracebacks.

    dbus-fast answered calls it had already read after the disconnect, on a closed socket;
    every such answer logged a traceback (seen once in CI as a Ctrl-C test failure).
    """
    caplog.set_level(logging.WARNING)
    for attempt in range(5):
        service = LocalSettings(tmp_path / f"settings{attempt}.json", dbus_address)
        await service.start()
        caller = await connect_bus(dbus_address)
        try:
            calls = [
                asyncio.ensure_future(caller.call(Message(
                    destination=SERVICE, path="/", interface="com.victronenergy.Settings", member="AddSettings",
                    signature="aa{sv}", body=[[{"path": Variant("s", f"/Settings/T/{i}"), "default": Variant("i", i)}]],
                )))
                for i in range(200)
            ]
            await asyncio.sleep(0)
            await service.stop()
            async with asyncio.timeout(10):  # every call ends: a reply, an error, or a lost connection
                await asyncio.gather(*calls, return_exceptions=True)
        finally:
            caller.disconnect()
    noise = [f"{r.name}: {r.getMessage()}" for r in caplog.records]
    assert not noise, noise[:3]


async def test_a_reply_read_after_disconnect_still_reaches_its_caller(dbus_address: str) -> None:
    """The goodbye claims calls only: a reply already on its way must not leave a caller hanging."""
    for _ in range(5):
        bus = await connect_bus(dbus_address)
        pending = asyncio.ensure_future(call_dbus(bus, "ListNames"))
        await asyncio.sleep(0)  # the call goes out
        select.select([bus._sock], [], [], 5)  # the reply is in, not yet read by the loop
        bus.disconnect()
        async with asyncio.timeout(5):
            (names,) = await pending
        assert "org.freedesktop.DBus" in names
