"""The embedded settings store survives ``kill -9`` at random moments of a write burst.

The store runs standalone (``python -m mbclient.dbus.localsettings``) with a 5 ms save
delay, so it saves its whole file (with 200 filler settings, ~40 KB) over and over while
a client hammers SetValue. Each round kills it with SIGKILL at a random moment and
restarts it: the file must load (no corrupt copy kept aside), and it must hold one
complete state -- A and B are written in that order, so B <= A <= B + 1 -- that is not
older than what the previous start loaded and not newer than the last write attempted.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from pathlib import Path

import pytest

from mbclient.dbus.settings import Setting, SettingsClient

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[1]


async def start_store(file: Path, address: str, log: Path) -> asyncio.subprocess.Process:
    with open(log, "ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mbclient.dbus.localsettings", "--file", str(file), "--dbus", address,
            "--delay", "0.005", cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )


async def test_kill_9_during_write_burst_leaves_old_or_new_file(dbus_address: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    file, log = tmp_path / "settings.json", tmp_path / "localsettings.log"
    proc = await start_store(file, dbus_address, log)
    settings = await SettingsClient.connect(dbus_address, wait=20)
    assert not settings.is_embedded
    progress = []
    try:
        await settings.add([Setting("/Settings/Crash/A", 0), Setting("/Settings/Crash/B", 0)]
                           + [Setting(f"/Settings/Filler/S{i}", f"filler value {i}") for i in range(200)])
        loaded = 0
        for _ in range(6):
            attempted = loaded

            async def hammer(start: int) -> None:
                nonlocal attempted
                i = start
                while True:
                    i += 1
                    attempted = i
                    await settings.set("/Settings/Crash/A", i)
                    await settings.set("/Settings/Crash/B", i)

            task = asyncio.ensure_future(hammer(loaded))
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

            doc = json.loads(file.read_text())  # always a complete file
            a = doc["settings"]["/Settings/Crash/A"]["value"]
            b = doc["settings"]["/Settings/Crash/B"]["value"]
            assert b <= a <= b + 1, (seed, a, b)
            assert loaded <= a <= attempted, (seed, loaded, a, attempted)
            assert len([k for k in doc["settings"] if k.startswith("/Settings/Filler/")]) == 200

            proc = await start_store(file, dbus_address, log)
            async with asyncio.timeout(20):
                while await settings.get("/Settings/Crash/A") is None:
                    await asyncio.sleep(0.05)
            assert await settings.get("/Settings/Crash/A") == a  # what was on disk is what it serves
            assert not list(tmp_path.glob("settings.json.corrupt-*")), seed
            progress.append(a - loaded)
            loaded = a
        assert sum(progress) > 0  # the file really was being rewritten while we killed
        assert "Traceback" not in log.read_text()
    finally:
        await settings.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)


SAVE_BIG = """
import sys
from mbclient.dbus.settingsfile import SettingsFile
n = int(sys.argv[2])
SettingsFile(sys.argv[1]).save({f"/Settings/Big/S{i}": {"type": "s", "value": "new" * 20, "default": "",
                                 "min": None, "max": None, "silent": False} for i in range(n)})
"""


async def test_kill_9_inside_a_save_keeps_the_old_file(tmp_path: Path) -> None:
    """Kill a process while its temp file exists (the write is in progress): the real
    file is untouched or completely new, and the leftover temp file is cleaned up."""
    from mbclient.dbus.settingsfile import SettingsFile

    file = tmp_path / "settings.json"
    old = {"/Settings/Old/A": {"type": "i", "value": 1, "default": 0, "min": None, "max": None, "silent": False}}
    SettingsFile(file).save(old)
    before = file.read_bytes()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SAVE_BIG, str(file), "100000", cwd=ROOT)
    async with asyncio.timeout(60):
        while not list(tmp_path.glob(".settings.json.*.tmp")) and proc.returncode is None:
            await asyncio.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    after = file.read_bytes()
    loaded = SettingsFile(file).load()
    if after == before:
        assert loaded == old
    else:  # the rename had already happened: then it is the complete new file
        assert len(loaded) == 100000
    assert not list(tmp_path.glob(".settings.json.*.tmp"))  # load() removed the leftover
    assert not list(tmp_path.glob("settings.json.corrupt-*"))
