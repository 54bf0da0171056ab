"""Fixtures for a private dbus-daemon (owned by the D-Bus room).

``dbus_daemon`` (session scope) starts ``dbus-daemon --nofork --print-address`` with a
minimal configuration in a temporary directory and yields its address; ``dbus_address``
is the same address for function-scoped use. Limits mirror a Venus OS system bus
(1024 match rules, 50000 pending replies per connection). A missing dbus-daemon is an
error, not a skip: ``scripts/test`` installs it, and a D-Bus layer that was never run
against a real daemon proves nothing.

Helpers for tests: ``run_peer(...)`` runs ``tests/dbus_peer.py`` (a jeepney client in a
separate process) without blocking the event loop, ``start_peer(...)`` starts it for
streaming output.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PEER = Path(__file__).with_name("dbus_peer.py")

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_match_rules_per_connection">1024</limit>
  <limit name="max_replies_per_connection">50000</limit>
</busconfig>
"""


def start_dbus_daemon(directory: Path) -> tuple[subprocess.Popen, str]:
    """Start a private bus in ``directory``; return the process and its address."""
    exe = shutil.which("dbus-daemon")
    if exe is None:
        raise RuntimeError("dbus-daemon not found: install the Debian package 'dbus' (scripts/test does)")
    config = directory / "bus.conf"
    config.write_text(CONFIG.format(socket=directory / "bus"))
    log = open(directory / "daemon.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(
        [exe, f"--config-file={config}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()
    address = proc.stdout.readline().strip()
    if not address:
        proc.kill()
        raise RuntimeError(f"dbus-daemon did not start: {(directory / 'daemon.log').read_text()}")
    return proc, address


@pytest.fixture(scope="session")
def dbus_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, address = start_dbus_daemon(tmp_path_factory.mktemp("dbus"))
    try:
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def dbus_address(dbus_daemon: str) -> str:
    return dbus_daemon


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    return env


async def run_peer(*args: str, timeout: float = 60) -> object:
    """Run dbus_peer.py with ``args`` to completion and return its JSON output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PEER), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=peer_env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise AssertionError(f"dbus_peer {args[0]} failed: {err.decode()}")
    return json.loads(out)


async def start_peer(*args: str) -> asyncio.subprocess.Process:
    """Start dbus_peer.py; its stdout is a pipe of lines."""
    return await asyncio.create_subprocess_exec(
        sys.executable, str(PEER), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=peer_env()
    )


async def run_tool(*argv: str, timeout: float = 30) -> str:
    """Run a command-line tool (dbus-send ...) without blocking the loop; return stdout."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=peer_env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}): {err.decode()}")
    return out.decode()
