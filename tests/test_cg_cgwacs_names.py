"""A GX switching from dbus-cgwacs keeps its Carlo Gavazzi RS-485 meters as they were.

dbus-cgwacs (victronenergy/dbus-cgwacs, ``ac_sensor_bridge.cpp``) publishes a meter on
``/dev/<tty>`` at address ``<unit>`` as ``com.victronenergy.<role>.cgwacs_<tty>_mb<unit>``
and keeps its role and VRM instance, custom name and position under
``/Settings/Devices/cgwacs_<serial>/`` (``ac_sensor_settings_bridge.cpp``), allocating
``grid:30`` for a new meter. Here the real process runs on a private D-Bus against
simulated meters on a pseudo-terminal, with a settings file holding what dbus-cgwacs left
behind for one of them: the role, instance, position and name the user chose there are
the service's, the settings dbus-cgwacs alone uses are left untouched, and a meter new to
the GX gets dbus-cgwacs's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_run import finish, running_cli
from test_runtime_support import Observer

from mbclient.sim import SimBus, serve_rtu
from mbclient.sim.meters import CarloGavazziMeter

pytestmark = pytest.mark.asyncio

KNOWN, NEW = "CG12345", "ET00001"


def left_by_cgwacs(path: Path) -> None:
    """The settings dbus-cgwacs kept for meter ``KNOWN``, which the user made a PV inverter."""
    base = f"/Settings/Devices/cgwacs_{KNOWN}"

    def rec(kind: str, value: object, default: object) -> dict:
        return {"type": kind, "value": value, "default": default, "min": None, "max": None}

    settings = {
        f"{base}/ClassAndVrmInstance": rec("s", "pvinverter:33", "grid:30"),
        f"{base}/CustomName": rec("s", "Carport PV", ""),
        f"{base}/Position": rec("i", 2, 0),
        f"{base}/IsMultiphase": rec("i", 1, 1),
        f"{base}/L1ReverseEnergy": rec("f", 12.5, 0.0),
        f"{base}_S/Enabled": rec("i", 0, 0),
    }
    path.write_text(json.dumps({"format": "mbclient-settings", "version": 1, "settings": settings}))


@pytest.mark.timeout(90)
async def test_rs485_meters_keep_the_dbus_cgwacs_names_and_settings(dbus_address: str, tmp_path: Path) -> None:
    em24 = CarloGavazziMeter(2, layout="em24", serial=KNOWN)
    em24.measure((230.0, 231.0, 229.0), (-700.0, -600.0, -500.0))
    et112 = CarloGavazziMeter(3, layout="et112", serial=NEW)
    et112.measure((230.0, 230.0, 230.0), (400.0, 0.0, 0.0))
    settings_file = tmp_path / "settings.json"
    left_by_cgwacs(settings_file)
    async with serve_rtu(SimBus(9600, units=[em24, et112]), directory=tmp_path) as port:
        # dbus-cgwacs: the port name without "/dev/", "/" -> "_" ("ttyUSB0" on a GX)
        tty = port.path.removeprefix("/dev/").replace("/", "_")
        pv, grid = f"com.victronenergy.pvinverter.cgwacs_{tty}_mb2", f"com.victronenergy.grid.cgwacs_{tty}_mb3"
        observer = await Observer.connect(dbus_address)
        try:
            async with running_cli("-F", f"rtu:{port.path}:9600:2,rtu:{port.path}:9600:3", "--dbus", dbus_address,
                                   "--settings", str(settings_file)) as proc:
                await observer.wait_name(pv, timeout=30)
                await observer.wait_name(grid, timeout=30)
                await observer.wait_for(pv, "/Connected", lambda v: v == 1, timeout=20)
                await observer.wait_for(grid, "/Connected", lambda v: v == 1, timeout=20)
                got = {p: await observer.get(pv, p) for p in (
                    "/DeviceInstance", "/Role", "/Position", "/CustomName", "/Serial", "/ProductId",
                    "/IsGenericEnergyMeter", "/Ac/L1/Power")}
                new = {p: await observer.get(grid, p) for p in ("/DeviceInstance", "/Role", "/Serial", "/Ac/Power")}
                proc.terminate()
                code, _out, err = await finish(proc)
        finally:
            observer.close()
    assert code == 0, err
    assert "Traceback" not in err
    assert got["/Role"] == "pvinverter" and got["/DeviceInstance"] == 33
    assert got["/Position"] == 2 and got["/CustomName"] == "Carport PV"
    assert got["/Serial"] == KNOWN and got["/ProductId"] == 0xB002 and got["/IsGenericEnergyMeter"] == 1
    assert got["/Ac/L1/Power"] == pytest.approx(-700.0)
    assert new["/Role"] == "grid" and new["/DeviceInstance"] == 30 and new["/Serial"] == NEW
    assert new["/Ac/Power"] == pytest.approx(400.0)

    stored = json.loads(settings_file.read_text())["settings"]
    value = {path: rec["value"] for path, rec in stored.items()}
    known, fresh = f"/Settings/Devices/cgwacs_{KNOWN}", f"/Settings/Devices/cgwacs_{NEW}"
    # what the user chose under dbus-cgwacs, and what only dbus-cgwacs reads, is as it was
    assert value[f"{known}/ClassAndVrmInstance"] == "pvinverter:33"
    assert value[f"{known}/CustomName"] == "Carport PV" and value[f"{known}/Position"] == 2
    assert value[f"{known}/IsMultiphase"] == 1 and value[f"{known}/L1ReverseEnergy"] == 12.5
    assert value[f"{known}_S/Enabled"] == 0
    # a meter new to the GX: where dbus-cgwacs would have put it, with its default
    assert value[f"{fresh}/ClassAndVrmInstance"] == "grid:30"
    # and nothing under the names mbclient used for these meters before
    assert not [p for p in stored if p.startswith(("/Settings/Devices/cg_", "/Settings/Devices/cgwacs_tty"))]
