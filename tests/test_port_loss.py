"""Port loss: a serial adapter disappears and returns; everything else keeps going.

Three links, as on a real GX: port A (``ttyUSB0``: the seed Growatt MIN unit 1 and SDM230
unit 2), port B (``ttyUSB1``: an SDM120 unit 5) and a Modbus TCP meter (SDM630 unit 1),
each served by the simulator (two real pseudo-terminals, a real socket) and polled by the
real drivers through the real links, the way the runtime polls them. Port A is unplugged
(the pty closes and its name vanishes, as when a USB adapter is pulled) and plugged back.

What a user depends on, and what is measured:

* port A's devices are read again soon after the port returns (*reconnect latency*: from
  the replug to the first successful read of both of its devices; goal < 5 s);
* port B and the TCP meter keep being refreshed at their normal rate while A is gone;
* no published value is ever wrong across the loss (the values are checked against the
  simulator's truth exactly as in ``test_noise_bus``).

``scripts/port-loss --cycles 20 --down 10`` runs the long version and prints the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_noise_bus import Device, RecordingClient, Truth, check_store, vary_inverter, vary_meter

from mbclient.devices import DeviceOptions, get_model
from mbclient.errors import LinkDown, ModbusError
from mbclient.items import ItemStore
from mbclient.modbus.pdu import READ_HOLDING, Request
from mbclient.sim import SimBus, SimSerialPort, serve_rtu, serve_tcp
from mbclient.sim.models import growatt_min, sdm120, sdm230, sdm630
from mbclient.transports import RtuLink, TcpLink
from mbclient.transports.base import Link
from mbclient.transports.stream import Backoff

BAUD = 9600
RETRY = 0.25  # the pollers' own pause after a failed poll (the FAST interval)


@dataclass
class Polled(Device):
    """A device under test, with the time of every successful read and every LinkDown."""

    port: str = ""
    ok_times: list[float] = field(default_factory=list)
    fast_times: list[float] = field(default_factory=list)
    link_down: int = 0


class TimedClient(RecordingClient):
    """Notes when reads succeed (and which were FAST blocks) for the rates below."""

    dev: Polled | None = None

    async def read(self, function: int, address: int, count: int, *, timeout: float,
                   priority: bool = False) -> list[int]:
        regs = await super().read(function, address, count, timeout=timeout, priority=priority)
        dev = self.dev
        if dev is not None:
            now = time.monotonic()
            dev.ok_times.append(now)
            if (function, address, count) in dev.fast_blocks():
                dev.fast_times.append(now)
        return regs


async def poll(dev: Polled, truth: Truth) -> None:
    """The runtime's polling in small (see ``test_noise_bus.run_device``), pausing
    ``RETRY`` after a failure instead of retrying at once."""
    driver = dev.driver
    while True:
        now = time.monotonic()
        failed = False
        if driver.due(now) or driver.wakeup.is_set():
            try:
                await driver.poll(now)
                if driver.wakeup.is_set():
                    await driver.service_writes(now)
            except LinkDown:
                dev.link_down += 1
                failed = True
            except ModbusError:
                dev.failures += 1
                failed = True
            dev.store.flush()
            check_store(dev, truth)
        wait = RETRY if failed else driver.next_deadline(time.monotonic()) - time.monotonic()
        await asyncio.sleep(min(max(wait, 0.005), 1.0))


@dataclass
class Site:
    port_a: SimSerialPort
    links: dict[str, Link]
    devices: list[Polled]
    truth: Truth

    def on(self, port: str) -> list[Polled]:
        return [d for d in self.devices if d.port == port]


@contextlib.asynccontextmanager
async def three_links(directory: str | Path) -> AsyncIterator[Site]:
    """Port A, port B and a TCP meter, all identified and polling in the background."""
    truth = Truth()
    inverter, meter_a, meter_b, meter_tcp = growatt_min(1), sdm230(2), sdm120(5), sdm630(1)
    truth.attach(inverter, vary_inverter(inverter))
    for m in (meter_a, meter_b, meter_tcp):
        truth.attach(m, vary_meter(m))
    async with contextlib.AsyncExitStack() as stack:
        port_a = await stack.enter_async_context(
            serve_rtu(SimBus(BAUD, units=[inverter, meter_a]), directory=directory, link_name="ttyUSB0"))
        port_b = await stack.enter_async_context(
            serve_rtu(SimBus(BAUD, units=[meter_b]), directory=directory, link_name="ttyUSB1"))
        tcp = await stack.enter_async_context(serve_tcp(SimBus(units=[meter_tcp])))
        links: dict[str, Link] = {
            "A": RtuLink.serial(port_a.path, BAUD),
            "B": RtuLink.serial(port_b.path, BAUD),
            "TCP": TcpLink(tcp.host, tcp.port),
        }
        for link in links.values():
            stack.push_async_callback(link.aclose)
        devices = []
        for port, unit, model in (("A", 1, "growatt_min"), ("A", 2, "sdm230"), ("B", 5, "sdm120"),
                                  ("TCP", 1, "sdm630")):
            client = TimedClient(links[port], unit, truth)
            store = ItemStore()
            baud = None if port == "TCP" else BAUD
            driver = get_model(model).create(client, store, DeviceOptions(baud=baud))
            await driver.read_identity()
            driver.add_items()
            dev = Polled(f"{model}@{port}", driver, store, client, port=port)
            client.dev = dev
            devices.append(dev)
        tasks = [asyncio.create_task(poll(d, truth), name=f"poll-{d.name}") for d in devices]
        try:
            yield Site(port_a, links, devices, truth)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Cycle:
    down: float  # seconds port A was gone
    reconnect: float | None  # replug -> first good read of every device on A (None: never)
    link_down: int  # LinkDown errors A's devices saw
    others: dict[str, float]  # FAST refreshes per second of the other devices during the outage


def rate(dev: Polled, start: float, end: float) -> float:
    """Refreshes of the device's FAST class per second between ``start`` and ``end``."""
    reads = sum(start <= t < end for t in dev.fast_times)
    return reads / max(1, len(dev.fast_blocks())) / (end - start) if end > start else 0.0


async def outage(site: Site, down: float, *, give_up: float = 30.0) -> Cycle:
    """Unplug port A for ``down`` seconds, plug it back, wait until A's devices read again."""
    a_devs = site.on("A")
    others = [d for d in site.devices if d.port != "A"]
    errors_before = sum(d.link_down for d in a_devs)
    gone = time.monotonic()
    site.port_a.unplug()
    await asyncio.sleep(down)
    back = time.monotonic()
    site.port_a.replug()
    reconnect: float | None = None
    while time.monotonic() - back < give_up:
        firsts = [next((t for t in d.ok_times if t >= back), None) for d in a_devs]
        if all(f is not None for f in firsts):
            reconnect = max(firsts) - back  # type: ignore[type-var]
            break
        await asyncio.sleep(0.05)
    return Cycle(back - gone, reconnect, sum(d.link_down for d in a_devs) - errors_before,
                 {d.name: rate(d, gone, back) for d in others})


@dataclass
class Report:
    cycles: list[Cycle]
    normal: dict[str, float]  # FAST refreshes per second of every device before any loss

    @property
    def latencies(self) -> list[float]:
        return [c.reconnect for c in self.cycles if c.reconnect is not None]

    def summary(self) -> str:
        lat = self.latencies
        return (f"reconnect: max {max(lat):.2f} s, p50 {statistics.median(lat):.2f} s over {len(lat)} of "
                f"{len(self.cycles)} cycles" if lat else "never reconnected")


async def port_loss(directory: str | Path, *, cycles: int, down: float, up: float,
                    baseline: float = 5.0, settle: float = 2.0, progress=None) -> tuple[Report, Truth]:  # noqa: ANN001
    """The whole experiment: a baseline, then ``cycles`` outages of ``down`` seconds, each
    followed by ``up`` seconds of normal running after A is back."""
    async with three_links(directory) as site:
        await asyncio.sleep(settle)  # startup reads (identity, ONCE, SLOW) out of the way
        start = time.monotonic()
        await asyncio.sleep(baseline)
        normal = {d.name: rate(d, start, time.monotonic()) for d in site.devices}
        done: list[Cycle] = []
        for i in range(cycles):
            cycle = await outage(site, down)
            done.append(cycle)
            if progress is not None:
                progress(i + 1, cycle)
            await asyncio.sleep(up)
        return Report(done, normal), site.truth


# --- the suite -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_returning_adapter_is_reopened_by_the_next_request_despite_the_backoff(tmp_path) -> None:
    """Policy 7's exception: while the node is gone requests fail fast; once it exists
    again the next request reopens the port, however long the backoff still runs."""
    request = Request.read(READ_HOLDING, 0xFC00, 2)
    async with serve_rtu(SimBus(BAUD, units=[sdm230(2)]), directory=tmp_path) as port:
        link = RtuLink.serial(port.path, BAUD, backoff=Backoff(first=3600.0, maximum=3600.0))
        try:
            assert await link.transact(2, request, timeout=1.0)
            port.unplug()
            with pytest.raises(LinkDown):
                await link.transact(2, request, timeout=1.0)
            with pytest.raises(LinkDown, match="next attempt"):  # an hour of backoff ahead
                await link.transact(2, request, timeout=1.0)
            port.replug()
            assert await link.transact(2, request, timeout=1.0)  # no LinkDown: reopened at once
        finally:
            await link.aclose()


@pytest.mark.asyncio
async def test_a_lost_port_comes_back_and_the_others_never_notice(tmp_path) -> None:
    report, truth = await port_loss(tmp_path, cycles=2, down=1.0, up=0.2, baseline=0.5, settle=0.5)
    for cycle in report.cycles:
        assert cycle.link_down > 0, "port A's devices never saw the port go"
        assert cycle.reconnect is not None, "port A's devices were not read again within 30 s"
        assert all(r > 0 for r in cycle.others.values()), cycle.others  # B and TCP kept going
    assert truth.wrong == [], truth.wrong[:5]
