"""Shared harness of the hardening tests and scripts (issue 8, items 3-5); no tests here.

What it adds to ``test_runtime_support``:

* the real supervisor in **its own process** with test-sized timers
  (``python tests/test_harden_support.py serve ...``): a crash, a leak or a lost bus name
  then belongs to the service alone, its RSS can be read from ``/proc`` and it can be
  killed with SIGKILL like runit's worst day;
* ``BusWatch``: a consumer's connection that also records every ``NameOwnerChanged``
  with the time it arrived (unique names included), so ordering questions ("was the
  old connection gone before the new one claimed the name?") can be answered;
* ``private_bus()``: a dbus-daemon of its own for the scripts (the tests use the
  session fixture of ``fixtures_dbus``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: the package lives one level up
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
from dbus_fast import Message, MessageType  # noqa: E402
from test_runtime_support import BAUD, TEST_TIMERS, Observer, fast_options  # noqa: E402

GROWATT_NAME = "com.victronenergy.pvinverter.growatt_QXB1234567"
METER_NAME = "com.victronenergy.grid.eastron_23000123"
GROWATT_IDENT = "growatt_QXB1234567"
METER_IDENT = "eastron_23000123"

#: Timers of the service child: production logic, test-sized waits. The backoff reaches
#: its cap after a few probes, so a soak cycle exercises the capped regime.
CHILD_TIMERS: dict[str, Any] = dict(TEST_TIMERS, grace=0.3, backoff_cap=0.5, backoff_jitter=0.1)


def rtu_spec(path: str, unit: int, model: str | None = None) -> str:
    return f"rtu:{path}:{BAUD}:{unit}" + (f":{model}" if model else "")


# ------------------------------------------------------------------------------ the child
def serve_main(argv: list[str]) -> int:
    """Child entry point: run the real Supervisor until SIGTERM (see the module doc)."""
    from mbclient.cli import setup_logging
    from mbclient.runtime.config import RuntimeConfig
    from mbclient.runtime.supervisor import Supervisor
    from mbclient.spec import parse_spec

    p = argparse.ArgumentParser(prog="test_harden_support.py serve")
    p.add_argument("--dbus", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--timers", default="{}", help="JSON object of RuntimeConfig overrides")
    p.add_argument("specs", nargs="+")
    args = p.parse_args(argv)
    timers = {**CHILD_TIMERS, **json.loads(args.timers)}
    config = RuntimeConfig(bus_address=args.dbus, settings_file=args.settings,
                           force_devices=[parse_spec(s) for s in args.specs], **timers)
    setup_logging(debug=False)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await Supervisor(config, options_factory=fast_options).run()

    anyio.run(serve, backend="asyncio")
    return 0


def child_env() -> dict[str, str]:
    """No inherited bus address: the child must use the one it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}


async def start_service(dbus_address: str, settings_file: Path, specs: list[str], log: Path,
                        **timers: Any) -> asyncio.subprocess.Process:
    """The supervisor in its own process (stderr appended to ``log``)."""
    with open(log, "ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__)), "serve", "--dbus", dbus_address, "--settings", str(settings_file),
            "--timers", json.dumps(timers), *specs, cwd=ROOT, env=child_env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )


async def start_cli(dbus_address: str, settings_file: Path, specs: list[str], log: Path,
                    *extra: str) -> asyncio.subprocess.Process:
    """``python -m mbclient`` exactly as a user starts it (production timers)."""
    with open(log, "ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mbclient", "-F", ",".join(specs), "--dbus", dbus_address,
            "--settings", str(settings_file), *extra, cwd=ROOT, env=child_env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=err,
        )


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it does not stop in time; returns the exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


def rss_kb(pid: int) -> int:
    """Resident set of ``pid`` in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise LookupError(f"no VmRSS for {pid}")


# ------------------------------------------------------------------------------ the consumer
@dataclass
class BusWatch(Observer):
    """``Observer`` plus every NameOwnerChanged, timestamped (``time.monotonic``)."""

    events: list[tuple[float, str, str, str]] = field(default_factory=list)

    @classmethod
    async def connect(cls, address: str) -> BusWatch:
        watch = await super().connect(address)
        assert isinstance(watch, BusWatch)

        def on_message(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged" \
                    and msg.sender == "org.freedesktop.DBus":
                name, old, new = msg.body
                watch.events.append((time.monotonic(), name, old, new))

        watch.bus.add_message_handler(on_message)
        return watch

    async def owner(self, name: str) -> str | None:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="GetNameOwner", signature="s", body=[name]))
        return reply.body[0] if reply.message_type is MessageType.METHOD_RETURN else None

    def changes_of(self, name: str, since: float = 0.0) -> list[tuple[float, str, str]]:
        """(time, old owner, new owner) of ``name`` received after ``since``."""
        return [(t, old, new) for t, n, old, new in self.events if n == name and t >= since]


# ------------------------------------------------------------------------------ scripts
@contextlib.contextmanager
def private_bus() -> Iterator[tuple[str, Path]]:
    """A dbus-daemon of its own in a temporary directory: (address, directory)."""
    from mbclient.dbus.daemon import start_dbus_daemon, stop_dbus_daemon

    with tempfile.TemporaryDirectory(prefix="mbclient-harden-") as tmp:
        proc, address = start_dbus_daemon(Path(tmp))
        try:
            yield address, Path(tmp)
        finally:
            stop_dbus_daemon(proc)


@contextlib.asynccontextmanager
async def watching(address: str) -> AsyncIterator[BusWatch]:
    watch = await BusWatch.connect(address)
    try:
        yield watch
    finally:
        watch.close()


def quiet_logging() -> None:
    """Scripts print figures; library INFO lines of the in-process parts would drown them."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve_main(sys.argv[2:]))
    sys.exit("usage: test_harden_support.py serve --dbus ADDRESS --settings FILE [--timers JSON] SPEC...")
