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
import time
T0=time.monotonic()
def ts(*a): print(f'{time.monotonic()-T0:8.2f}', *a, flush=True)
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
    ts('started')
    settings = await SettingsClient.connect(dbus_address, wait=20)
    assert not settings.is_embedded
    ts('connected')
    progress = []
    try:
        await settings.add([Setting("/Settings/Crash/A", 0), Setting("/Settings/Crash/B", 0)]
                           + [Setting(f"/Settings/Filler/S{i}", f"filler value {i}") for i in range(200)])
        ts('added')
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
            ts('kill')
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            ts('killed');task.cancel()
            await asyncio.gather(task, return_exceptions=True)

            ts('cancelled')
            doc = json.loads(file.read_text())  # always a complete file
            a = doc["settings"]["/Settings/Crash/A"]["value"]
            b = doc["settings"]["/Settings/Crash/B"]["value"]
            assert b <= a <= b + 1, (seed, a, b)
            assert loaded <= a <= attempted, (seed, loaded, a, attempted)
            assert len([k for k in doc["settings"] if k.startswith("/Settings/Filler/")]) == 200

            proc = await start_store(file, dbus_address, log)
            ts('restarted')
            async with asyncio.timeout(20):
                while await settings.get("/Settings/Crash/A") is None:
                    await asyncio.sleep(0.05)
            assert await settings.get("/Settings/Crash/A") == a  # what was on disk is what it serves
            assert not list(tmp_path.glob("settings.json.corrupt-*")), seed
            ts('round done')
            progress.append(a - loaded)
            loaded = a
        assert sum(progress) > 0  # the file really was being rewritten while we killed
        assert "Traceback" not in log.read_text()
    finally:
        ts('finally')
        await settings.close()
        ts('closed')
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
