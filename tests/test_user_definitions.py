"""A user's definition file, end to end: a meter mbclient does not ship is added by
dropping a file into a directory, published on a private D-Bus by the real process, listed
by ``--models``, checked and read once by ``--check-device``; a broken file costs one log
line and nothing else.

The meter is the Inepro PRO380-Mod of docs/DEVICES.md's worked example; its simulation
(``mbclient.sim.meters.Pro380``) is written from Inepro's register list, and the values
expected here follow from what the simulated meter is told to measure.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_cli_run import ROOT, finish, running_cli
from test_runtime_support import Observer

from mbclient.sim import SimBus, serve_rtu
from mbclient.sim.meters import Pro380

pytestmark = pytest.mark.asyncio

EXAMPLE = ROOT / "docs" / "examples" / "inepro_pro380.toml"
SERVICE = "com.victronenergy.grid.inepro_18012345"
BROKEN = 'manufacturer = "X"\nvendor = "x"\n[[model]]\nname = "x1"\nproduct = "X"\nproduct_id = 1\nregisters = ["nope"]\n'


def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "devices"
    d.mkdir()
    shutil.copy(EXAMPLE, d / "inepro_pro380.toml")
    (d / "broken.toml").write_text(BROKEN)
    return d


def meter() -> Pro380:
    m = Pro380(1)
    m.measure((230.4, 231.0, 229.6), (1200.0, -300.0, 450.0))
    m.import_kwh = [10.0, 2.0, 3.5]
    m.export_kwh = [0.0, 4.25, 0.0]
    m.advance(0.0)
    return m


@pytest.mark.timeout(90)
async def test_a_user_file_adds_a_new_meter_end_to_end(dbus_address: str, tmp_path: Path) -> None:
    devices = user_dir(tmp_path)
    bus = SimBus(9600, units=[meter()])
    async with serve_rtu(bus, directory=tmp_path) as port:
        observer = await Observer.connect(dbus_address)
        try:
            async with running_cli("--devices", str(devices), "-F", f"rtu:{port.path}:9600:1", "--dbus",
                                   dbus_address, "--settings", str(tmp_path / "settings.json")) as proc:
                await observer.wait_name(SERVICE, timeout=30)
                await observer.wait_for(SERVICE, "/Connected", lambda v: v == 1, timeout=20)
                await observer.wait_for(SERVICE, "/Ac/Energy/Forward", lambda v: v is not None, timeout=20)
                got = {p: await observer.get(SERVICE, p) for p in (
                    "/ProductName", "/ProductId", "/Serial", "/Ac/Power", "/Ac/L2/Power", "/Ac/L3/Voltage",
                    "/Ac/Frequency", "/Ac/Energy/Forward", "/Ac/Energy/Reverse", "/Ac/Energy/Consumption",
                    "/NrOfPhases")}
                proc.terminate()
                code, _out, err = await finish(proc)
        finally:
            observer.close()
    assert got["/ProductName"] == "Inepro PRO380-Mod" and got["/ProductId"] == 0xFE40
    assert got["/Serial"] == "18012345" and got["/NrOfPhases"] == 3
    assert got["/Ac/Power"] == pytest.approx(1350.0, abs=0.01)  # kW on the wire, W on D-Bus
    assert got["/Ac/L2/Power"] == pytest.approx(-300.0, abs=0.01)
    assert got["/Ac/L3/Voltage"] == pytest.approx(229.6, abs=1e-3)
    assert got["/Ac/Frequency"] == pytest.approx(50.02, abs=1e-3)
    assert got["/Ac/Energy/Forward"] == pytest.approx(15.5, abs=1e-4)
    assert got["/Ac/Energy/Reverse"] == pytest.approx(4.25, abs=1e-4)
    assert got["/Ac/Energy/Consumption"] == pytest.approx(11.25, abs=1e-4)
    assert code == 0, err
    broken = [line for line in err.splitlines() if "broken.toml" in line]
    assert len(broken) == 1 and "broken.toml:7: model x1.registers: no register set 'nope'" in broken[0], err
    assert "Traceback" not in err


async def test_models_lists_user_files_and_overrides(tmp_path: Path) -> None:
    devices = user_dir(tmp_path)
    text = EXAMPLE.read_text().replace('name = "pro380"', 'name = "sdm230"')
    (devices / "my_sdm230.toml").write_text(text)
    async with running_cli("--models", "--devices", str(devices)) as proc:
        code, out, err = await finish(proc)
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert str(devices / "inepro_pro380.toml") in rows["pro380"]
    assert str(devices / "my_sdm230.toml") in rows["sdm230"] and "Inepro" in rows["sdm230"]
    assert "eastron.toml (built in)" in rows["sdm630"]
    assert "sdm230 from" in err and "replaces" in err  # the override is logged
    assert "broken.toml" in err


async def test_models_refuses_a_missing_directory(tmp_path: Path) -> None:
    async with running_cli("--models", "--devices", str(tmp_path / "nowhere")) as proc:
        code, _out, err = await finish(proc)
    assert code == 2 and err.strip().endswith(f"device definitions directory {tmp_path / 'nowhere'} does not exist")


async def test_check_device_validates_and_reads_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('type = "f32", unit = "Hz"', 'type = "f33", unit = "Hz"'))
    async with running_cli("--check-device", str(bad)) as proc:
        code, out, err = await finish(proc)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if '"f33"' in text)
    assert f"{bad}:{line}: registers.meter[3] /Ac/Frequency: unknown type 'f33'" in err

    bus = SimBus(9600, units=[meter()])
    async with serve_rtu(bus, directory=tmp_path) as port:
        async with running_cli("--check-device", str(EXAMPLE), f"rtu:{port.path}:9600:1") as proc:
            code, out, err = await finish(proc, timeout=30)
    assert code == 0, err
    assert "pro380 (Inepro PRO380-Mod), serial 18012345" in out
    power = next(line for line in out.splitlines() if line.strip().startswith("/Ac/Power "))
    # the raw registers are the big-endian float 1.35 (kW): 0x3FACCCCD
    assert "holding 0x5012 f32" in power and "3FAC CCCD" in power and "1350 W" in power, out
    assert any(line.strip().startswith("/Ac/Energy/Consumption") and "11.25 kWh" in line for line in out.splitlines())
