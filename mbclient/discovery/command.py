"""``mbclient --scan TARGET``: scan a serial port or networks, print what answers, exit.

The first thing someone with a new USB-RS485 adapter runs. Nothing is published and no
settings are touched. Targets::

    rtu:ttyUSB0            quick scan (models' default units at their rates, -r to choose)
    rtu:ttyUSB0:19200      one rate
    ascii:/dev/ttyUSB1     Modbus ASCII framing
    tcp:192.168.1.0/24     Modbus TCP and UDP on the networks (comma list)
    tcp                    the host's own networks (as the GX's automatic scan)

``-f/--force-scan`` makes a serial scan a full one (units 1..247). On a terminal a
progress bar runs on stderr; the results go to stdout, one line per unit. Exit status 0
when something answered, 1 when nothing did, 2 on bad input.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

import anyio

from ..errors import ConfigError, LinkDown
from ..spec import SERIAL_METHODS, STANDARD_BAUDS
from .netscan import DEFAULT_PORT, NetworkScan, automatic_networks, host_interfaces, parse_networks
from .probe import Found
from .serialscan import SerialScan

EXIT_FOUND = 0
EXIT_NOTHING = 1


@dataclass(frozen=True)
class ScanTarget:
    method: str  # rtu | ascii | net
    port: str = ""  # serial port (name or path)
    rates: tuple[int, ...] = ()
    networks: tuple[str, ...] = ()  # CIDRs; empty: the host's own networks


def parse_target(text: str, rates: list[int] | None = None) -> ScanTarget:
    """``rtu:<tty>[:rate]``, ``ascii:<tty>[:rate]``, ``tcp[:cidr,...]`` (``udp``/``net`` alike)."""
    s = text.strip()
    method, _, rest = s.partition(":")
    if method in SERIAL_METHODS:
        port, _, rate_s = rest.partition(":")
        if not port or "\x00" in port:
            raise ConfigError(f"bad scan target {text!r}: expected {method}:<tty>[:rate]")
        chosen = list(rates or ())
        if rate_s:
            try:
                chosen = [int(rate_s)]
            except ValueError:
                raise ConfigError(f"bad scan target {text!r}: baud rate {rate_s!r} is not a number") from None
        for r in chosen:
            if r not in STANDARD_BAUDS:
                raise ConfigError(f"bad baud rate {r} (one of {', '.join(map(str, STANDARD_BAUDS))})")
        return ScanTarget(method, port, tuple(chosen))
    if method in ("tcp", "udp", "net"):
        nets = tuple(n for n in rest.split(",") if n.strip())
        if nets:
            parse_networks(nets)  # validate now: one line and exit 2
        return ScanTarget("net", networks=nets)
    raise ConfigError(f"bad scan target {text!r}: expected rtu:<tty>, ascii:<tty> or tcp:<network>/<bits>")


def describe(found: Found) -> str:
    if not found.known:
        return f"{found.spec}  ?  {found.problem}"
    serial = f"serial {found.serial}" if found.serial else found.problem
    return f"{found.spec}  {found.model}  {found.product}  {serial}".rstrip()


class ProgressBar:
    """A one-line bar on a terminal (nothing when stderr is not one)."""

    def __init__(self, out: TextIO, label: str) -> None:
        self.out = out
        self.label = label
        self.enabled = out.isatty()
        self._last = 0.0

    def update(self, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        frac = done / total if total else 1.0
        width = 30
        fill = int(frac * width)
        self.out.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {frac * 100:3.0f}%")
        self.out.flush()

    def clear(self) -> None:
        if self.enabled:
            self.out.write("\r" + " " * (len(self.label) + 40) + "\r")
            self.out.flush()


async def _scan(target: ScanTarget, full: bool, port: int, out: TextIO, err: TextIO) -> int:
    from ..transports import LinkPool

    found: list[Found] = []
    bar = ProgressBar(err, f"scanning {target.port or 'network'}")

    def on_found(f: Found) -> None:
        bar.clear()
        print(describe(f), file=out, flush=True)
        found.append(f)

    if target.method == "net":
        if target.networks:
            nets = parse_networks(target.networks)
        else:
            nets = automatic_networks(await host_interfaces())
            if not nets:
                raise ConfigError("no network to scan (name one: --scan tcp:192.168.1.0/24)")
        own = {iface.ip for _name, iface in await host_interfaces()}  # never probe ourselves
        scan = NetworkScan(nets, port=port, own=own, on_found=on_found, on_progress=bar.update)
        await scan.run()
    else:
        links = LinkPool()
        try:
            sscan = SerialScan(links, target.port, mode=target.method, rates=target.rates or None, full=full,
                               on_found=on_found, on_progress=bar.update)
            await sscan.run()
        except LinkDown as exc:
            bar.clear()
            print(f"{target.port}: {exc}", file=err)
            return EXIT_NOTHING
        finally:
            await links.aclose()
    bar.clear()
    if not found:
        print("nothing answered", file=err)
        return EXIT_NOTHING
    return EXIT_FOUND


def run_scan(target: ScanTarget, *, full: bool = False, port: int = DEFAULT_PORT,
             out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    return anyio.run(_scan, target, full, port, out, err, backend="asyncio")
