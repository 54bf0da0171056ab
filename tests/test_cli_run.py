"""``python -m mbclient`` as runit runs it: a real process against the simulated line and
the private dbus-daemon; stopped with SIGTERM; ``-x`` turns a device error into exit 1;
``-P`` probes a unit and prints what it is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator

import anyio
import pytest
from dbus_fast import NameFlag, RequestNameReply
from test_runtime_support import Observer, site_on_pty, spec_for

from mbclient.dbus.bus import connect_bus

pytestmark = pytest.mark.asyncio

ROOT = pathlib.Path(__file__).resolve().parent.parent
METER = "com.victronenergy.grid.eastron_23000123"


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mbclient", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@contextlib.asynccontextmanager
async def running_cli(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``start_cli``, and killed on the way out if the test left it running."""
    proc = await start_cli(*args)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def finish(proc: asyncio.subprocess.Process, timeout: float = 20) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.timeout(60)
async def test_runs_publishes_and_stops_cleanly_on_sigterm(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        observer = await Observer.connect(dbus_address)
        try:
            async with running_cli("-F", str(spec_for(port.path, 2)), "--dbus", dbus_address,
                                   "--settings", str(tmp_path / "settings.xml")) as proc:
                await observer.wait_name(METER, timeout=20)
                await observer.wait_for(METER, "/Connected", lambda v: v == 1)
                assert await observer.get(METER, "/Ac/Power") is not None
                proc.send_signal(signal.SIGTERM)
                code, _out, err = await finish(proc)
        finally:
            observer.close()
        assert code == 0, err
        assert "Traceback" not in err
        assert "SIGTERM: stopping" in err
        assert METER not in await (await Observer.connect(dbus_address)).names()
        assert (tmp_path / "settings.xml").exists()  # the embedded settings were saved


async def _squat(dbus_address: str, name: str):
    bus = await connect_bus(dbus_address)
    assert await bus.request_name(name, NameFlag.DO_NOT_QUEUE) is RequestNameReply.PRIMARY_OWNER
    return bus


@pytest.mark.timeout(60)
async def test_exit_flag_makes_a_device_error_fatal(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        squatter = await _squat(dbus_address, METER)  # somebody else already publishes the meter
        try:
            proc = await start_cli("-x", "-F", str(spec_for(port.path, 2, "sdm230")), "--dbus", dbus_address,
                                   "--settings", str(tmp_path / "settings.xml"))
            code, _out, err = await finish(proc, 30)
        finally:
            squatter.disconnect()
    assert code == 1, err
    assert "already published" in err
    assert "exiting (-x)" in err


@pytest.mark.timeout(60)
async def test_without_exit_flag_a_device_error_stays_local(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        squatter = await _squat(dbus_address, METER)
        observer = await Observer.connect(dbus_address)
        inverter = "com.victronenergy.pvinverter.growatt_QXB1234567"
        try:
            async with running_cli("-F", f"{spec_for(port.path, 2, 'sdm230')},{spec_for(port.path, 1, 'growatt_min')}",
                                   "--dbus", dbus_address, "--settings", str(tmp_path / "settings.xml")) as proc:
                await observer.wait_for(inverter, "/Connected", lambda v: v == 1, timeout=20)
                await anyio.sleep(0.5)
                assert proc.returncode is None  # the meter's failure did not stop the process
                squatter.disconnect()  # the name is free again: the meter's task is retried
                await observer.wait_for(METER, "/Connected", lambda v: v == 1, timeout=20)
                proc.send_signal(signal.SIGTERM)
                code, _out, err = await finish(proc)
        finally:
            observer.close()
    assert code == 0, err
    assert "device task failed" in err


@pytest.mark.timeout(60)
async def test_probe_prints_identity(tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        proc = await start_cli("-P", str(spec_for(port.path, 1)), "-P", str(spec_for(port.path, 2)))
        code, out, err = await finish(proc, 30)
        assert code == 0, err
        assert "growatt_min" in out and "QXB1234567" in out
        assert "sdm230" in out and "23000123" in out
        assert "com.victronenergy.pvinverter.growatt_QXB1234567" in out

        proc = await start_cli("-P", str(spec_for(port.path, 9, "sdm230")))  # nobody at unit 9
        code, out, err = await finish(proc, 30)
        assert code == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "timeout" in lines[0], err


@pytest.mark.timeout(60)
async def test_memory_ceiling_exits_cleanly(dbus_address: str, tmp_path) -> None:
    async with site_on_pty(tmp_path) as (_site, port):
        proc = await start_cli("-F", str(spec_for(port.path, 2)), "--dbus", dbus_address,
                               "--settings", str(tmp_path / "settings.xml"), "--max-rss", "1")
        code, _out, err = await finish(proc, 30)
    assert code == 4, err
    assert "exceeds the ceiling of 1 MB" in err
    assert "Traceback" not in err


@pytest.mark.timeout(60)
async def test_unreachable_bus_is_one_clear_error(tmp_path) -> None:
    proc = await start_cli("-F", "tcp:127.0.0.1:1502:1:sdm230", "--dbus", f"unix:path={tmp_path}/no-bus")
    code, _out, err = await finish(proc, 30)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("ERROR") and "cannot connect to D-Bus" in err
