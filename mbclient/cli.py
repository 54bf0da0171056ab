"""``python -m mbclient`` / ``mbclient``: command line compatible with upstream's flags.

Upstream dbus-modbus-client is started by serial-starter as
``dbus-modbus-client.py -x -s /dev/ttyUSB0`` and by hand with ``-F`` device lists, so the
same flags must keep working. Any bad input is answered with one line on stderr and exit
status 2 (never a traceback): this runs under runit, where a traceback scrolls the
actual reason out of the log.

Exit status: 0 normal stop, 1 fatal error (``-x``), 2 bad input, 3 event loop stalled,
4 memory ceiling exceeded.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .discovery.config import DiscoveryConfig
from .errors import ConfigError
from .runtime.config import MB, RuntimeConfig
from .spec import STANDARD_BAUDS, DeviceSpec, parse_spec, parse_specs

PROG = "mbclient"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
VENUS_MARKER = "/opt/victronenergy"  # present on every Venus OS device


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the usage block before its error; we print one line only."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):  # inf, nan, 1e400
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def _positive_float(text: str) -> float:
    v = _finite_float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


def _non_negative_float(text: str) -> float:
    v = _finite_float(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog=PROG,
        description="Read Modbus energy meters and PV inverters and publish them on D-Bus (Victron Venus OS).",
        epilog="Device spec: method:target:rate_or_port:unit[:model], e.g. rtu:ttyUSB0:9600:1:growatt_min. "
        "Exit status: 0 stop, 1 fatal error (-x), 2 bad input, 3 event loop stalled, 4 memory ceiling.",
    )
    p.add_argument("-s", "--serial", metavar="TTY", help="serial port of this instance (name under /dev or a path); "
                   "its devices come from /Settings/ModbusClient/<tty>/Devices")
    p.add_argument("-r", "--rate", type=int, action="append", metavar="BAUD",
                   help="baud rate of the serial port (repeatable, as upstream)")
    p.add_argument("-m", "--mode", choices=("rtu", "ascii"), default="rtu", help="serial framing (default rtu)")
    p.add_argument("-F", "--force-devices", action="append", metavar="SPECS",
                   help="comma list of device specs to run in addition to the saved list (repeatable)")
    p.add_argument("-x", "--exit", action="store_true", help="exit with status 1 when a device that was online "
                   "fails, or (serial port) when nothing answers at start; runit or serial-starter restarts it")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    p.add_argument("--models", action="store_true", help="list supported device models (and their files) and exit")
    p.add_argument("--devices", action="append", metavar="DIR",
                   help="read device definition files from DIR (repeatable; default /data/mbclient/devices on a "
                        "GX, else ~/.config/mbclient/devices)")
    p.add_argument("--check-device", nargs="+", metavar=("FILE", "SPEC"),
                   help="validate a device definition file; with a spec, read the device once and print every "
                        "path with its raw registers and decoded value")
    p.add_argument("-P", "--probe", action="append", metavar="SPEC",
                   help="identify a device, print its information and exit (repeatable)")
    p.add_argument("--dbus", metavar="ADDRESS", help="D-Bus address (default: session bus if "
                   "DBUS_SESSION_BUS_ADDRESS is set, else the system bus)")
    p.add_argument("--settings", metavar="FILE", help="serve settings ourselves, stored in FILE "
                   "(instead of com.victronenergy.settings)")
    p.add_argument("--gx", action="store_true", help="this is a GX device: wait for com.victronenergy.settings "
                   f"as long as it takes and never serve it (the default when {VENUS_MARKER} exists)")
    p.add_argument("--max-rss", type=_non_negative_float, default=150.0, metavar="MB",
                   help="exit cleanly when the resident set exceeds this many MB (default 150, 0: off)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (off by default)")
    p.add_argument("--stall-timeout", type=_non_negative_float, default=30.0, metavar="SECONDS",
                   help="exit with a stack dump when the event loop is blocked this long (default 30, 0: off)")
    p.add_argument("--grace", type=_non_negative_float, default=10.0, metavar="SECONDS",
                   help="silence before a device shows /Connected=0 (default 10)")
    p.add_argument("--backoff-cap", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="longest interval between probes of a silent device (default 60)")
    p.add_argument("--control-poll", type=_positive_float, default=0.1, metavar="SECONDS",
                   help="power read interval of one of our grid meters while the zero-export controller "
                        "steers on it (default 0.1; others keep 0.25)")
    p.add_argument("--scan", metavar="TARGET", help="scan and print what answers, then exit: rtu:<tty>[:rate] "
                   "(serial port), tcp:<network>/<bits>[,...] or tcp (this host's networks)")
    p.add_argument("-f", "--force-scan", action="store_true",
                   help="full serial scan (units 1..247) instead of the quick one (default units only)")
    p.add_argument("--scan-networks", metavar="CIDRS", help="networks a network scan covers (comma list; "
                   "default: every network of this host's interfaces up to a /22)")
    p.add_argument("--scan-port", type=int, default=502, metavar="PORT", help="Modbus TCP/UDP port a network "
                   "scan asks (default 502)")
    p.add_argument("--mdns", action=argparse.BooleanOptionalAction, default=None,
                   help="browse mDNS for Victron network meters (default: on on a GX, off elsewhere)")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def _check_known_model(spec: DeviceSpec) -> None:
    if spec.model is None:
        return
    from .devices import check_index, get_model  # late: --help and spec errors must not need the drivers

    try:
        model = get_model(spec.model)
    except (KeyError, LookupError, ConfigError):
        raise ConfigError(f"unknown model {spec.model!r} in {spec} (see --models)") from None
    check_index(model, spec.index)


def _serial_path(name: str) -> str:
    return name if name.startswith("/") else f"/dev/{name}"


def _check_port_exists(path: str) -> None:
    if not os.path.exists(path):
        raise ConfigError(f"serial port {path} does not exist")


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    """Validate the parsed options and turn them into a RuntimeConfig (ConfigError on bad input)."""
    for rate in args.rate or ():
        if rate not in STANDARD_BAUDS:
            raise ConfigError(f"bad baud rate {rate} (one of {', '.join(map(str, STANDARD_BAUDS))})")
    specs: list[DeviceSpec] = []
    for text in args.force_devices or ():
        specs.extend(parse_specs(text))
    for spec in specs:
        _check_known_model(spec)
    from .runtime.supervisor import check_no_conflicts  # late: --help must not need the runtime

    check_no_conflicts(specs)
    port_name = "tcp"
    if args.serial is not None:
        if not args.serial.strip():
            raise ConfigError("empty serial port name (-s)")
        path = _serial_path(args.serial)
        _check_port_exists(path)
        port_name = os.path.basename(path)
    for spec in specs:
        if spec.is_serial:
            _check_port_exists(spec.device_path)
    if args.settings is not None:
        parent = os.path.dirname(os.path.abspath(args.settings))
        if not os.path.isdir(parent):
            raise ConfigError(f"settings file directory {parent} does not exist")
    if args.metrics_port is not None and not 1 <= args.metrics_port <= 65535:
        raise ConfigError(f"metrics port {args.metrics_port} outside 1..65535")
    on_gx = args.gx or os.path.isdir(VENUS_MARKER)
    return RuntimeConfig(
        discovery=_discovery_config(args, path if args.serial is not None else None),
        bus_address=args.dbus,
        settings_file=args.settings,
        # On a GX the settings name belongs to Victron's localsettings, however late it
        # starts; the embedded store only when asked for (--settings) or on a laptop.
        settings_wait=None if on_gx and args.settings is None else 3.0,
        port_name=port_name,
        force_devices=specs,
        exit_on_error=args.exit,
        grace=args.grace,
        backoff_base=min(1.0, args.backoff_cap),  # a cap below the 1 s base lowers the base too
        backoff_cap=args.backoff_cap,
        link_down_cap=min(4.0, args.backoff_cap),
        stall_timeout=args.stall_timeout,
        max_rss=int(args.max_rss * MB),
        metrics_port=args.metrics_port,
        control_poll=args.control_poll,
    )


def _discovery_config(args: argparse.Namespace, serial_path: str | None) -> DiscoveryConfig:
    """Scans in the running service: -s port, -m, -r, -f, --scan-networks, --scan-port."""
    networks: tuple[str, ...] = ()
    if args.scan_networks is not None:
        from .discovery.netscan import parse_networks

        networks = tuple(str(n) for n in parse_networks([args.scan_networks]))
    _check_scan_port(args.scan_port)
    return DiscoveryConfig(
        serial_port=serial_path,
        mode=args.mode,
        rates=tuple(args.rate or ()),
        force_scan=args.force_scan,
        networks=networks,
        port=args.scan_port,
        # mDNS on a GX by default; on a laptop only when asked (--mdns)
        mdns=serial_path is None and (args.mdns if args.mdns is not None
                                      else bool(args.gx or os.path.isdir(VENUS_MARKER))),
    )


def setup_logging(debug: bool, quiet: bool = False) -> None:
    """One line per event, no timestamps of our own: multilog prefixes its TAI64N stamp.

    Per-transaction detail exists only at DEBUG.
    """
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(levelname)s %(name)s %(message)s"
    if sys.stderr.isatty():  # by hand on a console: time helps
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)


def print_models(out=sys.stdout) -> None:
    """The registry as a table (what ``--models`` prints)."""
    from .devices import all_models

    rows = [("Model", "Manufacturer", "Product", "ProductId", "Default role", "Other roles", "Source")]
    for m in all_models():
        others = [r for r in m.allowed_roles if r != m.default_role]
        rows.append((m.name, m.manufacturer, m.product_name, f"0x{m.product_id:04X}", m.default_role,
                     ",".join(others) or "-", m.source or "code"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _load_definitions(args: argparse.Namespace) -> None:
    """The user's definition files (a bad one is skipped with its line in the log; a
    directory named with --devices that does not exist is a ConfigError)."""
    from .devices import load_user_definitions, user_dirs

    load_user_definitions(user_dirs(args.devices or ()))


def _check_scan_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(f"scan port {port} outside 1..65535")


def _run_scan(args: argparse.Namespace) -> int:
    """``--scan``: validate (ConfigError), then scan and print (see discovery/command.py)."""
    from .discovery.command import parse_target, run_scan

    target = parse_target(args.scan, args.rate)
    _check_scan_port(args.scan_port)
    if target.port:
        _check_port_exists(_serial_path(target.port))
    setup_logging(args.debug, quiet=True)  # the printed lines are the output
    try:
        return run_scan(target, full=args.force_scan, port=args.scan_port)
    except KeyboardInterrupt:
        print(f"{PROG}: scan interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The command; Ctrl-C at any moment (imports, a probe, the service) is a clean stop."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.check_device:
            if len(args.check_device) > 2:
                raise ConfigError("--check-device takes a file and at most one spec")
            spec = parse_spec(args.check_device[1]) if len(args.check_device) == 2 else None
            if spec is not None and spec.is_serial:
                _check_port_exists(spec.device_path)
            setup_logging(args.debug, quiet=True)
            _load_definitions(args)
            from .runtime.check import run_check

            return run_check(args.check_device[0], spec)
        setup_logging(args.debug, quiet=bool(args.models or args.probe))
        _load_definitions(args)
        if args.models:
            print_models()
            return EXIT_OK
        if args.probe:
            specs = [parse_spec(t) for t in args.probe]
            for spec in specs:
                _check_known_model(spec)
                if spec.is_serial:
                    _check_port_exists(spec.device_path)
            setup_logging(args.debug, quiet=True)  # the printed table is the output
            from .runtime.probe import run_probe

            return run_probe(specs)
        if args.scan:
            return _run_scan(args)
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.debug)
    from .runtime.supervisor import run_supervisor

    return run_supervisor(config)
