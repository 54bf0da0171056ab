"""Port loss through the whole runtime: ``/Connected`` goes 0 and comes back.

The real ``Supervisor`` (embedded settings on a private dbus-daemon, one task per device,
the real links) runs four devices on three links - port A (the seed Growatt MIN unit 1
and SDM230 unit 2), port B (an SDM120 unit 5) and a Modbus TCP SDM630 - all simulated.
Port A's adapter is pulled and plugged back. Read from the devices' own stores (what the
D-Bus service publishes): A's devices go ``/Connected`` = 0 while the port is gone and
back to 1 after it returns; B and the TCP meter stay at 1 and keep answering; no service
leaves the bus. ``scripts/port-loss --runtime`` measures the latencies with production
timers.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_runtime_support import Observer, fast_options

from mbclient.runtime.config import RuntimeConfig
from mbclient.runtime.supervisor import Supervisor
from mbclient.sim import SimBus, SimSerialPort, seed_site, serve_rtu, serve_tcp
from mbclient.sim.models import sdm120, sdm630
from mbclient.spec import DeviceSpec, parse_spec

CONNECTED = "/Connected"


@dataclass
class RuntimeRig:
    supervisor: Supervisor
    port_a: SimSerialPort
    on_a: list[DeviceSpec]
    others: list[DeviceSpec]
    observer: Observer

    def connected(self, spec: DeviceSpec) -> Any:
        task = self.supervisor.device(spec)
        store = task.store if task is not None else None
        return None if store is None or CONNECTED not in store else store[CONNECTED]

    def transactions(self, spec: DeviceSpec) -> int:
        task = self.supervisor.device(spec)
        return task.link.stats(spec.unit).transactions

    def service(self, spec: DeviceSpec) -> str:
        return self.supervisor.device(spec).service_name

    async def wait(self, specs: list[DeviceSpec], value: int, timeout: float) -> float:
        """Seconds until every spec's /Connected equals ``value``."""
        started = time.monotonic()
        with anyio.fail_after(timeout):
            while any(self.connected(s) != value for s in specs):
                await anyio.sleep(0.02)
        return time.monotonic() - started


@contextlib.asynccontextmanager
async def runtime_site(dbus_address: str, directory: Path, *, baud: int, options_factory: Any = None,
                       **config: Any) -> AsyncIterator[RuntimeRig]:
    site = seed_site(baud)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(site.running(0.05))
        port_a = await stack.enter_async_context(serve_rtu(site.bus, directory=directory, link_name="ttyUSB0"))
        port_b = await stack.enter_async_context(
            serve_rtu(SimBus(baud, units=[sdm120(5)]), directory=directory, link_name="ttyUSB1"))
        tcp = await stack.enter_async_context(serve_tcp(SimBus(units=[sdm630(1)])))
        on_a = [parse_spec(f"rtu:{port_a.path}:{baud}:1:growatt_min"), parse_spec(f"rtu:{port_a.path}:{baud}:2:sdm230")]
        others = [parse_spec(f"rtu:{port_b.path}:{baud}:5:sdm120"), parse_spec(f"tcp:{tcp.host}:{tcp.port}:1:sdm630")]
        cfg = RuntimeConfig(bus_address=dbus_address, settings_file=str(directory / "settings.xml"),
                            force_devices=on_a + others, **config)
        observer = await Observer.connect(dbus_address)
        stack.callback(observer.close)
        sup = Supervisor(cfg, options_factory=options_factory)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # runs first on the way out
        await tg.start(sup.run)
        rig = RuntimeRig(sup, port_a, on_a, others, observer)
        await rig.wait(on_a + others, 1, timeout=60.0)
        yield rig


@dataclass
class RuntimeCycle:
    noticed: float  # unplug -> /Connected = 0 on both of A's devices
    reconnect: float  # replug -> /Connected = 1 on both
    others_dropped: int  # samples of /Connected != 1 on B and TCP during the outage
    others_rate: dict[str, float] = field(default_factory=dict)  # their transactions per second meanwhile


async def runtime_outage(rig: RuntimeRig, down: float, *, timeout: float = 60.0) -> RuntimeCycle:
    before = {str(s): rig.transactions(s) for s in rig.others}
    dropped = 0
    gone = time.monotonic()
    rig.port_a.unplug()
    noticed = await rig.wait(rig.on_a, 0, timeout)
    while time.monotonic() - gone < down:
        dropped += sum(rig.connected(s) != 1 for s in rig.others)
        await anyio.sleep(0.05)
    back = time.monotonic()
    rates = {str(s): (rig.transactions(s) - before[str(s)]) / (back - gone) for s in rig.others}
    rig.port_a.replug()
    reconnect = await rig.wait(rig.on_a, 1, timeout)
    return RuntimeCycle(noticed, reconnect, dropped, rates)


def summarize(cycles: list[RuntimeCycle]) -> str:
    rec = [c.reconnect for c in cycles]
    return (f"/Connected back after the port returned: max {max(rec):.2f} s, p50 {statistics.median(rec):.2f} s; "
            f"went 0 after the loss within {max(c.noticed for c in cycles):.2f} s")


# --- the suite -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_connected_follows_the_port_and_other_devices_stay_connected(dbus_address: str, tmp_path) -> None:
    fast = dict(settings_wait=0.2, identify_timeout=0.2, grace=0.2, backoff_base=0.05, backoff_cap=0.1,
                link_down_cap=0.2, stats_interval=0.5, stall_timeout=0, max_rss=0)
    async with runtime_site(dbus_address, tmp_path, baud=115200, options_factory=fast_options, **fast) as rig:
        names = [rig.service(s) for s in rig.on_a + rig.others]
        for _ in range(2):
            cycle = await runtime_outage(rig, down=0.8)
            assert cycle.others_dropped == 0  # B and the TCP meter never left /Connected = 1
            assert all(r > 0 for r in cycle.others_rate.values()), cycle.others_rate  # and kept answering
        for name in names:
            assert rig.observer.disappeared(name) == 0  # nobody left the bus
