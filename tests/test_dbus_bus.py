"""Which bus connect_bus picks, and a one-line error when there is none."""

from __future__ import annotations

import pytest

from mbclient.dbus.bus import connect_bus, name_owner
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
