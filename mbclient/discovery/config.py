"""What discovery does in the running service (part of ``RuntimeConfig``; tests shrink the timers)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class DiscoveryConfig:
    enabled: bool = True  # the management service, AutoScan, scans on request
    serial_port: str | None = None  # the -s port (path or name under /dev); None: the network instance
    mode: str = "rtu"  # -m: serial framing a scan uses
    rates: tuple[int, ...] = ()  # -r: candidate rates of a serial scan (empty: the models' rates)
    force_scan: bool = False  # -f: a full serial scan at start, whatever is configured
    networks: tuple[str, ...] = ()  # CIDRs a network scan covers (empty: this host's networks)
    port: int = 502  # Modbus TCP/UDP port a network scan asks
    net_timeout: float = 0.25
    net_concurrency: int = 64
    quick_timeout: float = 0.1
    full_timeout: float = 0.1
    start_delay: float = 10.0  # after start: saved devices get this long to come up before AutoScan looks
    rescan_interval: float = 600.0  # AutoScan again while a saved device is missing (stock: 600 s)
    progress_interval: float = 0.1  # /ScanProgress at most this often
    mdns: bool = True  # network instance: browse for Victron energy meters
    mdns_browser: object = None  # tests: an injected browser (see mdns.py); None: zeroconf
    mdns_interfaces: tuple[str, ...] = ()  # zeroconf sockets on these addresses only (empty: all)
