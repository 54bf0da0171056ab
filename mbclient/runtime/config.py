"""Runtime tunables, gathered in one place so tests can shrink every timer.

The defaults are the production values for a GX device; the CLI fills in what the user
chose, tests pass milliseconds. Nothing here touches the network or D-Bus.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..discovery.config import DiscoveryConfig
from ..spec import DeviceSpec

MB = 1024 * 1024


@dataclass(slots=True)
class RuntimeConfig:
    """Everything the supervisor and device tasks need besides the device list."""

    # -- where -------------------------------------------------------------------------------
    bus_address: str | None = None  # None: session bus if DBUS_SESSION_BUS_ADDRESS, else system
    settings_file: str | None = None  # forces the embedded settings service, stored there
    # how long to wait for com.victronenergy.settings before serving it ourselves; None (a
    # GX): wait as long as it takes and never serve it, logging every settings_wait_log s
    settings_wait: float | None = 3.0
    settings_wait_log: float = 60.0
    port_name: str = "tcp"  # /Settings/ModbusClient/<port_name>/Devices is watched
    force_devices: list[DeviceSpec] = field(default_factory=list)
    exit_on_error: bool = False  # -x: any device error ends the process (runit restarts it)

    # -- device states -------------------------------------------------------------------------
    grace: float = 10.0  # seconds without an answer before /Connected=0 and values go invalid
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    backoff_jitter: float = 0.1
    # probe a lost port more often (reopening costs no bus time); below 5 s so a returning
    # adapter is back within 5 s even when it returns just after a probe
    link_down_cap: float = 4.0
    fail_threshold: int = 2  # consecutive failures before FAILING (one lost reply is line noise)
    refused_pause: float = 1.0  # after a Modbus exception reply, before asking again
    probe_timeout: float | None = None  # None: the driver's own timeout
    identify_timeout: float = 1.0
    idle_tick: float = 1.0  # longest sleep of an online device task between cycles
    # FAST interval of one of our meters while a zero-export controller follows it (demand.py)
    control_poll: float = 0.1

    # -- health --------------------------------------------------------------------------------
    stats_interval: float = 5.0  # /Mgmt/Stats/* at most this often (no signal storm)

    # -- watchdogs -----------------------------------------------------------------------------
    stall_timeout: float = 30.0  # event loop blocked this long: dump stacks, exit non-zero (0: off)
    max_rss: int = 150 * MB  # resident set ceiling: log and exit cleanly beyond it (0: off)
    rss_check_interval: float = 10.0
    rss_log_interval: float = 3600.0  # INFO line with RSS and growth rate
    metrics_port: int | None = None  # Prometheus /metrics (mbclient.metrics); None = off

    process_name: str = "mbclient"
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)  # scans, AutoScan, mDNS
