"""``python -m mbclient.demo``: the whole thing on one machine, no hardware.

A private ``dbus-daemon`` stands in for the GX's system bus; the built-in simulator
serves the seed installation (Growatt MIN on unit 1, Eastron SDM230 grid meter on unit 2)
on a pseudo-terminal at 9600 Bd, with a sun curve and a house load; ``python -m mbclient``
runs against that port exactly as it would against a USB RS-485 adapter, with its
embedded settings service; and a live view reads the published services over D-Bus, as
a GX's GUI would.

Every process is ours and is stopped on the way out, in order (mbclient, then the bus),
whether the demo ends by ``--seconds``, Ctrl-C or SIGTERM. Children also get SIGTERM from
the kernel if the demo itself is killed, so nothing is ever left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .dbus.daemon import daemon_command
from .errors import ConfigError

if TYPE_CHECKING:
    from .liveview import LiveView
    from .sim import Site

# House load through the day (hour, W): night base load, breakfast, lunch, dinner.
LOAD_PROFILE = (
    (0.0, 320.0), (6.5, 950.0), (8.0, 480.0), (11.5, 1250.0), (13.0, 620.0),
    (17.5, 1600.0), (20.5, 750.0), (23.0, 320.0),
)
DAY = {"start_hour": 11.25, "time_scale": 60.0}  # one simulated minute per second; lunch at +15 s
NIGHT = {"start_hour": 12.0, "time_scale": 7200.0}  # two simulated hours per second: dusk after ~4 s

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: own session (Ctrl-C reaches only the demo, which stops
    children in order) and SIGTERM from the kernel if the demo dies without cleaning up."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _stop_process(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> int:
    """SIGTERM, wait, SIGKILL if it will not go."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


@contextlib.asynccontextmanager
async def private_bus(directory: Path) -> AsyncIterator[str]:
    """A dbus-daemon of our own, listening on a socket in ``directory``; yields its address."""
    proc = await asyncio.create_subprocess_exec(
        *daemon_command(directory),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )
    try:
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
        except asyncio.TimeoutError:
            line = b""
        address = line.decode().strip()
        if not address:
            raise ConfigError("dbus-daemon did not start")
        yield address
    finally:
        await _stop_process(proc)


def _clock(hour: float) -> str:
    minutes = int(hour * 60) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Demo:
    """The simulator, mbclient and the view, started and stopped together."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = asyncio.Event()
        self.failure: str | None = None

    # -- simulator ---------------------------------------------------------------------------
    def make_site(self) -> Site:
        from .sim import SunCurve, seed_site  # late: --help must not need the simulator

        clock = NIGHT if self.args.night else DAY
        site = seed_site(
            9600, sun_w=None, load_w=None, sun=SunCurve(peak_w=4600.0, clouds=0.0 if self.args.night else 0.35),
            time_scale=clock["time_scale"], start_hour=clock["start_hour"], seed=7,
        )
        site.load_steps = sorted(LOAD_PROFILE)
        site.hour = clock["start_hour"]  # seed_site settles with one long step; start where we said
        return site

    def sim_line(self, site: Site) -> str:
        inverter = "asleep" if site.sleeping else f"{site.inverter.output_w:.0f} W"
        return (f"simulated {_clock(site.hour)}  sun {site.available_sun():.0f} W  house {site.house_load():.0f} W  "
                f"inverter {inverter}  grid {site.grid_w:+.0f} W")

    # -- mbclient ------------------------------------------------------------------------------
    def mbclient_command(self, port_path: str, address: str, settings: Path) -> list[str]:
        specs = f"rtu:{port_path}:9600:1:growatt_min,rtu:{port_path}:9600:2:sdm230"
        cmd = [
            sys.executable, "-m", "mbclient", "-F", specs, "--settings", str(settings), "--dbus", address,
            # demo timing: a sleeping inverter is noticed in seconds and re-probed often
            "--grace", "3", "--backoff-cap", "2",
        ]
        if self.args.metrics_port:
            cmd += ["--metrics-port", str(self.args.metrics_port)]
        return cmd

    async def watch_child(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        code = await proc.wait()
        if not self.stop.is_set():
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            self.failure = f"mbclient exited with status {code}:\n" + "\n".join("  " + t for t in tail)
            self.stop.set()

    # -- main ------------------------------------------------------------------------------------
    async def run(self) -> int:
        from dbus_fast.aio import MessageBus

        from .liveview import BusMirror, LiveView
        from .sim import serve_rtu

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        work = Path(tempfile.mkdtemp(prefix="mbclient-demo-"))
        log_path = work / "mbclient.log"
        try:
            async with contextlib.AsyncExitStack() as stack:
                address = await stack.enter_async_context(private_bus(work))
                site = self.make_site()
                port = await stack.enter_async_context(serve_rtu(site.bus, directory=work, link_name="ttyUSB0"))
                await stack.enter_async_context(site.running(0.1))

                log_file = stack.enter_context(open(log_path, "wb"))
                env = dict(os.environ, DBUS_SESSION_BUS_ADDRESS=address, PYTHONUNBUFFERED="1")
                proc = await asyncio.create_subprocess_exec(
                    *self.mbclient_command(port.path, address, work / "settings.xml"),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                    env=env, preexec_fn=_die_with_parent,
                )
                stack.push_async_callback(_stop_process, proc)
                watcher = asyncio.create_task(self.watch_child(proc, log_path))
                stack.callback(watcher.cancel)

                bus = await MessageBus(bus_address=address).connect()
                stack.callback(bus.disconnect)
                mirror = BusMirror(bus)
                await mirror.start()
                stack.push_async_callback(mirror.stop)

                tty = sys.stdout.isatty() and not self.args.plain
                started = time.monotonic()

                def header() -> list[str]:
                    left = ""
                    if self.args.seconds:
                        left = f"  ·  {max(0.0, self.args.seconds - (time.monotonic() - started)):.0f} s left"
                    return [f"mbclient demo{left}  ·  Ctrl-C stops", self.sim_line(site)]

                view = LiveView(mirror, header=header, tty=tty)
                if not tty:
                    print(f"mbclient demo: dbus {address}, serial {port.path}, log {log_path}", flush=True)
                    view_task = asyncio.create_task(self._plain(view, site, started))
                else:
                    view_task = asyncio.create_task(view.run(self.stop))
                if self.args.seconds:
                    loop.call_later(self.args.seconds, self.stop.set)
                await self.stop.wait()
                await view_task
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.args.keep:
                print(f"mbclient demo: kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
        if self.failure:
            print(f"mbclient demo: {self.failure}", file=sys.stderr)
            return 1
        return 0

    async def _plain(self, view: LiveView, site: Site, started: float) -> None:
        """Non-terminal output: the simulated world and the published services, every second."""
        while True:
            print(f"[{time.monotonic() - started:6.1f}s] sim {self.sim_line(site)}", flush=True)
            view.draw()
            try:
                await asyncio.wait_for(self.stop.wait(), view.interval)
                return
            except asyncio.TimeoutError:
                pass


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="scripts/demo",
        description="mbclient on a simulated RS-485 bus (Growatt MIN + Eastron SDM230), published on a private D-Bus.",
    )
    p.add_argument("--seconds", type=float, default=0.0, metavar="N", help="stop after N seconds (default: Ctrl-C)")
    p.add_argument("--night", action="store_true",
                   help="a fast clock (2 simulated hours per second) from the afternoon: the sun sets, the inverter falls asleep, and wakes at dawn")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="also serve Prometheus /metrics on PORT")
    p.add_argument("--plain", action="store_true", help="print lines instead of redrawing the terminal")
    p.add_argument("--keep", action="store_true", help="keep the working directory (mbclient's log, settings)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.seconds < 0:
            raise ConfigError("--seconds must not be negative")
        return asyncio.run(Demo(args).run())
    except ConfigError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
