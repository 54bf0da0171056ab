"""Fixtures for a private dbus-daemon (owned by the D-Bus room).

``dbus_daemon`` (session scope) starts ``dbus-daemon --nofork --print-address`` with the
project's private-bus configuration (``mbclient.dbus.daemon``) in a temporary directory
and yields its address; ``dbus_address``
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
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mbclient.dbus.daemon import start_dbus_daemon, stop_dbus_daemon  # noqa: F401 - re-exported

PEER = Path(__file__).with_name("dbus_peer.py")


@pytest.fixture(scope="session")
def dbus_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, address = start_dbus_daemon(tmp_path_factory.mktemp("dbus"))
    try:
        yield address
    finally:
        stop_dbus_daemon(proc)


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
