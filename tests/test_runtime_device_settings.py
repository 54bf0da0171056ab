"""Device settings written by hand, by a tool or through the GUI: what is invalid is
refused or repaired with one log line, and the service and the setting never disagree."""

from __future__ import annotations

import json
import logging

import anyio
import pytest
from test_runtime_support import Observer, fast_config, running_supervisor, site_on_pty, spec_for

from mbclient.dbus.localsettings import SERVICE

pytestmark = pytest.mark.asyncio
METER = "com.victronenergy.grid.eastron_23000123"
SETTINGS = "/Settings/Devices/eastron_23000123"


async def settled(observer: Observer, path: str, check, timeout: float = 5.0):
    return await observer.wait_for(SERVICE, path, check, timeout=timeout)


@pytest.mark.timeout(60)
async def test_invalid_class_and_vrm_instance_is_repaired(dbus_address: str, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    settings_file = tmp_path / "settings.json"
    async with site_on_pty(tmp_path) as (_site, port):
        config = fast_config(dbus_address, settings_file, [spec_for(port.path, 2, "sdm230")])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await observer.wait_for(METER, "/Connected", lambda v: v == 1)
                instance = await observer.get(METER, "/DeviceInstance")
                good = f"grid:{instance}"
                for bad in ("grid:-5", "bogus:40", "Grid:3", "grid", ":7"):
                    caplog.clear()
                    # the settings service may refuse it (ours refuses what does not parse) or
                    # store it (Victron's stores any string): either way it ends repaired
                    code = await observer.set(SERVICE, f"{SETTINGS}/ClassAndVrmInstance", bad)
                    if bad in ("grid:-5", "bogus:40", "Grid:3"):
                        assert code == 0
                    await anyio.sleep(0.2)
                    await settled(observer, f"{SETTINGS}/ClassAndVrmInstance", lambda v: v == good)
                    assert await observer.get(METER, "/DeviceInstance") == instance  # same service, same number
                    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
                    if code == 0:
                        assert len(warnings) == 1 and bad in warnings[0], (bad, warnings)
                    else:
                        assert warnings == [], (bad, warnings)
                assert METER in await observer.names()
            await observer.wait_name(METER, present=False)

            # edited by hand while stopped: repaired at the next start, with one line
            doc = json.loads(settings_file.read_text())
            doc["settings"][f"{SETTINGS}/ClassAndVrmInstance"]["value"] = "grid:-5"
            settings_file.write_text(json.dumps(doc))
            caplog.clear()
            async with running_supervisor(config):
                await observer.wait_for(METER, "/Connected", lambda v: v == 1)
                stored = await observer.get(SERVICE, f"{SETTINGS}/ClassAndVrmInstance")
                assert stored == f"grid:{await observer.get(METER, '/DeviceInstance')}"
                assert any("grid:-5" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        finally:
            observer.close()


@pytest.mark.timeout(60)
async def test_custom_name_loses_control_characters_and_is_capped(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        config = fast_config(dbus_address, tmp_path / "settings.json", [spec_for(port.path, 2, "sdm230")])
        observer = await Observer.connect(dbus_address)
        try:
            async with running_supervisor(config):
                await observer.wait_for(METER, "/Connected", lambda v: v == 1)
                # through the device service, as the GUI's device page writes it
                assert await observer.set(METER, "/CustomName", "Garage\x07 roof\n\x1b[31mred\u2028") == 0
                assert await observer.get(METER, "/CustomName") == "Garage roof[31mred"
                await settled(observer, f"{SETTINGS}/CustomName", lambda v: v == "Garage roof[31mred")
                long = "Süd-Dach Wechselrichter über der Garage, Nummer 2"
                assert await observer.set(METER, "/CustomName", long) == 0
                assert await observer.get(METER, "/CustomName") == long[:32]
                await settled(observer, f"{SETTINGS}/CustomName", lambda v: v == long[:32])

                # through the setting (MQTT, a script): the service shows it tidy, the setting follows
                assert await observer.set(SERVICE, f"{SETTINGS}/CustomName", "Shed\tmeter\r\n") == 0
                await observer.wait_for(METER, "/CustomName", lambda v: v == "Shedmeter")
                await settled(observer, f"{SETTINGS}/CustomName", lambda v: v == "Shedmeter")
                assert await observer.set(METER, "/CustomName", "") == 0  # clearing is allowed
                assert await observer.get(METER, "/CustomName") == ""
                await anyio.sleep(0.1)
        finally:
            observer.close()
