"""Run the seed site on a pseudo-terminal and/or sockets: ``python -m mbclient.sim``.

For the demo and for poking at mbclient by hand: prints the device specs to give mbclient
(e.g. ``rtu:/tmp/mbsim-x/ttyUSB0:9600:2``), steps the physics, and reports the bus
statistics every few seconds until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from ..errors import ConfigError
from .net import serve_rtu_over_tcp, serve_tcp, serve_udp
from .rtu_pty import serve_rtu
from .scenario import GROWATT_UNIT, METER_UNIT, seed_site
from .site import Battery, SunCurve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mbclient.sim", description=__doc__.splitlines()[0])
    p.add_argument("--baud", type=int, default=9600, help="simulated line speed (default 9600)")
    p.add_argument("--dir", default=None, help="directory for the serial device link (default: a temporary one)")
    p.add_argument("--name", default="ttyUSB0", help="serial device link name (default ttyUSB0)")
    p.add_argument("--ascii", action="store_true", help="Modbus ASCII on the serial port instead of RTU")
    p.add_argument("--tcp", type=int, default=None, metavar="PORT", help="also serve Modbus TCP on this port")
    p.add_argument("--udp", type=int, default=None, metavar="PORT", help="also serve Modbus UDP on this port")
    p.add_argument("--rtu-tcp", type=int, default=None, metavar="PORT", help="also serve RTU over TCP")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--hour", type=float, default=12.0, help="time of day to start at")
    p.add_argument("--sun-curve", action="store_true", help="follow the sun curve instead of a fixed 3000 W")
    p.add_argument("--load", type=float, default=800.0, help="house load in W (default 800)")
    p.add_argument("--battery", action="store_true", help="add a battery that charges from surplus")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.dir is not None and not os.path.isdir(args.dir):
        raise ConfigError(f"--dir {args.dir}: no such directory")
    if args.baud <= 0:
        raise ConfigError(f"--baud {args.baud}: must be a positive number")
    if args.time_scale <= 0:
        raise ConfigError(f"--time-scale {args.time_scale}: must be positive")
    for opt in ("tcp", "udp", "rtu_tcp"):
        port = getattr(args, opt)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"--{opt.replace('_', '-')} {port}: not a port number")
    return args


async def run(args: argparse.Namespace) -> None:
    site = seed_site(
        args.baud,
        seed=args.seed,
        sun_w=None if args.sun_curve else 3000.0,
        load_w=args.load,
        battery=Battery() if args.battery else None,
        time_scale=args.time_scale,
        start_hour=args.hour,
        sun=SunCurve(),
    )
    bus = site.bus
    assert bus is not None
    mode = "ascii" if args.ascii else "rtu"
    async with contextlib.AsyncExitStack() as stack:
        port = await stack.enter_async_context(serve_rtu(bus, mode=mode, directory=args.dir, link_name=args.name))
        print(f"serial: {mode}:{port.path}:{args.baud}:{GROWATT_UNIT} (Growatt)  {mode}:{port.path}:{args.baud}:{METER_UNIT} (SDM230)")
        for flag, serve, kind in ((args.tcp, serve_tcp, "tcp"), (args.udp, serve_udp, "udp")):
            if flag is not None:
                srv = await stack.enter_async_context(serve(bus, port=flag))
                print(f"{kind}: {kind}:{srv.host}:{srv.port}:{GROWATT_UNIT}  {kind}:{srv.host}:{srv.port}:{METER_UNIT}")
        if args.rtu_tcp is not None:
            srv = await stack.enter_async_context(serve_rtu_over_tcp(bus, port=args.rtu_tcp))
            print(f"rtu over tcp: {srv.host}:{srv.port}")
        await stack.enter_async_context(site.running())
        sys.stdout.flush()
        while True:
            await asyncio.sleep(5.0)
            print(
                f"{site.hour:05.2f}h sun {site.available_sun():6.0f} W  pv {site.inverter.output_w:6.0f} W  "
                f"grid {site.grid_w:6.0f} W  rate {site.inverter.rate:3d}  tx {bus.transactions}  "
                f"collisions {bus.collisions}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ConfigError as exc:
        print(f"mbclient.sim: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    except (OSError, ConfigError) as exc:  # a port in use, a directory we cannot write: one line
        print(f"mbclient.sim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
