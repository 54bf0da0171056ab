"""A private dbus-daemon, for the demo, the tests and the benchmark scripts.

One configuration for all of them, shaped like the Venus OS system bus where it matters
(anyone may own a name and call anyone; 1024 match rules and 50000 pending replies per
connection), so what passes on a private bus is not an artefact of generous limits.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import ConfigError

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
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


def daemon_command(directory: Path) -> list[str]:
    """The dbus-daemon command line for a bus whose socket and config live in ``directory``
    (the config is written here). ConfigError if dbus-daemon is not installed."""
    exe = shutil.which("dbus-daemon")
    if exe is None:
        raise ConfigError("dbus-daemon not found: install the Debian package 'dbus' (apt-get install dbus)")
    config = directory / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=directory / "bus"))
    return [exe, f"--config-file={config}", "--nofork", "--nopidfile", "--print-address=1"]


def start_dbus_daemon(directory: Path) -> tuple[subprocess.Popen, str]:
    """Start a private bus in ``directory`` and wait for its address (blocking: for test
    fixtures and scripts, before their event loop runs). Its log is ``daemon.log`` there."""
    with open(directory / "daemon.log", "wb") as log:
        proc = subprocess.Popen(daemon_command(directory), stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    if not address:
        stop_dbus_daemon(proc)
        raise ConfigError(f"dbus-daemon did not start: {(directory / 'daemon.log').read_text().strip()}")
    return proc, address


def stop_dbus_daemon(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL if it will not go."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
