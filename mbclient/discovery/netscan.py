"""Scanning IPv4 networks for Modbus TCP and UDP devices, with bounded asyncio concurrency.

Which networks: by default every IPv4 network of the host's up interfaces with global
scope, except the access-point interface ``ap0`` (what ``ip -o -4 addr show scope global
up`` lists); networks larger than a /22 (1022 hosts) are skipped with one log line, they
would take long and are rarely where meters live. Networks the user names are scanned
whatever their size up to a /16. The host's own addresses are never probed (a GX finds
its own Modbus TCP server otherwise).

How: every host is asked over Modbus TCP and UDP on the port (502), at the default units
of the models that speak that transport (a serial model is also reachable through a
Modbus TCP gateway, so TCP asks the serial models' units too). At most ``concurrency``
hosts are asked at once; a silent host costs one timeout per transport, a host that
refuses the connection costs nothing. A scan can be stopped at any time and returns what
it found so far.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network

import anyio

from .. import devices
from ..errors import ConfigError, LinkDown
from ..spec import DeviceSpec
from ..transports.tcp import TcpLink
from ..transports.udp import UdpLink
from .probe import Found, probe_unit

log = logging.getLogger("mbclient.discovery")

DEFAULT_PORT = 502
AUTO_MAX_PREFIX = 22  # automatic scans skip networks larger than this (more than 1022 hosts)
NAMED_MAX_PREFIX = 16  # a network the user names may be as large as a /16
SKIP_INTERFACES = frozenset({"ap0"})
NET_TIMEOUT = 0.25  # per probe, as the stock client
CONCURRENCY = 64

#: transports whose models a Modbus TCP probe can reach (a TCP gateway in front of RS-485)
TCP_REACHES = frozenset({"tcp", "rtu", "ascii", "rtuovertcp"})


def parse_networks(texts: Iterable[str]) -> list[IPv4Network]:
    """CIDR list from the user (``192.168.1.0/24,10.0.0.5``); ConfigError on anything else."""
    out: list[IPv4Network] = []
    for text in texts:
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(f"bad network {item!r}: expected an IPv4 CIDR such as 192.168.1.0/24") from None
            if not isinstance(net, IPv4Network):
                raise ConfigError(f"bad network {item!r}: only IPv4 networks are scanned")
            if net.prefixlen < NAMED_MAX_PREFIX:
                raise ConfigError(f"network {item} is too large to scan (at most a /{NAMED_MAX_PREFIX})")
            out.append(net)
    if not out:
        raise ConfigError("no network to scan")
    return list(ipaddress.collapse_addresses(out))


def parse_ip_addr(text: str) -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(interface, address/prefix) pairs from ``ip -o -4 addr show`` output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet":
            try:
                out.append((parts[1], ipaddress.IPv4Interface(parts[3])))
            except ValueError:
                continue
    return out


async def host_interfaces() -> list[tuple[str, ipaddress.IPv4Interface]]:
    """The host's IPv4 addresses with global scope on up interfaces ([] if ``ip`` fails)."""
    try:
        with anyio.fail_after(5):
            res = await anyio.run_process(["ip", "-o", "-4", "addr", "show", "scope", "global", "up"], check=False)
    except (OSError, TimeoutError) as exc:
        log.warning("cannot list network interfaces: %s", exc)
        return []
    return parse_ip_addr(res.stdout.decode(errors="replace"))


def automatic_networks(interfaces: list[tuple[str, ipaddress.IPv4Interface]]) -> list[IPv4Network]:
    """Networks an automatic scan covers (see the module docstring)."""
    nets = []
    for name, iface in interfaces:
        if name in SKIP_INTERFACES:
            continue
        if iface.network.prefixlen < AUTO_MAX_PREFIX:
            log.info("not scanning %s on %s: larger than a /%d (name it to scan it)", iface.network, name,
                     AUTO_MAX_PREFIX)
            continue
        nets.append(iface.network)
    return list(ipaddress.collapse_addresses(nets))


def hosts(networks: Iterable[IPv4Network], own: set[IPv4Address]) -> Iterator[IPv4Address]:
    for net in networks:
        for host in (net.hosts() if net.prefixlen < 31 else iter(net)):
            if host not in own:
                yield host


def units_for(method: str) -> list[int]:
    """Default units of the models a probe over ``method`` can reach, in first-seen order."""
    reach = TCP_REACHES if method == "tcp" else frozenset({method})
    units: dict[int, None] = {}
    for model in devices.all_models():
        if reach.intersection(model.transports):
            units.update(dict.fromkeys(model.default_units))
    return list(units)


class NetworkScan:
    """One scan of some networks. ``await run()`` returns every ``Found``; ``stop()`` ends it
    early. ``on_found(found)`` is called as each device answers, ``on_progress(done, total)``
    after each host and transport."""

    def __init__(
        self,
        networks: list[IPv4Network],
        *,
        port: int = DEFAULT_PORT,
        own: set[IPv4Address] | None = None,
        skip: Callable[[DeviceSpec], bool] | None = None,
        timeout: float = NET_TIMEOUT,
        concurrency: int = CONCURRENCY,
        on_found: Callable[[Found], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.networks = networks
        self.port = port
        self.own = own or set()
        self.skip = skip or (lambda _spec: False)
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.on_found = on_found
        self.on_progress = on_progress
        self.methods = {m: units_for(m) for m in ("tcp", "udp")}
        self.methods = {m: u for m, u in self.methods.items() if u}
        n_hosts = sum(1 for _ in hosts(networks, self.own))
        self.total = n_hosts * len(self.methods)
        self.done = 0
        self.found: list[Found] = []
        self._scope: anyio.CancelScope | None = None
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> list[Found]:
        jobs = ((str(h), m) for h in hosts(self.networks, self.own) for m in self.methods)
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self.stopped:
                scope.cancel()
            async with anyio.create_task_group() as tg:
                for _ in range(min(self.concurrency, max(1, self.total))):
                    tg.start_soon(self._worker, jobs)
        self._scope = None
        return self.found

    async def _worker(self, jobs: Iterator[tuple[str, str]]) -> None:
        for host, method in jobs:  # a shared iterator: each job is taken by one worker
            await self._probe_host(host, method)
            self.done += 1
            if self.on_progress is not None:
                self.on_progress(self.done, self.total)

    async def _probe_host(self, host: str, method: str) -> None:
        units = [u for u in self.methods[method] if not self.skip(DeviceSpec(method, host, self.port, u))]
        if not units:
            return
        link = TcpLink(host, self.port, connect_timeout=self.timeout) if method == "tcp" else UdpLink(host, self.port)
        try:
            for unit in units:
                spec = DeviceSpec(method, host, self.port, unit)
                try:
                    found = await probe_unit(link, spec, timeout=self.timeout)
                except LinkDown:
                    return  # refused, unreachable: nobody there
                for one in (found, *found.more) if found is not None else ():
                    self.found.append(one)
                    if self.on_found is not None:
                        self.on_found(one)
        finally:
            with anyio.CancelScope(shield=True):
                await link.aclose()
