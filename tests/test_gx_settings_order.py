"""A GX boots its services in parallel: mbclient may start long before Victron's
localsettings. It must wait for it however long it takes and never serve
``com.victronenergy.settings`` itself, or localsettings could not register and every Venus
service needing settings would break. Real order, real processes, a private bus."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys

import anyio
import pytest
from test_cli_run import ROOT, finish, running_cli
from test_runtime_support import Observer, site_on_pty, spec_for

from mbclient.dbus.bus import call_dbus, connect_bus, name_owner
from mbclient.dbus.localsettings import SERVICE
from mbclient.demo import private_bus

pytestmark = pytest.mark.asyncio
METER = "com.victronenergy.grid.eastron_23000123"
INSTANCE = "/Settings/Devices/eastron_23000123/ClassAndVrmInstance"


@pytest.mark.timeout(90)
async def test_mbclient_started_first_waits_and_localsettings_owns_the_name(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # where an embedded store would go
    ls_file = tmp_path / "localsettings.json"
    async with private_bus(tmp_path) as address, site_on_pty(tmp_path) as (_site, port):
        async with running_cli("--gx", "--dbus", address, "-F", str(spec_for(port.path, 2, "sdm230"))) as proc:
            bus = await connect_bus(address)
            try:
                # 10 s: well beyond the 3 s after which a laptop serves the settings itself
                await anyio.sleep(10)
                assert proc.returncode is None
                assert await name_owner(bus, SERVICE) is None
                assert METER not in await call_dbus(bus, "ListNames")  # nothing published without settings

                settings = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mbclient.dbus.localsettings", "--file", str(ls_file),
                    "--dbus", address, "--delay", "0.05", cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )
                try:
                    observer = await Observer.connect(address)
                    try:
                        await observer.wait_for(METER, "/Connected", lambda v: v == 1, timeout=30)
                        instance = await observer.get(METER, "/DeviceInstance")
                        # the settings service is the separate process, and mbclient used it
                        owner = await name_owner(bus, SERVICE)
                        [pid] = await call_dbus(bus, "GetConnectionUnixProcessID", "s", [owner])
                        assert pid == settings.pid
                        assert await observer.get(SERVICE, INSTANCE) == f"grid:{instance}"
                    finally:
                        observer.close()
                    proc.send_signal(signal.SIGTERM)
                    code, _out, err = await finish(proc)
                finally:
                    if settings.returncode is None:
                        settings.send_signal(signal.SIGTERM)
                    ls_code, _o, ls_err = await finish(settings)
            finally:
                bus.disconnect()
    assert code == 0, err
    assert "Traceback" not in err
    assert f"waiting for {SERVICE}" in err
    assert ls_code == 0, ls_err.decode() if isinstance(ls_err, bytes) else ls_err
    stored = json.loads(ls_file.read_text())["settings"]
    assert stored[INSTANCE]["value"] == f"grid:{instance}"
    assert not os.path.exists(tmp_path / "xdg" / "mbclient")  # no embedded store was started


@pytest.mark.timeout(60)
async def test_the_wait_is_logged_every_interval(tmp_path, caplog) -> None:
    """While localsettings is missing, a line per interval says so (a minute on a GX)."""
    from mbclient.dbus.settings import SettingsClient

    caplog.set_level(logging.INFO, logger="mbclient.dbus.settings")
    async with private_bus(tmp_path) as address:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await SettingsClient.connect(address, wait=None, wait_log_interval=0.3)
        bus = await connect_bus(address)
        try:
            assert await name_owner(bus, SERVICE) is None
        finally:
            bus.disconnect()
    still = [r for r in caplog.records if r.getMessage().startswith(f"still waiting for {SERVICE}")]
    assert 2 <= len(still) <= 4, [r.getMessage() for r in caplog.records]
