"""scripts/demo end to end: simulator, mbclient and the live view, as a newcomer runs it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\[\s*([\d.]+)s\] (grid|pvinverter)\.(\S+) (.*)$")

pytestmark = pytest.mark.timeout(120)


def demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mbclient.demo", "--plain", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def series(stdout: str) -> dict[str, list[tuple[float, dict[str, str]]]]:
    """service kind -> [(elapsed, {path or 'Connected': text}), ...] from the plain lines."""
    out: dict[str, list[tuple[float, dict[str, str]]]] = {}
    for line in stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        fields = dict(re.findall(r"(Connected|/[A-Za-z0-9/]+)=(\S+)", m.group(4)))
        out.setdefault(m.group(2), []).append((float(m.group(1)), fields))
    return out


def leftovers(marker: str) -> list[str]:
    """Processes whose command line mentions ``marker`` (the demo's work directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def workdir(stdout: str) -> str:
    m = re.search(r"log (\S+)/mbclient\.log", stdout)
    assert m, stdout[:500]
    return m.group(1)


def test_demo_shows_both_services_changing_and_exits_zero() -> None:
    r = demo("--seconds", "8")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = series(r.stdout)
    for kind in ("grid", "pvinverter"):
        connected = [f for _, f in data.get(kind, []) if f.get("Connected") == "1" and f.get("/Ac/Power", "--") != "--"]
        assert connected, f"{kind} never published power:\n{r.stdout[-3000:]}"
        assert len({f["/Ac/Power"] for f in connected}) >= 2 or len({f.get("/Ac/Energy/Forward") for f in connected}) >= 2, \
            f"{kind} values never changed:\n{r.stdout[-3000:]}"
    assert not leftovers(workdir(r.stdout))
    assert not Path(workdir(r.stdout)).exists()


@pytest.mark.slow
def test_demo_night_the_inverter_sleeps_and_wakes() -> None:
    r = demo("--night", "--seconds", "16")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    states = [f.get("Connected") for _, f in series(r.stdout).get("pvinverter", [])]
    assert "0" in states, r.stdout[-3000:]
    first_asleep = states.index("0")
    assert "1" in states[first_asleep:], f"never woke:\n{r.stdout[-3000:]}"
    assert "inverter asleep" in r.stdout
    # the meter stayed connected all night
    assert all(f.get("Connected") == "1" for _, f in series(r.stdout)["grid"][-5:])


def test_ctrl_c_stops_everything() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mbclient.demo", "--plain"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = workdir(proc.stdout.readline())  # the banner with the work directory
    assert len(leftovers(marker)) >= 2  # dbus-daemon and mbclient
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until mbclient publishes: a real shutdown, not a kill at start-up
        m = LINE.match(proc.stdout.readline())
        if m and "Connected=1" in m.group(4):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert not leftovers(marker)


def test_killed_demo_takes_its_children_along() -> None:
    """Even SIGKILL (no cleanup possible) leaves nothing running: the kernel tells the children."""
    proc = subprocess.Popen([sys.executable, "-m", "mbclient.demo", "--plain"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    marker = workdir(proc.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(leftovers(marker)) < 2:
            time.sleep(0.1)
        assert len(leftovers(marker)) >= 2
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 15
        while leftovers(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leftovers(marker)
    finally:
        proc.stdout.close()
        shutil.rmtree(marker, ignore_errors=True)
